"""The embed stage's artefact: vectors of both levels (frames, items) with their metadata, written and read back.

Folder layout:
- `frame_vectors.npy` float32 [N, D], row i = frame i of the frame store; `frames.parquet` its metadata.
- `item_vectors.npy` float32 [M, D], the mean of an item's frame vectors renormalised; `items.parquet`.
- `embed.json`: model version, dimension, counts and whatever the writer adds (fingerprints of its inputs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3ret.models.frame_vectors import item_vectors

FRAME_VECTORS, ITEM_VECTORS = "frame_vectors.npy", "item_vectors.npy"
FRAMES_META, ITEMS_META, EMBED_INFO = "frames.parquet", "items.parquet", "embed.json"
# Item facts carried next to every vector: ids are salted hashes, no header fields and no source paths (a folder
# name can be a patient's), so the vectors, the index and every report built from them can be shared.
ITEM_FACTS = ("item_id", "dataset", "modality", "kind", "label", "series_hash", "split", "group")


@dataclass
class EmbeddingSet:
    """Vectors and metadata of both levels; `frames` rows align with `frame_vectors`, `items` with `item_vectors`."""

    model_version: str
    frame_vectors: np.ndarray
    frames: pd.DataFrame
    item_vectors: np.ndarray
    items: pd.DataFrame

    @classmethod
    def from_frames(
        cls, model_version: str, vectors: np.ndarray, frames: pd.DataFrame, items: pd.DataFrame
    ) -> EmbeddingSet:
        """Frame vectors [N, D] with their table (an `item_id` column) and a table of item facts (one row per item,
        any order) -> the set, items in first-seen frame order with their renormalised mean vectors."""
        ids, per_item = item_vectors(vectors, frames["item_id"].to_numpy())
        items = items.set_index("item_id").loc[ids].reset_index()
        return cls(model_version, vectors, frames, per_item, items)

    def save(self, root: str | Path, info: dict[str, Any]) -> dict[str, Any]:
        """Write the folder (module docstring); `info` + model version, dimension and counts -> embed.json, which
        is returned."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        np.save(root / FRAME_VECTORS, self.frame_vectors)
        np.save(root / ITEM_VECTORS, self.item_vectors)
        self.frames.to_parquet(root / FRAMES_META, index=False)
        self.items.to_parquet(root / ITEMS_META, index=False)
        summary = {
            **info,
            "model_version": self.model_version,
            "dim": int(self.frame_vectors.shape[1]),
            "frames": len(self.frames),
            "items": len(self.items),
        }
        (root / EMBED_INFO).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return summary

    @staticmethod
    def load_items(root: str | Path) -> tuple[str, pd.DataFrame, np.ndarray]:
        """(model version, items, item vectors float32 [M, D]) of a folder, without reading its frame level."""
        root = Path(root)
        version = json.loads((root / EMBED_INFO).read_text())["model_version"]
        return version, pd.read_parquet(root / ITEMS_META), np.load(root / ITEM_VECTORS)

    @classmethod
    def load(cls, root: str | Path) -> EmbeddingSet:
        version, items, item_vectors = cls.load_items(root)
        frames = pd.read_parquet(Path(root) / FRAMES_META)
        return cls(version, np.load(Path(root) / FRAME_VECTORS), frames, item_vectors, items)
