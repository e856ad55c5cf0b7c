"""Fixtures for the index tests: a Milvus Lite file per test, and one real Milvus standalone server per session
(`milvus_standalone.py`) with a database of its own per test.

`cfg` runs each test that takes it twice, on Lite and (marked slow) on the server, so everything the Lite tests
show must hold on a server too, with the same code and the same default collection and alias names.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from milvus_standalone import MilvusServerError, MilvusStandalone

from m3ret.config import IndexConfig

_DATABASES = itertools.count()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> Iterator[str]:
    """The URI of a Milvus 2.3.5 standalone server on 127.0.0.1 (free ports, data in a temp dir), stopped at the
    end of the session; the tests that need it skip, saying why, when `milvus-server` is missing or does not start."""
    server = MilvusStandalone(tmp_path_factory.mktemp("milvus-server"))
    try:
        uri = server.start()
    except MilvusServerError as error:
        pytest.skip(f"no Milvus server for the server tests: {error}")
    try:
        yield uri
    finally:
        server.stop()


@pytest.fixture()
def server_uri(milvus_server) -> Iterator[str]:
    """`http://127.0.0.1:<port>/<db>`: a database of this test's own on the session's server, dropped afterwards
    with its aliases and collections."""
    from pymilvus import MilvusClient

    db = f"test_{next(_DATABASES)}"
    admin = MilvusClient(uri=milvus_server)
    admin.create_database(db)
    yield f"{milvus_server}/{db}"
    inside = MilvusClient(uri=f"{milvus_server}/{db}")
    for name in inside.list_collections():
        for alias in inside.describe_collection(name).get("aliases", []):
            inside.drop_alias(alias)
        inside.drop_collection(name)
    inside.close()
    admin.drop_database(db)
    admin.close()


@pytest.fixture(params=["lite", pytest.param("server", marks=pytest.mark.slow)])
def cfg(request, tmp_path) -> IndexConfig:
    """HNSW, retain 2, small insert batches; a Lite file in `tmp_path`, or this test's database on the server."""
    uri = request.getfixturevalue("server_uri") if request.param == "server" else str(tmp_path / "milvus" / "m3ret.db")
    return IndexConfig(uri=uri, index_type="HNSW", retain=2, insert_batch=25)
