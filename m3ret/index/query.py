"""Queries' nearest rows: their series-level vectors searched in the index."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from m3ret.index.filters import SearchFilter
from m3ret.index.schema import HIT_FIELDS, Hit
from m3ret.index.vector_index import VectorIndex
from m3ret.models.query import Query

# what a person is shown of a hit, plus the version that tells whether the index holds this model's vectors: only
# what the callers use (the per-call cost is Milvus's own either way: benchmarks/milvus_call_cost.py)
QUERY_FIELDS = (*HIT_FIELDS, "model_version")


def search_queries(
    index: VectorIndex, queries: Sequence[Query], k: int, where: SearchFilter | None = None
) -> list[list[Hit]]:
    """Top-k rows (their QUERY_FIELDS) per query's series-level vector, in one index call (the level filter decides
    whether frames or series come back; for a 2D image the series vector is its frame vector)."""
    if not queries:
        return []
    return index.search(np.stack([q.vector for q in queries]), k, where, fields=QUERY_FIELDS)
