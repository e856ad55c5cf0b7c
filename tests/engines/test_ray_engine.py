"""The ray engine on a real Ray cluster of two nodes on this machine (a head and a worker node, 1 CPU each).

- ingest -> preprocess -> split -> embed through the cluster give the local engine's outputs on a mixed corpus with
  hostile files: the same items, quarantine, frames and shards, vectors within float tolerance;
- a task whose worker dies (a real segfault) costs its own item, as an ItemCrash, and nothing else;
- a Ray started for the run (`engine.ray_address: ""`) is stopped with the engine, every process of it;
- an embed actor killed half-way is restarted and the run finishes with every frame embedded exactly once;
- a `m3ret preprocess` and a `m3ret embed` killed half-way and started again reuse what they had journalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import ray
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from mixed_source import HOSTILE, build_mixed_source  # noqa: E402
from ray_cluster import MARKER, marked_processes  # noqa: E402
from tiny_world import SIZE  # noqa: E402  (the encoder's frame size; conftest puts tests/flows on the path)

from m3ret.config import EngineConfig, load_params  # noqa: E402
from m3ret.data.frame_store import FrameStore  # noqa: E402
from m3ret.data.parallel import CRASH_REASON, ItemCrash  # noqa: E402
from m3ret.data.preprocess import preprocess  # noqa: E402
from m3ret.engines import open_engine  # noqa: E402
from m3ret.engines.ray_engine import RayEngine  # noqa: E402
from m3ret.models.embedding_set import EmbeddingSet  # noqa: E402
from m3ret.stages import embed, ingest, split  # noqa: E402
from m3ret.stages import preprocess as preprocess_stage  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
N_PNG = 24
# the test module's functions travel to the workers by value (they cannot import it)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The mixed source (every kind, hostile files) plus PNGs of their own, so the store has many shards."""
    root = build_mixed_source(tmp_path_factory.mktemp("corpus") / "src")
    rng = np.random.default_rng(1)
    (root / "png").mkdir()
    for i in range(N_PNG):
        Image.fromarray(rng.integers(0, 256, size=(48, 40), dtype=np.uint8)).save(root / "png" / f"{i:02d}.png")
    return root


