"""What every part of m3ret needs from a vector index, as a protocol; `open_index` picks the implementation.

Versioned collections (one per model version) behind one alias: a collection is built completely before the alias
moves to it, and readers search through the alias. `m3ret.index.milvus_index.MilvusIndex` implements it for
Milvus Lite files and Milvus servers; a second backend is a new module implementing this protocol plus one entry
in BACKENDS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from m3ret.config import IndexConfig
from m3ret.index.filters import SearchFilter
from m3ret.index.milvus_index import MilvusIndex
from m3ret.index.schema import SCALAR_FIELDS, Hit


class VectorIndex(Protocol):
    cfg: IndexConfig

    def collection_name(self, version: str) -> str:
        """The collection that holds model `version`'s vectors."""

    def collections(self) -> list[str]:
        """This project's collections, sorted."""

    def current(self) -> str | None:
        """The collection the alias points at, or None before the first publish."""

    def ensure_collection(self, version: str, dim: int) -> str:
        """Create (or reuse) the collection of `version` for `dim`-dimensional vectors; returns its name."""

    def drop_collection(self, name: str) -> None:
        """Remove a collection (nothing happens when it does not exist)."""

    def write(self, rows: pd.DataFrame, vectors: np.ndarray, collection: str | None = None) -> int:
        """Upsert rows (`id` + scalar fields) with their vectors [N, D]; default: the published collection."""

    def delete_items(self, item_ids: list[str], collection: str | None = None) -> None:
        """Remove every row (frames and series) of these items."""

    def publish(self, collection: str) -> list[str]:
        """Point the alias at `collection`; returns the names of old collections dropped beyond `cfg.retain`."""

    def count(self, collection: str | None = None, where: SearchFilter | None = None) -> int:
        """Rows of `collection` (default: the published one) that match `where`."""

    def rows(
        self, collection: str, where: SearchFilter | None = None, fields: tuple[str, ...] = SCALAR_FIELDS
    ) -> pd.DataFrame:
        """Every row of `collection` matching `where`, columns `fields` (a scan, not a search)."""

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        where: SearchFilter | None = None,
        collection: str | None = None,
        fields: tuple[str, ...] = SCALAR_FIELDS,
    ) -> list[list[Hit]]:
        """Top-k rows per query vector [Q, D], best first, through the alias unless `collection` is given."""

    def close(self) -> None:
        """Release the connection (and what it holds open)."""

    @staticmethod
    def scratch_config(cfg: IndexConfig, folder: Path) -> IndexConfig:
        """Where throw-away collections go (see the module function of that name)."""


BACKENDS: dict[str, type[VectorIndex]] = {"milvus": MilvusIndex}


def open_index(cfg: IndexConfig) -> VectorIndex:
    """The index `cfg` describes, connected (`cfg.backend` chooses the implementation)."""
    return BACKENDS[cfg.backend](cfg)


def scratch_config(cfg: IndexConfig, folder: Path) -> IndexConfig:
    """Where throw-away collections (evaluation of baselines, benchmarks) go for an index configured as `cfg`, with
    `folder` a temporary directory the caller removes afterwards."""
    return BACKENDS[cfg.backend].scratch_config(cfg, folder)
