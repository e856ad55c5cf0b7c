"""The collection layout: one row per frame and per series/volume/video, each with its metadata.

Row ids are derived from what a row is (level, item, plane, volume, frame), not from insertion order, so upserting
the same item again replaces its rows instead of adding copies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pymilvus import CollectionSchema, DataType, MilvusClient

from m3ret.config import IndexConfig

VECTOR_FIELD = "vector"
# VARCHAR fields and their maximum length in bytes.
TEXT_FIELDS: dict[str, int] = {
    "level": 16,
    "item_id": 64,
    "series_id": 80,
    "group_id": 160,
    "modality": 64,
    "dataset": 128,
    "split": 16,
    "label": 256,
    "kind": 16,
    "plane": 16,
    "model_version": 64,
}
INT_FIELDS = ("frame_index",)
SCALAR_FIELDS = (*TEXT_FIELDS, *INT_FIELDS)
# what a search result shows a person (CLI and service): ids are salted hashes, never paths
HIT_FIELDS = ("item_id", "level", "modality", "dataset", "kind", "split", "label", "frame_index")


@dataclass(frozen=True)
class Hit:
    """One search result: the row's id, its similarity (higher is closer for IP/COSINE) and its scalar fields."""

    id: int
    score: float
    fields: dict[str, Any]


def row_id(level: str, item_id: str, plane: str = "", volume_index: int = 0, frame_index: int = 0) -> int:
    """A stable positive int64 primary key for one row (63 bits of a BLAKE2b digest)."""
    key = f"{level}|{item_id}|{plane}|{volume_index}|{frame_index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1


def collection_schema(dim: int) -> CollectionSchema:
    """int64 `id` (primary, not auto), float `vector` [dim], then SCALAR_FIELDS; no dynamic fields."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    for name, max_length in TEXT_FIELDS.items():
        schema.add_field(name, DataType.VARCHAR, max_length=max_length)
    for name in INT_FIELDS:
        schema.add_field(name, DataType.INT64)
    return schema


def index_params(client: MilvusClient, cfg: IndexConfig):
    """The vector index described by `cfg` (FLAT, IVF_FLAT, IVF_SQ8 or HNSW) plus scalar indexes on filter fields."""
    params = client.prepare_index_params()
    build = {
        "FLAT": {},
        "IVF_FLAT": {"nlist": cfg.ivf_nlist},
        "IVF_SQ8": {"nlist": cfg.ivf_nlist},
        "HNSW": {"M": cfg.hnsw_m, "efConstruction": cfg.hnsw_ef_construction},
    }[cfg.index_type]
    params.add_index(field_name=VECTOR_FIELD, index_type=cfg.index_type, metric_type=cfg.metric, params=build)
    return params


def search_params(cfg: IndexConfig, k: int) -> dict:
    """Per-search knobs: HNSW `ef` (at least k), IVF `nprobe`."""
    if cfg.index_type == "HNSW":
        return {"metric_type": cfg.metric, "params": {"ef": max(cfg.hnsw_ef, k)}}
    if cfg.index_type.startswith("IVF"):
        return {"metric_type": cfg.metric, "params": {"nprobe": cfg.ivf_nprobe}}
    return {"metric_type": cfg.metric, "params": {}}
