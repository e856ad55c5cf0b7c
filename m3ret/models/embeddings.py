"""The embed stage: every stored frame through the encoder, plus one vector per item (series, volume, video).

Output folder (`embed.out`):
- `frame_vectors.npy` float32 [N, D], row i = frame i of the frame store; `frames.parquet` its metadata.
- `item_vectors.npy` float32 [M, D], the mean of an item's frame vectors renormalised; `items.parquet`.
- `embed.json`: model version, dimension, counts and the fingerprint of the inputs. A rerun whose model version
  and frames are unchanged does nothing.
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

from m3ret.config import EmbedConfig, Params, PreprocessConfig, ReadConfig, to_dict
from m3ret.data.frame_store import FrameStore
from m3ret.index.schema import row_id
from m3ret.models.encoder import Encoder, load_encoder

FRAME_VECTORS, ITEM_VECTORS = "frame_vectors.npy", "item_vectors.npy"
FRAMES_META, ITEMS_META, EMBED_INFO = "frames.parquet", "items.parquet", "embed.json"
# Item facts carried next to every vector (no PHI: ids are salted hashes, no header fields).
ITEM_FACTS = ("item_id", "dataset", "modality", "kind", "label", "path", "series_hash", "split", "group")
# preprocess keys that change speed only, not the frames a model sees
_SPEED_ONLY = ("workers", "shard_frames", "out")
log = logging.getLogger(__name__)


def model_version(encoder_path: str | Path, preprocess: PreprocessConfig, read: ReadConfig) -> str:
    """12 hex digits naming what produced a vector: the checkpoint's bytes and the preprocessing that made frames."""
    digest = hashlib.sha256()
    with open(encoder_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    prep = {k: v for k, v in to_dict(preprocess).items() if k not in _SPEED_ONLY}
    digest.update(json.dumps({"preprocess": prep, "read": to_dict(read)}, sort_keys=True).encode())
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


def embed_frames(encoder: Encoder, frames_dir: Path, n_frames: int, batch_size: int, workers: int) -> np.ndarray:
    """float32 [n_frames, D] L2-normalised vectors of the store's frames in order, with a progress bar (images/s)."""
    out = np.empty((n_frames, encoder.embed_dim), dtype=np.float32)
    batches = BatchSampler(SequentialSampler(range(n_frames)), batch_size, drop_last=False)
    loader = DataLoader(_FrameBatches(frames_dir), sampler=batches, batch_size=None, num_workers=workers)
    bar = tqdm(total=n_frames, desc="embed", unit="img", dynamic_ncols=True, mininterval=1.0)
    start = 0
    with bar:
        for frames in loader:
            out[start : start + len(frames)] = encoder.embed(frames, batch_size=batch_size).numpy()
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


def embed_stage(
    cfg: EmbedConfig,
    frames_dir: Path,
    manifest: pd.DataFrame,
    splits: pd.DataFrame,
    preprocess: PreprocessConfig,
    read: ReadConfig,
) -> dict[str, Any]:
    """Write the output folder (module docstring); returns the summary stored in `embed.json`."""
    out = Path(cfg.out)
    store = FrameStore(frames_dir)
    items = _item_table(manifest, splits)
    frames = store.table[["frame_id", "item_id", "plane", "volume_index", "frame_index", "timestamp"]]
    frames = frames.merge(items, on="item_id", how="left", validate="many_to_one")
    version = model_version(cfg.encoder, preprocess, read)
    fingerprint = _fingerprint(frames, items)
    info_path = out / EMBED_INFO
    if info_path.exists():
        done = json.loads(info_path.read_text())
        if done.get("model_version") == version and done.get("fingerprint") == fingerprint:
            log.info("embed: model %s and frames unchanged; nothing to do", version)
            return done
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder = load_encoder(cfg.encoder, "cuda" if torch.cuda.is_available() else "cpu")
    tic = time.perf_counter()
    vectors = embed_frames(encoder, frames_dir, len(store), cfg.batch_size, cfg.workers)
    seconds = time.perf_counter() - tic
    ids, per_item = item_vectors(vectors, frames["item_id"].to_numpy())
    items = items.set_index("item_id").loc[ids].reset_index()
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / FRAME_VECTORS, vectors)
    np.save(out / ITEM_VECTORS, per_item)
    frames.to_parquet(out / FRAMES_META, index=False)
    items.to_parquet(out / ITEMS_META, index=False)
    summary = {
        "model_version": version,
        "fingerprint": fingerprint,
        "dim": int(vectors.shape[1]),
        "frames": len(frames),
        "items": len(items),
        "images_per_s": round(len(frames) / max(seconds, 1e-9), 2),
    }
    info_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def embed_pipeline_outputs(params: Params) -> dict[str, Any]:
    """`embed_stage` on the pipeline's own frame store, manifest and splits, where params.yaml puts them."""
    return embed_stage(
        params.embed,
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
