"""The embed stage: every stored frame through the encoder, plus one vector per item (series, volume, video).

The stage also makes the retrieval model (`embed.model`): the pretrained encoder (`embed.encoder`) with the
`readout` section's pooling and its whitening fitted on the pooled frame vectors of the `readout.fit_splits` items
(never queries, never labels). Search, serving and refresh embed queries with that file, and the model version is
its hash, so gallery and query vectors always share one readout.

Output folder (`embed.out`):
- `frame_vectors.npy` float32 [N, D], row i = frame i of the frame store; `frames.parquet` its metadata.
- `item_vectors.npy` float32 [M, D], the mean of an item's frame vectors renormalised; `items.parquet`.
- `embed.json`: model version, dimension, counts and the fingerprint of the inputs. A rerun whose encoder, readout,
  preprocessing and frames are unchanged does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from tqdm import tqdm

from m3ret.config import EmbedConfig, Params, PreprocessConfig, ReadConfig, ReadoutConfig, to_dict
from m3ret.data.frame_store import FrameStore
from m3ret.data.preprocess import frame_settings
from m3ret.index.schema import row_id
from m3ret.models.encoder import Encoder, load_encoder
from m3ret.models.readout import fit_and_project
from m3ret.train.checkpoint import save_encoder

FRAME_VECTORS, ITEM_VECTORS = "frame_vectors.npy", "item_vectors.npy"
FRAMES_META, ITEMS_META, EMBED_INFO = "frames.parquet", "items.parquet", "embed.json"
# Item facts carried next to every vector (no PHI: ids are salted hashes, no header fields).
ITEM_FACTS = ("item_id", "dataset", "modality", "kind", "label", "path", "series_hash", "split", "group")
log = logging.getLogger(__name__)


def _file_digest(path: str | Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest


def _frames_settings(preprocess: PreprocessConfig, read: ReadConfig) -> bytes:
    return json.dumps({"preprocess": frame_settings(preprocess), "read": to_dict(read)}, sort_keys=True).encode()


def model_version(model_path: str | Path, preprocess: PreprocessConfig, read: ReadConfig) -> str:
    """12 hex digits naming what produced a vector: the retrieval model's bytes (weights, readout and its fitted
    whitening) and the preprocessing that made frames."""
    digest = _file_digest(model_path)
    digest.update(_frames_settings(preprocess, read))
    return digest.hexdigest()[:12]


class _FrameBatches(Dataset):
    """Batches of stored frames by index list; DataLoader workers memory-map the shards themselves."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._store: FrameStore | None = None

    def __len__(self) -> int:
        return len(FrameStore(self.root))

    def __getitem__(self, ids: list[int]) -> torch.Tensor:
        if self._store is None:
            self._store = FrameStore(self.root)
        return torch.from_numpy(self._store.get(ids))


def pool_frames(encoder: Encoder, frames_dir: Path, n_frames: int, batch_size: int, workers: int) -> torch.Tensor:
    """float32 [n_frames, D'] pooled vectors (`Encoder.pooled`, before whitening) of the store's frames in order, with
    a progress bar (images/s)."""
    out = torch.empty((n_frames, encoder.readout.pooled_dim), dtype=torch.float32)
    batches = BatchSampler(SequentialSampler(range(n_frames)), batch_size, drop_last=False)
    loader = DataLoader(_FrameBatches(frames_dir), sampler=batches, batch_size=None, num_workers=workers)
    bar = tqdm(total=n_frames, desc="embed", unit="img", dynamic_ncols=True, mininterval=1.0)
    start = 0
    with bar:
        for frames in loader:
            out[start : start + len(frames)] = encoder.pooled(frames, batch_size=batch_size)
            start += len(frames)
            bar.update(len(frames))
    return out


