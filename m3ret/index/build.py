"""The index stage: the model version's collection filled from the embed stage output, resumable and idempotent."""

from __future__ import annotations

import logging

from m3ret.index.milvus_index import MilvusIndex
from m3ret.models.embeddings import EmbeddingSet

log = logging.getLogger(__name__)


def build_collection(index: MilvusIndex, embeddings: EmbeddingSet) -> str:
    """Create (or bring up to date) the collection of `embeddings.model_version`; returns its name. Nothing is
    published here: the evaluation gate decides that.

    The same model version can meet new metadata (a changed split, new items), so every row is upserted. Rows have
    stable ids, so a build interrupted half-way is finished by running it again, with no row twice. Rows of items
    that left the data are removed by the refresh flow (`m3ret.refresh`), which also owns the items it added.
    """
    rows, vectors = embeddings.index_rows()
    name = index.ensure_collection(embeddings.model_version, vectors.shape[1])
    index.write(rows, vectors, collection=name)
    log.info(
        "collection %s: %d rows (%d frames, %d series)", name, len(rows), len(embeddings.frames), len(embeddings.items)
    )
    return name
