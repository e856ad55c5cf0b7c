"""Versioned collections behind one alias: build a model version's collection, publish it, search through it.

`uri` is a Milvus Lite file (the embedded default; one process per file) or a server/cluster URL; the same code
serves both. A collection is built completely (insert, flush, index, load) before the alias moves to it, and Milvus
switches an alias atomically, so a reader searching through the alias sees the old collection or the new one, never
an empty or half-built one.

Where a server differs from Lite (each shown by the tests in tests/index on a real Milvus standalone):
- reads ask for Session consistency: a collection's default on a server is Bounded, under which a count right after
  this client's own upsert missed it (Lite has no such lag); Strong would wait a time tick, ~200 ms, on every
  search; Session waits only for this client's own writes, so a reader that writes nothing never waits;
- a server builds a flushed segment's index in the background (Lite before `flush` returns), so `publish` waits
  until every row is indexed rather than serve the new collection by brute force;
- the alias is looked up through `has_collection`/`describe_collection`, which honour the database in the URI
  (`http://host:19530/<db>`); a 2.3 server's alias listing answers from the default database whatever the URI says;
- throw-away collections (`scratch_config`) get a prefix of their own on a server, where they share one namespace
  with the published collections (a Lite scratch file is apart by itself).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymilvus import MilvusClient

from m3ret.config import IndexConfig, replace
from m3ret.index.errors import IndexNotReadyError
from m3ret.index.filters import SearchFilter
from m3ret.index.schema import SCALAR_FIELDS, VECTOR_FIELD, Hit, collection_schema, index_params, search_params

log = logging.getLogger(__name__)
_VERSION = re.compile(r"^[A-Za-z0-9_]{1,64}$")
# Milvus caps one search's limit (topk) at 16384.
MAX_LIMIT = 16384
# read-your-own-writes without Strong's wait for a time tick on every search (module docstring)
READ_CONSISTENCY = "Session"
# how long `publish` waits for a server to index a collection (a million HNSW rows on two cores take minutes)
INDEX_TIMEOUT_S = 3600.0


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


def connect(cfg: IndexConfig) -> MilvusClient:
    """A client for `cfg.uri`; a Milvus Lite file gets its parent folder created first."""
    if not is_server_uri(cfg.uri):
        Path(cfg.uri).parent.mkdir(parents=True, exist_ok=True)
    return MilvusClient(uri=cfg.uri, token=cfg.token)


def _batches(table: pd.DataFrame, vectors: np.ndarray, size: int) -> Iterator[list[dict[str, Any]]]:
    columns = ["id", *SCALAR_FIELDS]
    missing = sorted(set(columns) - set(table.columns))
    if missing:
        raise ValueError(f"index rows lack columns {missing}")
    if len(table) != len(vectors):
        raise ValueError(f"{len(table)} rows but {len(vectors)} vectors")
    table = table[columns]
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    for start in range(0, len(table), size):
        chunk = table.iloc[start : start + size].to_dict("records")  # one batch of dicts at a time, not a dict per row
        for row, vec in zip(chunk, vecs[start : start + size], strict=True):
            row[VECTOR_FIELD] = vec
            row["id"] = int(row["id"])
            row["frame_index"] = int(row["frame_index"])
        yield chunk


class MilvusIndex:
    """The VectorIndex on Milvus: one model version per collection `<prefix>_<version>`; `cfg.alias` names the
    published one. `client` shares an open connection (two views of one Milvus Lite file in one process)."""

    def __init__(self, cfg: IndexConfig, client: MilvusClient | None = None) -> None:
        self.cfg = cfg
        self._owns_client = client is None
        self.client = client if client is not None else connect(cfg)
        self._loaded: set[str] = set()

    # ------------------------------------------------------------------ collections
    def collection_name(self, version: str) -> str:
        if not _VERSION.match(version):
            raise ValueError(f"model version {version!r} must be 1-64 letters, digits or '_'")
        return f"{self.cfg.collection_prefix}_{version}"

    def collections(self) -> list[str]:
        """This project's collections (those named with `collection_prefix`), sorted."""
        prefix = f"{self.cfg.collection_prefix}_"
        return sorted(name for name in self.client.list_collections() if name.startswith(prefix))

    def current(self) -> str | None:
        """The collection the alias points at, or None before the first publish."""
        if not self.client.has_collection(self.cfg.alias):
            return None
        return self.client.describe_collection(self.cfg.alias)["collection_name"]

    def count(self, collection: str | None = None, where: SearchFilter | None = None) -> int:
        """Rows in `collection` (default: the published one) matching `where`."""
        name = self._load(collection or self._published())
        expression = where.expression() if where else ""
        found = self.client.query(
            name, filter=expression, output_fields=["count(*)"], consistency_level=READ_CONSISTENCY
        )
        return int(found[0]["count(*)"])

    def rows(
        self, collection: str, where: SearchFilter | None = None, fields: tuple[str, ...] = SCALAR_FIELDS
    ) -> pd.DataFrame:
        """Every row of `collection` matching `where`, columns `fields`, in pages (Milvus caps one query's size)."""
        self._load(collection)
        filter_ = where.expression() if where else ""
        iterator = self.client.query_iterator(
            collection,
            batch_size=1000,
            filter=filter_,
            output_fields=list(fields),
            consistency_level=READ_CONSISTENCY,
        )
        found: list[dict] = []
        try:
            while page := iterator.next():
                found += page
        finally:
            iterator.close()
        return pd.DataFrame(found, columns=list(fields))

    def ensure_collection(self, version: str, dim: int) -> str:
        """Create (or reuse) the collection of `version` with a `dim`-dimensional vector field; returns its name."""
        name = self.collection_name(version)
        if self.client.has_collection(name):
            have = next(f for f in self.client.describe_collection(name)["fields"] if f["name"] == VECTOR_FIELD)
            if int(have["params"]["dim"]) != dim:
                raise ValueError(f"collection {name} holds {have['params']['dim']}-d vectors, not {dim}-d")
            return name
        self.client.create_collection(
            name, schema=collection_schema(dim), index_params=index_params(self.client, self.cfg)
        )
        log.info("created collection %s (%s, %s, dim %d)", name, self.cfg.index_type, self.cfg.metric, dim)
        return name

    def drop_collection(self, name: str) -> None:
        """Remove `name` if it exists (a throw-away evaluation collection, or one left by an interrupted run)."""
        if self.client.has_collection(name):
            self.client.drop_collection(name)
        self._loaded.discard(name)

    def write(self, rows: pd.DataFrame, vectors: np.ndarray, collection: str | None = None) -> int:
        """Upsert rows (columns `id` + SCALAR_FIELDS) with their vectors [N, D] into `collection` (default: the
        published one). Ids are stable (`schema.row_id`), so writing an item twice replaces it. Returns N."""
        name = collection or self._published()
        for chunk in _batches(rows, vectors, self.cfg.insert_batch):
            self.client.upsert(name, chunk)
        self.client.flush(name)
        return len(rows)

    def delete_items(self, item_ids: list[str], collection: str | None = None) -> None:
        """Remove every row (frames and series) of these items."""
        if not item_ids:
            return
        name = collection or self._published()
        self.client.delete(name, filter=SearchFilter(item_id=tuple(item_ids)).expression())
        self.client.flush(name)

    def publish(self, collection: str) -> list[str]:
        """Point the alias at `collection` (atomically), then drop the oldest collections beyond `cfg.retain`.
        Returns the dropped names. The collection is indexed and loaded first so the first search through the alias is
        served, by its index."""
        self.wait_until_indexed(collection)
        self._load(collection)
        if self.current() is None:
            self.client.create_alias(collection, self.cfg.alias)
        else:
            self.client.alter_alias(collection, self.cfg.alias)
        log.info("alias %s -> %s", self.cfg.alias, collection)
        return self._drop_old(keep=collection)

    def _drop_old(self, keep: str) -> list[str]:
        others = [n for n in self.collections() if n != keep]
        # oldest first by creation time, so retain keeps the most recent ones
        others.sort(key=lambda n: self.client.describe_collection(n).get("created_timestamp", 0))
        doomed = others[: max(0, len(others) - (self.cfg.retain - 1))]
        for name in doomed:
            self.client.drop_collection(name)
            log.info("dropped old collection %s", name)
        return doomed

    def wait_until_indexed(self, name: str, timeout_s: float = INDEX_TIMEOUT_S) -> float:
        """Block until every row of `name` is in its vector index; returns the seconds waited. A server indexes a
        flushed segment in the background and meanwhile searches those rows by brute force; Lite is done at once."""
        start = time.monotonic()
        while True:
            state = self.client.describe_index(name, VECTOR_FIELD)
            if not state.get("pending_index_rows") and state.get("indexed_rows") == state.get("total_rows"):
                return time.monotonic() - start
            if state.get("state") == "Failed" or time.monotonic() - start > timeout_s:
                raise RuntimeError(f"index of {name} at {self.cfg.uri} not built after {timeout_s:.0f} s: {state}")
            time.sleep(0.1)

    def _load(self, name: str) -> str:
        """Load `name` into memory once per client: a reopened Milvus Lite file starts with its collections released."""
        if name not in self._loaded:
            self.client.load_collection(name)
            self._loaded.add(name)
        return name

    def _load_published(self) -> None:
        """Make sure, once per client, that the alias names a loaded collection. Milvus keeps a collection loaded for
        every client until it is released, and `publish` loads a collection before the alias moves to it, so later
        searches through the alias skip the lookup: two calls, 2 ms a search on a server
        (benchmarks/results/search/alias-lookup-*.md)."""
        if self.cfg.alias not in self._loaded:
            self._load(self._published())
            self._loaded.add(self.cfg.alias)

    def _published(self) -> str:
        name = self.current()
        if name is None:
            raise IndexNotReadyError(f"no collection is published under alias {self.cfg.alias!r} at {self.cfg.uri}")
        return name

    # ------------------------------------------------------------------ search
    def search(
        self,
        vectors: np.ndarray,
        k: int,
        where: SearchFilter | None = None,
        collection: str | None = None,
        fields: tuple[str, ...] = SCALAR_FIELDS,
    ) -> list[list[Hit]]:
        """Top-k rows per query vector [Q, D] (L2-normalised), best first, through the alias unless `collection`
        is given (evaluation of a candidate before it is published)."""
        if not 1 <= k <= MAX_LIMIT:
            raise ValueError(f"k must be in 1..{MAX_LIMIT}, got {k}")
        target = collection or self.cfg.alias
        if collection:
            self._load(collection)
        else:
            self._load_published()
        queries = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        result = self.client.search(
            target,
            data=list(queries),
            limit=k,
            filter=where.expression() if where else "",
            output_fields=list(fields),
            search_params=search_params(self.cfg, k),
            consistency_level=READ_CONSISTENCY,
        )
        return [[Hit(int(h["id"]), float(h["distance"]), dict(h["entity"])) for h in hits] for hits in result]

    @staticmethod
    def scratch_config(cfg: IndexConfig, folder: Path) -> IndexConfig:
        """A Lite file of its own in `folder` (a Lite file admits one client per process, and closing it stops its
        server), or the same server with collection names of this `folder`'s own: `scratch_<tag>_<prefix>_...` is
        neither among `collections()` (so `retain` never counts or drops it) nor another run's scratch."""
        if not is_server_uri(cfg.uri):
            return replace(cfg, uri=str(Path(folder) / "scratch.db"))
        tag = hashlib.blake2b(str(Path(folder).resolve()).encode(), digest_size=6).hexdigest()
        return replace(
            cfg, collection_prefix=f"scratch_{tag}_{cfg.collection_prefix}", alias=f"scratch_{tag}_{cfg.alias}"
        )

    def close(self) -> None:
        """Close the client; for a Milvus Lite file this client opened, also stop the embedded server so another
        process can open the file (Lite runs it inside the process that opened the file, until exit)."""
        self.client.close()
        if self._owns_client and not is_server_uri(self.cfg.uri):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.cfg.uri)
