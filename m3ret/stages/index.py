"""The index stage: the model version's collection filled from the embed stage output, resumable and idempotent."""

from __future__ import annotations

import logging
from typing import Any

from m3ret.config import Params
from m3ret.index.rows import embedding_rows
from m3ret.index.vector_index import VectorIndex, open_index
from m3ret.models.embedding_set import EmbeddingSet
from m3ret.stages.report import write_report

log = logging.getLogger(__name__)


def build_collection(index: VectorIndex, embeddings: EmbeddingSet) -> str:
    """Create (or bring up to date) the collection of `embeddings.model_version`; returns its name. Nothing is
    published here: the evaluation gate decides that.

    The same model version can meet new metadata (a changed split, new items), so every row is upserted. Rows have
    stable ids, so a build interrupted half-way is finished by running it again, with no row twice. Rows of items
    that left the data are removed by the refresh stage (`m3ret.stages.refresh`), which also owns the items it added.
    """
    rows, vectors = embedding_rows(embeddings)
    name = index.ensure_collection(embeddings.model_version, vectors.shape[1])
    index.write(rows, vectors, collection=name)
    log.info(
        "collection %s: %d rows (%d frames, %d series)", name, len(rows), len(embeddings.frames), len(embeddings.items)
    )
    return name


def run(params: Params) -> dict[str, Any]:
    """`build_collection` from `embed.out` into `index.uri`; returns the summary written to reports/index.json."""
    index = open_index(params.index)
    try:
        name = build_collection(index, EmbeddingSet.load(params.embed.out))
        summary = {"collection": name, "rows": index.count(name), "published": index.current()}
    finally:
        index.close()
    write_report("index", summary)
    return summary
