"""The index stage: the model version's collection filled from the embed stage output, resumable and idempotent."""

from __future__ import annotations

import logging

from m3ret.index.milvus_index import MilvusIndex
from m3ret.models.embeddings import EmbeddingSet

log = logging.getLogger(__name__)


def build_collection(index: MilvusIndex, embeddings: EmbeddingSet) -> str:
    """Create (or complete) the collection of `embeddings.model_version` and return its name; nothing is published.

    Rows have stable ids, so a build interrupted half-way is finished by running it again, and a complete one is
    left as it is (its row count already matches).
    """
    rows, vectors = embeddings.index_rows()
    name = index.ensure_collection(embeddings.model_version, vectors.shape[1])
    have = index.count(name) if index.client.has_collection(name) else 0
    if have == len(rows):
        log.info("collection %s already holds its %d rows", name, have)
        return name
    index.write(rows, vectors, collection=name)
    log.info(
        "collection %s: %d rows (%d frames, %d series)", name, len(rows), len(embeddings.frames), len(embeddings.items)
    )
    return name
