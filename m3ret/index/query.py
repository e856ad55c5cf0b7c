"""A query's nearest rows: its series-level vector searched in the index."""

from __future__ import annotations

from m3ret.index.filters import SearchFilter
from m3ret.index.schema import HIT_FIELDS, Hit
from m3ret.index.vector_index import VectorIndex
from m3ret.models.query import Query

# what a person is shown of a hit, plus the version that tells whether the index holds this model's vectors: only
# what the callers use (the per-call cost is Milvus's own either way: benchmarks/milvus_call_cost.py)
QUERY_FIELDS = (*HIT_FIELDS, "model_version")


def search_query(index: VectorIndex, query: Query, k: int, where: SearchFilter | None = None) -> list[Hit]:
    """Top-k rows (their QUERY_FIELDS) for the query's series-level vector (the level filter decides whether frames
    or series come back; for a 2D image the series vector is its frame vector)."""
    return index.search(query.vector[None, :], k, where, fields=QUERY_FIELDS)[0]
