"""Tiny collections for the index tests: items with metadata and unit vectors, built through MilvusIndex."""

from __future__ import annotations

import numpy as np
import pandas as pd

from m3ret.index.milvus_index import MilvusIndex
from m3ret.index.rows import index_table

DIM = 16
MODALITIES = ("ct", "mri", "xray")
DATASETS = ("demo", "other")


def make_items(n: int, seed: int, prefix: str = "item") -> tuple[pd.DataFrame, np.ndarray]:
    """`n` items (modality cycling through MODALITIES, dataset through DATASETS, two items per group) and their
    L2-normalised random vectors float32 [n, DIM]."""
    rng = np.random.default_rng(seed)
    facts = pd.DataFrame(
        {
            "item_id": [f"{prefix}{i:04d}" for i in range(n)],
            "series_hash": [f"s{i}" for i in range(n)],
            "group": [f"g{i // 2}" for i in range(n)],
            "modality": [MODALITIES[i % len(MODALITIES)] for i in range(n)],
            "dataset": [DATASETS[i % len(DATASETS)] for i in range(n)],
            "split": "gallery",
            "label": "",
            "kind": "image",
            "path": [f"data/{prefix}{i}.png" for i in range(n)],
        }
    )
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    return facts, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build_collection(index: MilvusIndex, version: str, n: int = 60, seed: int = 0) -> tuple[str, np.ndarray]:
    """The collection of `version` holding `make_items(n, seed)` as series rows; returns its name and the vectors."""
    facts, vectors = make_items(n, seed)
    name = index.ensure_collection(version, DIM)
    index.write(index_table(facts, "series", version), vectors, collection=name)
    return name, vectors
