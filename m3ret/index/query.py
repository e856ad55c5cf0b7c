"""A query's nearest rows: its series-level vector searched in the index."""

from __future__ import annotations

from m3ret.index.filters import SearchFilter
from m3ret.index.schema import Hit
from m3ret.index.vector_index import VectorIndex
from m3ret.models.query import Query


def search_query(index: VectorIndex, query: Query, k: int, where: SearchFilter | None = None) -> list[Hit]:
    """Top-k rows for the query's series-level vector (the level filter decides whether frames or series come back;
    for a 2D image the series vector is its frame vector)."""
    return index.search(query.vector[None, :], k, where)[0]
