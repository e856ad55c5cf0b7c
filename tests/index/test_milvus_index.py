"""The Milvus index through real Milvus Lite and a real Milvus server (the `cfg` fixture runs each test on both):
restart, atomic alias swap under a reader, upserts, deletes, filters."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from tiny_index import DIM, build_collection, make_items

from m3ret.index.errors import IndexNotReadyError
from m3ret.index.filters import FilterError, SearchFilter
from m3ret.index.milvus_index import MilvusIndex
from m3ret.index.rows import index_table


def test_search_before_publish_names_the_alias(cfg):
    index = MilvusIndex(cfg)
    with pytest.raises(IndexNotReadyError, match="m3ret_current"):
        index.search(np.ones((1, DIM), np.float32), 3)
    index.close()


def test_search_returns_the_item_itself_first_and_filters_by_modality(cfg):
    index = MilvusIndex(cfg)
    name, vectors = build_collection(index, "v1")
    index.publish(name)
    hits = index.search(vectors[:5], 4)
    assert [h[0].fields["item_id"] for h in hits] == [f"item{i:04d}" for i in range(5)]
    assert all(h[0].score == pytest.approx(1.0, abs=1e-4) for h in hits)
    only_ct = index.search(vectors[:10], 10, SearchFilter(modality=("ct",)))
    assert all(len(h) == 10 and {x.fields["modality"] for x in h} == {"ct"} for h in only_ct)
    not_own = index.search(vectors[:1], 10, SearchFilter(exclude_groups=("g0",)))[0]
    assert {"item0000", "item0001"}.isdisjoint(h.fields["item_id"] for h in not_own)
    index.close()


def test_filter_values_are_validated_not_pasted():
    assert SearchFilter(modality=("ct", "mri"), level="frame").expression() == (
        'modality in ["ct", "mri"] and level in ["frame"]'
    )
    for bad in ('ct" or id > 0 or modality == "', "ct)", "x" * 200, ""):
        with pytest.raises(FilterError):
            SearchFilter(modality=(bad,)).expression()
    with pytest.raises(FilterError, match="level"):
        SearchFilter(level="volume")


def test_upsert_appears_in_search_and_rewriting_adds_no_copy(cfg):
    index = MilvusIndex(cfg)
    name, _vectors = build_collection(index, "v1")
    index.publish(name)
    facts, vectors = make_items(3, seed=7, prefix="new")
    rows = index_table(facts, "series", "v1")
    index.write(rows, vectors)
    assert [h[0].fields["item_id"] for h in index.search(vectors, 1)] == ["new0000", "new0001", "new0002"]
    index.write(rows, vectors)  # a rerun after a crash writes the same rows again
    assert index.count() == 63
    index.delete_items(["new0001"])
    assert index.count() == 62
    assert index.search(vectors[1:2], 1)[0][0].fields["item_id"] != "new0001"
    index.close()


def test_index_survives_a_process_restart(cfg, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
        from tiny_index import build_collection
        from m3ret.config import IndexConfig
        from m3ret.index.milvus_index import MilvusIndex
        index = MilvusIndex(IndexConfig(uri={cfg.uri!r}, index_type="HNSW", insert_batch=25))
        name, _ = build_collection(index, "v1")
        index.publish(name)
        index.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    index = MilvusIndex(cfg)  # a new process's view of the same file
    assert index.current() == "m3ret_v1"
    assert index.count() == 60
    _facts, vectors = make_items(60, seed=0)
    assert index.search(vectors[7:8], 1)[0][0].fields["item_id"] == "item0007"
    index.close()


def test_alias_swap_is_atomic_for_a_reader_and_old_collections_are_retired(cfg):
    index = MilvusIndex(cfg)
    name1, vectors = build_collection(index, "v1")
    index.publish(name1)
    seen: list[tuple[int, set[str]]] = []
    stop = threading.Event()

    def reader() -> None:
        reader_index = MilvusIndex(cfg, client=index.client)
        while not stop.is_set():
            hits = reader_index.search(vectors[:2], 5)
            seen.append((min(len(h) for h in hits), {x.fields["model_version"] for h in hits for x in h}))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        name2, _ = build_collection(index, "v2")  # built completely while the reader searches v1 through the alias
        index.publish(name2)
        while not any("v2" in versions for _n, versions in seen):
            pass
    finally:
        stop.set()
        thread.join(timeout=60)
    assert seen and all(n == 5 for n, _versions in seen), "a reader saw an empty or short result"
    assert all(versions in ({"v1"}, {"v2"}) for _n, versions in seen)
    assert index.current() == "m3ret_v2"
    name3, _ = build_collection(index, "v3")
    dropped = index.publish(name3)
    assert dropped == ["m3ret_v1"] and index.collections() == ["m3ret_v2", "m3ret_v3"]
    index.close()


def test_a_collection_of_another_dimension_is_refused(cfg):
    index = MilvusIndex(cfg)
    index.ensure_collection("v1", DIM)
    with pytest.raises(ValueError, match="16-d vectors, not 8-d"):
        index.ensure_collection("v1", 8)
    with pytest.raises(ValueError, match="model version"):
        index.collection_name("v1; drop")
    index.close()
