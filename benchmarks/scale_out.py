"""Scale-out: items/s of ingest + preprocess and frames/s of embed on the local engine and on Ray, on this machine.

One synthetic corpus (`benchmarks/preprocess.py`'s writers: CT series, CR films, NIfTI volumes, mp4 clips) goes
through `ingest` (cold cache), `preprocess` and `embed_store` (a random ViT-Ti, 64 px, patch 8, as params.yaml's
model), each stage opening its own engine as the dvc stages do:

- local with 1 and 2 worker processes (params.yaml's `workers`: 2), the baseline;
- ray on a real cluster started here with `ray start`: a head of 1 CPU (1 node), then a head and a worker node of
  1 CPU each (2 nodes), the driver being this process.

Ray's fixed start-up cost: `ray start` of a head and of a worker node, a driver's connection (`ray.init`, the m3ret
package uploaded as `py_modules`), a Ray started for the run (`engine.ray_address: ""`: `ray.init` + `ray.shutdown`),
and per stage the seconds to its first result (`RayEngine.stats`: workers started, m3ret imported, for embed the
actors started and the encoder shipped, then the first task or shard). The steady rate is the rest of a stage: the
items after the first task over the time after the first result; for embed also the seconds the actors spent in the
encoder per frame (`stats["embed"]["actor_s"]`), since Ray Data may hand shards over in bursts. From the 1-node run
(1 CPU): the items/s and frames/s a node of k CPUs would add, up to the ceiling of the one driver that receives every
result and writes every shard (measured by replaying precomputed per-item results through `preprocess`).

Each configuration runs `--runs` times and the fastest is kept. Every number is from this machine: 2 cores shared
with other work, so Ray's nodes compete with the driver and with each other for the same two cores; a second node
here adds no core. The corpus and every Ray file live in temporary folders, removed at the end.

    python benchmarks/scale_out.py [--scale 1] [--runs 2]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engines"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "flows"))
from ray_cluster import RayCluster, ray_env  # noqa: E402  (the engine tests' cluster, stopped by process group)
from tiny_world import write_encoder  # noqa: E402  (a random, seeded ViT-Ti)

_RAY_ROOT = Path(tempfile.mkdtemp(prefix="m3ret-ray-"))  # short: Ray's unix sockets live under it
os.environ.update(ray_env(_RAY_ROOT))  # before ray is imported: it reads its token settings once

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import ray  # noqa: E402
import torch  # noqa: E402
from preprocess import CorpusSpec, _load, build_corpus, machine_facts  # noqa: E402  (benchmarks/preprocess.py)

from m3ret.config import (  # noqa: E402
    EmbedConfig,
    EngineConfig,
    IngestConfig,
    PreprocessConfig,
    ReadConfig,
    ReadoutConfig,
    SourceConfig,
    SplitConfig,
    replace,
)
from m3ret.data.ingest import ingest  # noqa: E402
from m3ret.data.parallel import parallel_map  # noqa: E402
from m3ret.data.preprocess import preprocess  # noqa: E402
from m3ret.data.splits import make_splits  # noqa: E402
from m3ret.engines import open_engine  # noqa: E402
from m3ret.engines.ray_engine import PACKAGE  # noqa: E402
from m3ret.stages.embed import embed_store  # noqa: E402

SALT = b"scale-out-benchmark-salt"
# per --scale: 4 CT series (32 slices of 256 px), 32 CR films (512 px), 4 NIfTI volumes, 4 clips (2 s, 192 px)
BASE = CorpusSpec(4, 32, 256, 32, 512, 4, (128, 128, 64), 4, 192, 2.0, 25)
READ = ReadConfig()
PREP = PreprocessConfig(size=64, slice_stride=2, max_slices_per_plane=8, shard_frames=32)
RAY = EngineConfig(kind="ray", items_per_task=4)


@dataclass
class Run:
    name: str
    ingest: float
    preprocess: float
    embed: float
    items: int
    frames: int
    stats: dict[str, dict[str, float]]  # RayEngine.stats per stage; empty on the local engine

    @property
    def items_per_s(self) -> float:
        return self.items / (self.ingest + self.preprocess)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.embed

    def _after_first(self, stage: str) -> float:
        return self.stats[stage]["seconds"] - self.stats[stage]["first_result_s"]

    @property
    def steady_item_s(self) -> tuple[float, float]:
        """(ingest, preprocess) seconds per item after each stage's first result (its first task's items)."""
        rest = max(1, self.items - RAY.items_per_task)
        return self._after_first("ingest") / rest, self._after_first("preprocess") / rest

    @property
    def steady_frame_s(self) -> float:
        """Embed seconds per frame after the first shard (Ray Data may hand shards over in bursts: a lower bound)."""
        return self._after_first("embed") / max(1, self.frames - PREP.shard_frames)

    @property
    def actor_frame_s(self) -> float:
        """Seconds an actor's encoder spent per frame (its forward passes only, on the CPUs it holds)."""
        return self.stats["embed"]["actor_s"] / self.frames


