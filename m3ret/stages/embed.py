"""The embed stage: every stored frame through the encoder, plus one vector per item (series, volume, video).

The stage also makes the retrieval model (`embed.model`): the pretrained encoder (`embed.encoder`) with the
`readout` section's pooling and its whitening fitted on the pooled frame vectors of the `readout.fit_splits` items
(never queries, never labels). Search, serving and refresh embed queries with that file, and the model version is
its hash, so gallery and query vectors always share one readout.

Output: an `EmbeddingSet` folder (`embed.out`, layout in m3ret/models/embedding_set.py) whose embed.json also holds
the fingerprint of the inputs: a rerun whose encoder, readout, preprocessing and frames are unchanged does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from m3ret.config import EmbedConfig, Params, PreprocessConfig, ReadConfig, ReadoutConfig, to_dict
from m3ret.data.frame_store import FrameStore
from m3ret.engines import Engine, open_engine
from m3ret.engines.local import LOCAL
from m3ret.models.embedding_set import EMBED_INFO, ITEM_FACTS, EmbeddingSet
from m3ret.models.encoder import Encoder, load_encoder
from m3ret.models.model_version import file_digest, frames_settings, model_version
from m3ret.models.readout import fit_and_project
from m3ret.stages.report import write_report
from m3ret.train.checkpoint import save_encoder

log = logging.getLogger(__name__)


def _item_table(manifest: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    items = manifest.merge(splits[["item_id", "split", "group"]], on="item_id", how="left")
    items["split"] = items["split"].fillna("")
    items["group"] = items["group"].fillna(items["item_id"])
    return items[list(ITEM_FACTS)].drop_duplicates("item_id")


def _fingerprint(frames: pd.DataFrame, items: pd.DataFrame) -> str:
    digest = hashlib.sha256(pd.util.hash_pandas_object(frames[["item_id", "frame_index"]], index=False).values)
    digest.update(pd.util.hash_pandas_object(items.astype(str), index=False).values)
    return digest.hexdigest()[:16]


def _frame_table(store: FrameStore, manifest: pd.DataFrame, splits: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(frames in store order with their item's facts, one row per item)."""
    items = _item_table(manifest, splits)
    frames = store.table[["frame_id", "item_id", "plane", "volume_index", "frame_index", "timestamp"]]
    return frames.merge(items, on="item_id", how="left", validate="many_to_one"), items


def _inputs_id(
    cfg: EmbedConfig, readout: ReadoutConfig, preprocess: PreprocessConfig, read: ReadConfig, fingerprint: str
) -> str:
    """What the retrieval model and the vectors are a function of: encoder bytes, readout, frame settings, frames."""
    digest = file_digest(cfg.encoder)
    digest.update(frames_settings(preprocess, read))
    digest.update(json.dumps(to_dict(readout), sort_keys=True).encode() + fingerprint.encode())
    return digest.hexdigest()[:16]


def _pool(
    cfg: EmbedConfig, model: str, frames_dir: Path, n_frames: int, engine: Engine, readout: ReadoutConfig | None = None
) -> tuple[Encoder, torch.Tensor, float]:
    """(the encoder in `model`, its readout's pooling set to `readout` when given; the pooled vectors of the
    store's frames [n_frames, D'], computed where `engine` runs them; the seconds they took)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder = load_encoder(model, "cuda" if torch.cuda.is_available() else "cpu")
    if readout is not None:
        encoder.set_readout(readout.pooling, readout.grid)
    tic = time.perf_counter()
    pooled = engine.pool_frames(encoder, frames_dir, n_frames, cfg.batch_size, cfg.workers)
    return encoder, pooled, time.perf_counter() - tic


def embed_store(
    cfg: EmbedConfig,
    readout: ReadoutConfig,
    frames_dir: Path,
    manifest: pd.DataFrame,
    splits: pd.DataFrame,
    preprocess: PreprocessConfig,
    read: ReadConfig,
    engine: Engine = LOCAL,
) -> dict[str, Any]:
    """`cfg.encoder` + the `readout` fitted on the fit splits' frames -> the retrieval model `cfg.model`, and the
    EmbeddingSet folder `cfg.out` (module docstring); returns the summary stored in its embed.json. The frames go
    through the encoder where `engine` runs them (`m3ret.engines`); the fit and the files are made here."""
    store = FrameStore(frames_dir)
    frames, items = _frame_table(store, manifest, splits)
    fingerprint = _fingerprint(frames, items)
    inputs = _inputs_id(cfg, readout, preprocess, read, fingerprint)
    info_path = Path(cfg.out) / EMBED_INFO
    if info_path.exists() and Path(cfg.model).is_file():
        done = json.loads(info_path.read_text())
        if done.get("inputs") == inputs and done.get("model_version") == model_version(cfg.model, preprocess, read):
            log.info("embed: encoder, readout and frames unchanged; nothing to do")
            return done
    encoder, pooled, seconds = _pool(cfg, cfg.encoder, frames_dir, len(store), engine, readout)
    fit_rows = torch.from_numpy(frames["split"].isin(readout.fit_splits).to_numpy())
    if readout.whiten and int(fit_rows.sum()) < 2:
        raise ValueError(f"readout.whiten: fewer than 2 frames in readout.fit_splits={list(readout.fit_splits)}")
    vectors = fit_and_project(encoder.readout, readout, pooled, fit_rows).numpy()
    _export_retrieval_model(Path(cfg.model), encoder)
    version = model_version(cfg.model, preprocess, read)
    info = {"inputs": inputs, "fingerprint": fingerprint, "images_per_s": _rate(len(frames), seconds)}
    return EmbeddingSet.from_frames(version, vectors, frames, items).save(cfg.out, info)


def embed_with_retrieval_model(
    cfg: EmbedConfig,
    frames_dir: Path,
    manifest: pd.DataFrame,
    splits: pd.DataFrame,
    preprocess: PreprocessConfig,
    read: ReadConfig,
    engine: Engine = LOCAL,
) -> dict[str, Any]:
    """New frames (a refresh batch) through the published retrieval model `cfg.model` as it is, its readout not
    refitted, so they land in the same space as the indexed vectors; writes the EmbeddingSet folder `cfg.out`."""
    store = FrameStore(frames_dir)
    frames, items = _frame_table(store, manifest, splits)
    encoder, pooled, seconds = _pool(cfg, cfg.model, frames_dir, len(store), engine)
    vectors = encoder.readout.project(pooled.to(encoder.pixel_mean.device)).cpu().numpy()
    info = {"fingerprint": _fingerprint(frames, items), "images_per_s": _rate(len(frames), seconds)}
    version = model_version(cfg.model, preprocess, read)
    return EmbeddingSet.from_frames(version, vectors, frames, items).save(cfg.out, info)


def _rate(n: int, seconds: float) -> float:
    return round(n / max(seconds, 1e-9), 2)


def _export_retrieval_model(path: Path, encoder: Encoder) -> None:
    """The encoder with its fitted readout, in the `encoder.pt` layout that `load_encoder` reads."""
    save_encoder(path, encoder, to_dict(encoder.cfg), readout=encoder.readout.state())


def run(params: Params) -> dict[str, Any]:
    """`embed_store` on the pipeline's own frame store, manifest and splits, where params.yaml puts them, on the
    `engine` section's engine; the summary also goes to reports/embed.json."""
    with open_engine(params.engine) as engine:
        summary = embed_store(
            params.embed,
            params.readout,
            Path(params.preprocess.out),
            pd.read_parquet(params.ingest.out),
            pd.read_parquet(params.split.out),
            params.preprocess,
            params.read,
            engine,
        )
    write_report("embed", summary)
    return summary