def item_vectors(frame_vectors: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item, the mean of its frame vectors renormalised: (item ids [M] in first-seen order, float32 [M, D])."""
    codes, uniques = pd.factorize(pd.Series(item_ids))
    sums = np.zeros((len(uniques), frame_vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, frame_vectors)
    norms = np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return np.asarray(uniques), (sums / norms).astype(np.float32)


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


def embed_stage(
    cfg: EmbedConfig,
    readout: ReadoutConfig,
    frames_dir: Path,
    manifest: pd.DataFrame,
    splits: pd.DataFrame,
    preprocess: PreprocessConfig,
    read: ReadConfig,
) -> dict[str, Any]:
    """`cfg.encoder` + the `readout` fitted on the fit splits' frames -> the retrieval model `cfg.model`, and the
    output folder (module docstring); returns the summary stored in `embed.json`."""
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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder = load_encoder(cfg.encoder, "cuda" if torch.cuda.is_available() else "cpu")
    encoder.set_readout(readout.pooling, readout.grid)
    tic = time.perf_counter()
    pooled = pool_frames(encoder, frames_dir, len(store), cfg.batch_size, cfg.workers)
    fit_rows = torch.from_numpy(frames["split"].isin(readout.fit_splits).to_numpy())
    if readout.whiten and int(fit_rows.sum()) < 2:
        raise ValueError(f"readout.whiten: fewer than 2 frames in readout.fit_splits={list(readout.fit_splits)}")
    vectors = fit_and_project(encoder.readout, readout, pooled, fit_rows).numpy()
    seconds = time.perf_counter() - tic
    _export_retrieval_model(Path(cfg.model), encoder)
    summary = {"model_version": model_version(cfg.model, preprocess, read), "inputs": inputs}
    return _write_outputs(Path(cfg.out), vectors, frames, items, seconds, {**summary, "fingerprint": fingerprint})


def embed_with_retrieval_model(
    cfg: EmbedConfig,
    frames_dir: Path,
    manifest: pd.DataFrame,
    splits: pd.DataFrame,
    preprocess: PreprocessConfig,
    read: ReadConfig,
) -> dict[str, Any]:
    """New frames (a refresh batch) through the published retrieval model `cfg.model` as it is, its readout not
    refitted, so they land in the same space as the indexed vectors; writes the output folder `cfg.out`."""
    store = FrameStore(frames_dir)
    frames, items = _frame_table(store, manifest, splits)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder = load_encoder(cfg.model, "cuda" if torch.cuda.is_available() else "cpu")
    tic = time.perf_counter()
    pooled = pool_frames(encoder, frames_dir, len(store), cfg.batch_size, cfg.workers)
    vectors = encoder.readout.project(pooled.to(encoder.pixel_mean.device)).cpu().numpy()
    summary = {"model_version": model_version(cfg.model, preprocess, read), "fingerprint": _fingerprint(frames, items)}
    return _write_outputs(Path(cfg.out), vectors, frames, items, time.perf_counter() - tic, summary)


def _write_outputs(
    out: Path, vectors: np.ndarray, frames: pd.DataFrame, items: pd.DataFrame, seconds: float, summary: dict
) -> dict[str, Any]:
    """Frame vectors, item vectors (renormalised means) and both tables into `out`; `summary` + counts -> embed.json."""
    ids, per_item = item_vectors(vectors, frames["item_id"].to_numpy())
    items = items.set_index("item_id").loc[ids].reset_index()
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / FRAME_VECTORS, vectors)
    np.save(out / ITEM_VECTORS, per_item)
    frames.to_parquet(out / FRAMES_META, index=False)
    items.to_parquet(out / ITEMS_META, index=False)
    summary = {
        **summary,
        "dim": int(vectors.shape[1]),
        "frames": len(frames),
        "items": len(items),
        "images_per_s": round(len(frames) / max(seconds, 1e-9), 2),
    }
    (out / EMBED_INFO).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _inputs_id(
    cfg: EmbedConfig, readout: ReadoutConfig, preprocess: PreprocessConfig, read: ReadConfig, fingerprint: str
) -> str:
    """What the retrieval model and the vectors are a function of: encoder bytes, readout, frame settings, frames."""
    digest = _file_digest(cfg.encoder)
    digest.update(_frames_settings(preprocess, read))
    digest.update(json.dumps(to_dict(readout), sort_keys=True).encode() + fingerprint.encode())
    return digest.hexdigest()[:16]


def _export_retrieval_model(path: Path, encoder: Encoder) -> None:
    """The encoder with its fitted readout, in the `encoder.pt` layout that `load_encoder` reads."""
    save_encoder(path, encoder, to_dict(encoder.cfg), readout=encoder.readout.state())


def embed_pipeline_outputs(params: Params) -> dict[str, Any]:
    """`embed_stage` on the pipeline's own frame store, manifest and splits, where params.yaml puts them."""
    return embed_stage(
        params.embed,
        params.readout,
        Path(params.preprocess.out),
        pd.read_parquet(params.ingest.out),
        pd.read_parquet(params.split.out),
        params.preprocess,
        params.read,
    )


@dataclass
class EmbeddingSet:
    """An embed stage output loaded back: vectors and metadata of both levels."""

    model_version: str
    frame_vectors: np.ndarray
    frames: pd.DataFrame
    item_vectors: np.ndarray
    items: pd.DataFrame

    @classmethod
    def load(cls, root: str | Path) -> EmbeddingSet:
        root = Path(root)
        info = json.loads((root / EMBED_INFO).read_text())
        return cls(
            model_version=info["model_version"],
            frame_vectors=np.load(root / FRAME_VECTORS),
            frames=pd.read_parquet(root / FRAMES_META),
            item_vectors=np.load(root / ITEM_VECTORS),
            items=pd.read_parquet(root / ITEMS_META),
        )

    def index_rows(self, levels: tuple[str, ...] = ("frame", "series")) -> tuple[pd.DataFrame, np.ndarray]:
        """Rows in the index schema (`id` + scalar fields) and their vectors, frames first then series."""
        parts, vectors = [], []
        if "frame" in levels:
            parts.append(index_table(self.frames, "frame", self.model_version))
            vectors.append(self.frame_vectors)
        if "series" in levels:
            parts.append(index_table(self.items, "series", self.model_version))
            vectors.append(self.item_vectors)
        return pd.concat(parts, ignore_index=True), np.concatenate(vectors)


def index_table(facts: pd.DataFrame, level: str, version: str) -> pd.DataFrame:
    """Metadata rows (ITEM_FACTS, plus plane/volume_index/frame_index for frames) -> the index's scalar fields."""
    n = len(facts)
    plane = facts["plane"] if "plane" in facts else pd.Series([""] * n, index=facts.index)
    volume = facts["volume_index"] if "volume_index" in facts else pd.Series([0] * n, index=facts.index)
    frame = facts["frame_index"] if "frame_index" in facts else pd.Series([-1] * n, index=facts.index)
    ids = [
        row_id(level, item, p, int(v), int(f))
        for item, p, v, f in zip(facts["item_id"], plane, volume, frame, strict=True)
    ]
    return pd.DataFrame(
        {
            "id": np.asarray(ids, dtype=np.int64),
            "level": level,
            "item_id": facts["item_id"].to_numpy(),
            "series_id": facts["series_hash"].fillna("").to_numpy(),
            "group_id": facts["group"].fillna("").astype(str).to_numpy(),
            "modality": facts["modality"].fillna("").to_numpy(),
            "dataset": facts["dataset"].fillna("").to_numpy(),
            "split": facts["split"].fillna("").to_numpy(),
            "label": facts["label"].fillna("").astype(str).to_numpy(),
            "kind": facts["kind"].fillna("").to_numpy(),
            "plane": plane.fillna("").to_numpy(),
            "source_path": facts["path"].fillna("").to_numpy(),
            "model_version": version,
            "frame_index": frame.to_numpy(np.int64),
        }
    )
