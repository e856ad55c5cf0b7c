"""Incremental refresh through real Milvus Lite: new files indexed, unchanged skipped, bad ones quarantined, changed
and vanished ones replaced, a crash half-way repaired by the next run, and a new model kept out until gated."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tiny_world import N_IMAGES, write_png

from m3ret.config import ModelConfig, Params, replace, to_dict
from m3ret.data.ingest import file_digest
from m3ret.eval.gate import record_published
from m3ret.index.filters import SearchFilter
from m3ret.index.ledger import BATCHES_DIR, latest_batch, load_ledger
from m3ret.index.milvus_index import MilvusIndex
from m3ret.models.embedding_set import EmbeddingSet
from m3ret.models.encoder import build_encoder
from m3ret.stages.refresh import ModelVersionError, new_model_version, rebuild_for_new_model, refresh
from m3ret.train.checkpoint import save_encoder


def _source(params: Params) -> Path:
    return Path(params.ingest.sources[0].path)


def _item_id(path: Path) -> str:
    return file_digest(path)[:16]


def _rows_per_item(params: Params, item_ids: list[str]) -> dict[tuple[str, str], int]:
    """(item_id, level) -> number of rows the published collection holds."""
    index = MilvusIndex(params.index)
    try:
        rows = index.rows(index.current(), SearchFilter(item_id=tuple(item_ids)), ("item_id", "level"))
    finally:
        index.close()
    return rows.groupby(["item_id", "level"]).size().to_dict()


def _series_count(params: Params) -> int:
    index = MilvusIndex(params.index)
    try:
        return index.count(where=SearchFilter(level="series"))
    finally:
        index.close()


def test_new_files_indexed_unchanged_skipped_corrupt_quarantined(world, tmp_path):
    state = tmp_path / "state"
    first = refresh(world, state)
    assert (first.added, first.skipped, first.quarantined, first.deleted) == ({}, N_IMAGES, [], [])

    source = _source(world)
    new = [write_png(source / f"new{i}.png", seed=100 + i) for i in range(3)]
    (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    report = refresh(world, state)
    assert report.added == {_item_id(p): str(p) for p in new}
    assert report.skipped == N_IMAGES
    assert [path for path, _ in report.quarantined] == [str(source / "broken.png")]
    assert report.quarantined[0][1]  # the reason is named

    # only the new items were embedded (the batch is the drift window), and each finds itself first
    batch = EmbeddingSet.load(latest_batch(state))
    items, vectors = batch.items, batch.item_vectors
    assert sorted(items.item_id) == sorted(report.added)
    index = MilvusIndex(world.index)
    try:
        hits = index.search(vectors, 3, SearchFilter(level="series"))
    finally:
        index.close()
    assert [h[0].fields["item_id"] for h in hits] == list(items.item_id)
    assert _series_count(world) == N_IMAGES + 3

    ledger = load_ledger(state).set_index("item_id")
    assert set(ledger.index[ledger.status == "indexed"]) >= set(report.added)
    assert ledger.loc[_item_id(source / "broken.png"), "status"] == "quarantined"

    again = refresh(world, state)
    assert (again.added, again.skipped, again.quarantined, again.deleted) == ({}, N_IMAGES + 3, [], [])

    # the broken file repaired: indexed, and its quarantined content forgotten
    broken_id = _item_id(source / "broken.png")
    write_png(source / "broken.png", seed=77)
    fixed = refresh(world, state)
    assert fixed.added == {_item_id(source / "broken.png"): str(source / "broken.png")} and fixed.quarantined == []
    assert broken_id not in set(load_ledger(state).item_id)


def test_changed_file_replaces_its_rows_and_vanished_file_is_deleted(world, tmp_path):
    state = tmp_path / "state"
    source = _source(world)
    changed, vanished = source / "img000.png", source / "img001.png"
    old_ids = [_item_id(changed), _item_id(vanished)]
    write_png(changed, seed=500)
    vanished.unlink()
    report = refresh(world, state)
    assert sorted(report.deleted) == sorted(old_ids)
    assert report.added == {_item_id(changed): str(changed)}
    counts = _rows_per_item(world, [*old_ids, _item_id(changed)])
    assert counts == {(_item_id(changed), "frame"): 1, (_item_id(changed), "series"): 1}
    assert _series_count(world) == N_IMAGES - 1
    assert not set(old_ids) & set(load_ledger(state).item_id)


def test_crash_half_way_is_repaired_by_the_next_run(world, tmp_path):
    state = tmp_path / "state"
    refresh(world, state)
    ledger_before = load_ledger(state)
    source = _source(world)
    new = [write_png(source / f"late{i}.png", seed=200 + i) for i in range(2)]
    changed = source / "img002.png"
    old_id = _item_id(changed)
    write_png(changed, seed=600)
    new_ids = [_item_id(p) for p in [*new, changed]]

    def crash_after_frames(step: str) -> None:
        if step == "upsert frame":
            raise RuntimeError("killed after the first upsert")

    with pytest.raises(RuntimeError, match="killed"):
        refresh(world, state, on_step=crash_after_frames)
    # the index took part of the batch, the ledger none of it
    assert {k for k, n in _rows_per_item(world, new_ids).items()} == {(i, "frame") for i in new_ids}
    pd.testing.assert_frame_equal(load_ledger(state), ledger_before)

    report = refresh(world, state)
    assert sorted(report.added) == sorted(new_ids) and report.deleted == [old_id]
    counts = _rows_per_item(world, [*new_ids, old_id])
    assert counts == {(i, level): 1 for i in new_ids for level in ("frame", "series")}
    assert _series_count(world) == N_IMAGES + 2
    ledger = load_ledger(state).set_index("item_id")
    assert set(new_ids) <= set(ledger.index[ledger.status == "indexed"]) and old_id not in ledger.index
    assert len(list((state / BATCHES_DIR).iterdir())) == 1  # the crashed batch's folder was cleared away


def test_new_model_is_kept_out_until_its_gate_passes(world, tmp_path):
    state = tmp_path / "state"
    source = _source(world)
    added = write_png(source / "extra.png", seed=300)
    refresh(world, state)
    old_collection = MilvusIndex(world.index)
    published_before = old_collection.current()
    old_collection.close()

    encoder = build_encoder(ModelConfig(name="vit_tiny_patch16_224", img_size=32, patch_size=8))
    save_encoder(Path(world.embed.encoder), encoder, to_dict(encoder.cfg))
    version = new_model_version(world)
    assert version is not None
    with pytest.raises(ModelVersionError, match=version):
        refresh(world, state)

    # a gate no candidate can pass (1.5 x the published model's perfect score) keeps the new model out
    gate_file = Path(world.evaluate.gate_file)
    record_published(gate_file, published_before, published_before.removeprefix("m3ret_"), 1.0)
    strict = replace(world, evaluate=replace(world.evaluate, gate_min_ratio=1.5))
    refused = rebuild_for_new_model(strict)
    assert not refused.published
    index = MilvusIndex(world.index)
    assert index.current() == published_before
    index.close()
    assert new_model_version(world) == version
    lenient = replace(world, evaluate=replace(world.evaluate, gate_min_ratio=0.0))
    passed = rebuild_for_new_model(lenient)
    assert passed.published and passed.collection != published_before
    assert json.loads(gate_file.read_text())["collection"] == passed.collection
    assert new_model_version(world) is None

    # the new collection came from the pipeline's embeddings: the refresh adds what earlier refreshes had added
    report = refresh(world, state)
    assert report.added == {_item_id(added): str(added)} and report.skipped == N_IMAGES
    assert _series_count(world) == N_IMAGES + 1