def _timed(engine: EngineConfig, stats: dict, stage):
    """(what `stage(engine)` returns, its seconds); the engine's stats, if it keeps any, go into `stats`."""
    tic = time.perf_counter()
    with open_engine(engine) as e:
        out = stage(e)
        stats.update(getattr(e, "stats", {}))
    return out, time.perf_counter() - tic


def pipeline(work: Path, corpus: Path, encoder: Path, engine: EngineConfig, workers: int) -> Run:
    """ingest (cold cache) -> preprocess -> embed under `work`, each stage on an engine of its own, timed."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = IngestConfig(sources=(SourceConfig(path=str(corpus), dataset="bench"),), out=str(work / "manifest.parquet"),
                       quarantine=str(work / "q.csv"), cache_dir=str(work / "cache"), workers=workers)  # fmt: skip
    engine = replace(engine, journal_dir=str(work / "journal"))
    prep = replace(PREP, out=str(work / "frames"), workers=workers)
    embed_cfg = EmbedConfig(encoder=str(encoder), model=str(work / "retrieval.pt"), out=str(work / "emb"),
                            batch_size=64, workers=1)  # fmt: skip
    stats: dict = {}
    (manifest, _), t_ingest = _timed(engine, stats, lambda e: ingest(cfg, READ, SALT, e.map_items))
    (frames, _), t_prep = _timed(engine, stats, lambda e: preprocess(manifest, prep, READ, e.map_items))
    splits = make_splits(manifest, SplitConfig())
    _, t_embed = _timed(engine, stats, lambda e: embed_store(embed_cfg, ReadoutConfig(), Path(prep.out), manifest,
                                                             splits, prep, READ, e))  # fmt: skip
    return Run("", t_ingest, t_prep, t_embed, len(manifest), len(frames), stats)


def best_of(runs: int, name: str, fn) -> Run:
    results = [fn() for _ in range(runs)]
    return dataclasses.replace(min(results, key=lambda r: r.ingest + r.preprocess + r.embed), name=name)


def driver_ceiling(work: Path) -> float:
    """Items/s of preprocess's driver alone (shards written in order, the frames table built) on results computed
    beforehand: the rate no number of nodes can raise, since one driver writes every shard."""
    manifest = ingest(IngestConfig(sources=(SourceConfig(path=str(work / "corpus"), dataset="bench"),),
                                   out=str(work / "m.parquet"), quarantine=str(work / "q.csv"),
                                   cache_dir=str(work / "ceiling-cache"), workers=2), READ, SALT)[0]  # fmt: skip
    results: list = []

    def record(fn, items, workers, desc, keys=None):
        results.extend(parallel_map(fn, items, workers, desc))
        return iter(results)

    def replay(fn, items, workers, desc, keys=None):
        return iter(results)

    preprocess(manifest, replace(PREP, out=str(work / "ceiling")), READ, record)
    tic = time.perf_counter()
    preprocess(manifest, replace(PREP, out=str(work / "ceiling")), READ, replay)
    return len(manifest) / (time.perf_counter() - tic)


def connect_cost(address: str) -> float:
    """Seconds of a driver's `ray.init` to a running cluster, the m3ret package uploaded as the engine does."""
    tic = time.perf_counter()
    ray.init(address=address, runtime_env={"py_modules": [str(PACKAGE)], "excludes": ["__pycache__"]})
    seconds = time.perf_counter() - tic
    ray.shutdown()
    return seconds


