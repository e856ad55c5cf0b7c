"""Embeddings as index rows: one row per frame and per series/volume/video, with the scalar fields of the schema."""

from __future__ import annotations

import numpy as np
import pandas as pd

from m3ret.index.schema import row_id
from m3ret.models.embedding_set import EmbeddingSet

LEVELS = ("frame", "series")


def index_table(facts: pd.DataFrame, level: str, version: str) -> pd.DataFrame:
    """Metadata rows (`m3ret.models.embedding_set.ITEM_FACTS`, plus plane/volume_index/frame_index for frames) ->
    `id` + the index's scalar fields."""
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
            "model_version": version,
            "frame_index": frame.to_numpy(np.int64),
        }
    )


def embedding_rows(embeddings: EmbeddingSet, levels: tuple[str, ...] = LEVELS) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows in the index schema (`id` + scalar fields) and their vectors, frames first then series."""
    unknown = sorted(set(levels) - set(LEVELS))
    if unknown:
        raise ValueError(f"unknown level(s) {unknown}; valid: {list(LEVELS)}")
    parts, vectors = [], []
    if "frame" in levels:
        parts.append(index_table(embeddings.frames, "frame", embeddings.model_version))
        vectors.append(embeddings.frame_vectors)
    if "series" in levels:
        parts.append(index_table(embeddings.items, "series", embeddings.model_version))
        vectors.append(embeddings.item_vectors)
    return pd.concat(parts, ignore_index=True), np.concatenate(vectors)