def _world(root: Path, corpus: Path, encoder: Path, engine: dict) -> Path:
    """A folder with params.yaml (pipeline paths relative to it, as in the repository) and nothing else yet."""
    root.mkdir(parents=True, exist_ok=True)
    params = {
        "ingest": {"sources": [{"path": str(corpus), "dataset": "mixed"}], "id_salt": "engine-tests-0123456789"},
        "preprocess": {"size": SIZE, "shard_frames": 4, "workers": 2},
        "split": {"gallery_frac": 0.3, "query_frac": 0.2},
        "embed": {"encoder": str(encoder), "batch_size": 4, "workers": 0},
        "engine": engine,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _run(world: Path, *stages) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(world)
        params = load_params("params.yaml")
        for stage in stages:
            stage.run(params)


def _ray_engine(cluster, **settings) -> dict:
    return {"kind": "ray", "ray_address": cluster.address, "items_per_task": 2, **settings}


@pytest.fixture(scope="module")
def local_world(tmp_path_factory, corpus, encoder_file) -> Path:
    world = _world(tmp_path_factory.mktemp("local"), corpus, encoder_file, {"kind": "local"})
    _run(world, ingest, preprocess_stage, split, embed)
    return world


def _assert_same_frames(world: Path, reference: Path) -> None:
    for table in ("data/manifest.parquet", "data/frames/frames.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(world / table), pd.read_parquet(reference / table))
    store, expected = FrameStore(world / "data/frames"), FrameStore(reference / "data/frames")
    np.testing.assert_array_equal(store.get(np.arange(len(store))), expected.get(np.arange(len(expected))))


def _assert_same_vectors(world: Path, reference: Path) -> None:
    got, expected = EmbeddingSet.load(world / "data/embeddings"), EmbeddingSet.load(reference / "data/embeddings")
    assert got.model_version == expected.model_version
    pd.testing.assert_frame_equal(got.frames, expected.frames)
    pd.testing.assert_frame_equal(got.items, expected.items)
    assert got.frames.frame_id.is_unique and got.items.item_id.is_unique
    np.testing.assert_allclose(got.frame_vectors, expected.frame_vectors, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.item_vectors, expected.item_vectors, atol=1e-4, rtol=0)


def test_the_cluster_gives_the_local_engines_outputs(ray_cluster, tmp_path, corpus, encoder_file, local_world):
    world = _world(tmp_path / "ray", corpus, encoder_file, _ray_engine(ray_cluster))
    _run(world, ingest, preprocess_stage, split, embed)
    _assert_same_frames(world, local_world)
    pd.testing.assert_frame_equal(pd.read_parquet(world / "data/splits.parquet"),
                                  pd.read_parquet(local_world / "data/splits.parquet"))  # fmt: skip
    for quarantine in ("reports/quarantine.csv", "reports/preprocess_quarantine.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(world / quarantine), pd.read_csv(local_world / quarantine))
    quarantined = {Path(p).name for p in pd.read_csv(world / "reports/quarantine.csv").path}
    assert quarantined >= HOSTILE
    for report in ("ingest", "preprocess"):
        got, expected = (json.loads((w / f"reports/{report}.json").read_text()) for w in (world, local_world))
        assert got == expected
    _assert_same_vectors(world, local_world)
    assert not any((world / "data/cache/engine").rglob("*.pkl")), "the journal is discarded once a step is done"


def _square_or_segfault(n: int) -> int:
    if n == 3:
        ctypes.string_at(0)  # a real segfault: a native decoder dying on a hostile file
    return n * n


def test_a_worker_that_dies_costs_its_own_item(ray_cluster, tmp_path):
    engine = RayEngine(EngineConfig(kind="ray", ray_address=ray_cluster.address, items_per_task=3,
                                    journal_dir=str(tmp_path / "journal")))  # fmt: skip
    try:
        expected = [n * n for n in range(8)]
        expected[3] = ItemCrash(CRASH_REASON)
        assert list(engine.map_items(_square_or_segfault, range(8), 1, "plain")) == expected
        keys = [f"item{n}" for n in range(8)]
        assert list(engine.map_items(_square_or_segfault, range(8), 1, "journalled", keys)) == expected
        assert (engine.stats["journalled"]["computed"], engine.stats["journalled"]["from_journal"]) == (8, 0)
        assert not list((tmp_path / "journal").rglob("*.pkl"))
    finally:
        engine.close()


def test_a_ray_started_for_the_run_is_stopped_with_the_engine(tmp_path, monkeypatch):
    marker = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, marker)  # inherited by every process of the Ray the engine starts
    monkeypatch.setenv("RAY_TMPDIR", temp := tempfile.mkdtemp(prefix="m3ret-ray-"))  # short: unix socket paths
    engine = RayEngine(EngineConfig(kind="ray", local_cpus=1, journal_dir=str(tmp_path / "journal")))
    try:
        assert list(engine.map_items(abs, [-1, 2, -3], 1, "abs")) == [1, 2, 3]
        assert marked_processes(marker), "the engine started a Ray of its own"
    finally:
        engine.close()
    deadline = time.monotonic() + 60
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not marked_processes(marker)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture()
def split_world(tmp_path, local_world, ray_cluster) -> Path:
    """The local world up to the split stage (ingest and preprocess are the same on both engines), on the cluster."""
    world = tmp_path / "world"
    shutil.copytree(local_world, world, ignore=shutil.ignore_patterns("embeddings", "retrieval.pt"))
    params = yaml.safe_load((world / "params.yaml").read_text())
    params["engine"] = _ray_engine(ray_cluster)
    (world / "params.yaml").write_text(yaml.safe_dump(params))
    return world


def _embed_in_process(world: Path) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(world)
        params = load_params("params.yaml")
        with open_engine(params.engine) as engine:
            embed.embed_store(params.embed, params.readout, Path(params.preprocess.out),
                              pd.read_parquet(params.ingest.out), pd.read_parquet(params.split.out),
                              params.preprocess, params.read, engine)  # fmt: skip
            return engine.stats["embed"]


def _shards(world: Path) -> int:
    return FrameStore(world / "data/frames").table["shard"].nunique()


def test_an_embed_actor_killed_half_way_costs_nothing(ray_cluster, split_world, local_world):
    journal = split_world / "data/cache/engine/embed"
    killed: list[tuple[int, int]] = []

    def kill_one_actor() -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            if any(journal.glob("*.pkl")):
                for proc in ray_cluster.processes():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        if "MapBatches(EmbedShards)" in " ".join(proc.cmdline()):
                            done = len(list(journal.glob("*.pkl")))
                            proc.send_signal(signal.SIGKILL)
                            killed.append((proc.pid, done))
                            return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_one_actor, daemon=True)
    watcher.start()
    stats = _embed_in_process(split_world)
    watcher.join(timeout=5)
    assert killed, "no embed actor was seen to kill"
    assert killed[0][1] < _shards(split_world), "the actor was killed after the last shard: nothing was tested"
    assert stats["computed"] + stats["from_journal"] == _shards(split_world)
    _assert_same_vectors(split_world, local_world)


def _start_killed(world: Path, cluster, stage: str, journal: Path) -> set[str]:
    """`m3ret <stage>` on the cluster, killed (SIGKILL, its whole process group) once it journalled a part;
    returns the parts it left."""
    env = {**cluster.env, "PYTHONPATH": str(ROOT)}
    with open(world / f"{stage}.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "m3ret.cli", stage], cwd=world, env=env,
                                  start_new_session=True, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not any(journal.glob("*.pkl")) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    return {p.name for p in journal.glob("*.pkl")}


def test_a_killed_run_resumes_from_its_journal(ray_cluster, tmp_path, corpus, encoder_file, local_world):
    world = _world(tmp_path / "world", corpus, encoder_file, _ray_engine(ray_cluster, items_per_task=1))
    _run(world, ingest)
    journal = world / "data/cache/engine"
    manifest = pd.read_parquet(world / "data/manifest.parquet")

    left = _start_killed(world, ray_cluster, "preprocess", journal / "preprocess")
    assert 0 < len(left) < len(manifest), f"preprocess was not killed half-way: {world / 'preprocess.log'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(world)
        params = load_params("params.yaml")
        with open_engine(params.engine) as engine:
            preprocess(manifest, params.preprocess, params.read, engine.map_items)
            stats = engine.stats["preprocess"]
    assert stats["from_journal"] >= len(left) and stats["computed"] + stats["from_journal"] == len(manifest)
    assert stats["computed"] > 0, "the rerun should compute only what the killed run had not finished"
    _assert_same_frames(world, local_world)

    _run(world, split)
    left = _start_killed(world, ray_cluster, "embed", journal / "embed")
    assert 0 < len(left) < _shards(world), f"embed was not killed half-way: {world / 'embed.log'}"
    stats = _embed_in_process(world)
    assert stats["from_journal"] >= len(left) and stats["computed"] + stats["from_journal"] == _shards(world)
    _assert_same_vectors(world, local_world)
    assert not any(journal.rglob("*.pkl"))