def local_ray_cost() -> float:
    """Seconds of `engine.ray_address: ""`'s own Ray: started (2 CPUs) and stopped, nothing run on it."""
    (_RAY_ROOT / "local").mkdir(exist_ok=True)
    os.environ["RAY_TMPDIR"] = str(_RAY_ROOT / "local")
    tic = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    ray.shutdown()
    del os.environ["RAY_TMPDIR"]
    return time.perf_counter() - tic


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1, help="corpus size multiplier (default 1: 44 items)")
    parser.add_argument("--runs", type=int, default=2, help="runs per configuration; the fastest is kept")
    args = parser.parse_args(argv)
    print(f"$ python benchmarks/scale_out.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(machine_facts())
    print(f"ray {ray.__version__}, torch {torch.__version__}\n")
    root = Path(tempfile.mkdtemp(prefix="m3ret-scale-out-"))
    try:
        counts = {f: getattr(BASE, f) * args.scale for f in ("ct_series", "cr_files", "nifti_volumes", "videos")}
        build_corpus(root / "corpus", dataclasses.replace(BASE, **counts))
        report(root, write_encoder(root / "encoder.pt", size=PREP.size), args.runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(_RAY_ROOT, ignore_errors=True)


def report(root: Path, encoder: Path, runs: int) -> None:
    corpus, work = root / "corpus", root / "work"
    rows = [best_of(runs, f"local, {w} worker{'s' * (w > 1)}",
                    lambda w=w: pipeline(work, corpus, encoder, EngineConfig(), w)) for w in (1, 2)]  # fmt: skip
    starts: dict[str, float] = {}
    for nodes in (1, 2):
        cluster = RayCluster(_RAY_ROOT, worker_nodes=0)  # one folder, one token: the driver's
        try:
            tic = time.perf_counter()
            cluster.start()
            starts.setdefault("ray start --head (1 CPU)", time.perf_counter() - tic)
            if nodes == 2:
                tic = time.perf_counter()
                cluster.add_worker_node()
                starts["ray start --address (a worker node, 1 CPU)"] = time.perf_counter() - tic
            else:
                starts["a driver connects (ray.init, m3ret uploaded as py_modules)"] = connect_cost(cluster.address)
            engine = replace(RAY, ray_address=cluster.address)
            rows.append(best_of(runs, f"ray, {nodes} node{'s' * (nodes > 1)} x 1 CPU",
                                lambda engine=engine: pipeline(work, corpus, encoder, engine, 2)))  # fmt: skip
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.stop()
    starts['a Ray started for the run (ray_address "", 2 CPUs): init + shutdown'] = local_ray_cost()
    print_tables(rows, starts, driver_ceiling(root))


def print_tables(rows: list[Run], starts: dict[str, float], ceiling: float) -> None:
    base = rows[1]
    print(f"corpus: {base.items} items -> {base.frames} frames ({PREP.size} px); fastest of the runs\n")
    print("| engine | ingest s | preprocess s | embed s | items/s (ingest + preprocess) | x local 2 | frames/s (embed) "
          "| x local 2 |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        items, frames = r.items_per_s / base.items_per_s, r.frames_per_s / base.frames_per_s
        print(f"| {r.name} | {r.ingest:.1f} | {r.preprocess:.1f} | {r.embed:.1f} | {r.items_per_s:.1f} | {items:.2f} "
              f"| {r.frames_per_s:.1f} | {frames:.2f} |")  # fmt: skip
    ray_rows = [r for r in rows if r.stats]
    print("\nRay's fixed start-up cost (seconds):\n\n| step | s |\n| --- | ---: |")
    for step, seconds in starts.items():
        print(f"| {step} | {seconds:.1f} |")
    for r in ray_rows:
        for stage in ("ingest", "preprocess", "embed"):
            print(f"| {r.name}: {stage} to its first result | {r.stats[stage]['first_result_s']:.1f} |")
    print("\nSteady state on Ray (each stage after its first result):\n")
    print("| engine | ingest ms/item | preprocess ms/item | items/s | embed frames/s | actor ms/frame (encoder) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in ray_rows:
        ingest_s, prep_s = r.steady_item_s
        print(f"| {r.name} | {ingest_s * 1e3:.1f} | {prep_s * 1e3:.1f} | {1 / (ingest_s + prep_s):.1f} "
              f"| {1 / r.steady_frame_s:.1f} | {r.actor_frame_s * 1e3:.1f} |")  # fmt: skip
    one, local1 = ray_rows[0], rows[0]
    per_item, per_frame = sum(one.steady_item_s), one.actor_frame_s
    local_item, local_frame = (local1.ingest + local1.preprocess) / local1.items, local1.embed / local1.frames
    print(f"\nPer-item cost on 1 CPU (the 1-node run): decode {per_item * 1e3:.0f} ms per item in the steady state "
          f"(local, 1 process, start-up included: {local_item * 1e3:.0f} ms), embed {per_frame * 1e3:.1f} ms per "
          f"frame in the actor's encoder (local, 1 process, all included: {local_frame * 1e3:.1f} ms). The driver "
          "alone (shards written, table built): "
          f"{ceiling:.0f} items/s, the ceiling of any cluster.\n")  # fmt: skip
    print("| CPUs per added node | + items/s per node (decode) | nodes to reach the driver's ceiling "
          "| + frames/s per node (CPU embed) |\n| ---: | ---: | ---: | ---: |")  # fmt: skip
    for cpus in (1, 4, 16, 64):
        gain = cpus / per_item
        print(f"| {cpus} | {gain:.1f} | {max(1, round(ceiling / gain))} | {cpus / per_frame:.0f} |")
    print(f"\nat the end: {_load()}")


if __name__ == "__main__":
    main()
