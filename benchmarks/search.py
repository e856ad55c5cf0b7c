"""Search speed and quality of the Milvus index on Milvus Lite and a Milvus server, against exact numpy search:
latency p50/p99, recall@10 and build time per backend, index type and size.

For each collection size (default 10k and 100k vectors) it makes clustered synthetic embeddings: a Gaussian mixture on
the unit sphere (`--clusters` centres, uneven cluster sizes, each point = centre + isotropic noise, renormalised; a
point's cosine to its centre is about 0.75), not uniform noise, which has no neighbourhood structure for an ANN index
to exploit and would make every index look worse than on real embeddings. Each cluster gets one modality, so a
modality filter keeps whole neighbourhoods, as it does for real image embeddings.

Exact search is numpy in this process: one query's `vectors @ q` and an argpartition top-10 over the vectors in
memory (`numpy` rows; filtered: over the query's modality's rows, sliced beforehand), its BLAS on one thread or on
every core, whichever is faster at that size. Every latency is also given as
a ratio against that numpy p50 (`x numpy`), measured in the same process on the same vectors, because these machines
are noisy.

Each backend (`--backends`): `lite`, a fresh Milvus Lite file; `server`, a Milvus server (`--server URI`, or else a
Milvus 2.3.5 standalone started here on free 127.0.0.1 ports by the launcher the tests use,
tests/index/milvus_standalone.py, and stopped at the end). The rows go through the project's code path:
`index_table` (m3ret.index.rows) makes the scalar fields, `MilvusIndex.ensure_collection` + `write` (upsert in
`insert_batch` rows, flush) stores them once per size and backend (as FLAT), and `publish` puts the alias on them.
Then each index type (`--index-types`, IndexConfig's default parameters) is built on that same collection (release,
drop index, `create_index` with `schema.index_params`, `MilvusIndex.wait_until_indexed`, load), so build time = the
shared insert + that type's index build. Queries are fresh points of the same mixture (not in the collection). Each
query is a single-vector `MilvusIndex.search(q, 10)`; after warm-up searches, p50/p99 are over `--queries` searches:
by collection name with every scalar field returned, through the alias with the fields the service asks for
(`m3ret.index.query.QUERY_FIELDS`; the alias is looked up once per client, as in the service), with a filter
`SearchFilter(modality=(<the query's own modality>,))` (about a quarter of the rows), and with no fields (ids only).
recall@10 is against the exact top-10 (same ranking rule: inner product of unit vectors), the filtered one against
the exact top-10 among that modality's rows.

Lite builds slowly: a size whose Lite run is estimated (linearly from the previous size's) at more than
`--lite-budget-s` is skipped for Lite, and the output says so.

    python benchmarks/search.py [--quick] [--sizes 10000 100000 1000000] [--backends lite server] \
        [--index-types FLAT HNSW] [--hnsw-ef 128 512] [--server http://127.0.0.1:19530] \
        [--out benchmarks/results/search/NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

# before m3ret.index.query's import of decord, which dlopens every nvidia/*/lib/*.so torch installed with RTLD_GLOBAL,
# libnvblas among them: Milvus Lite's faiss, loaded after it, then calls nvblas's sgemm_ with no CPU BLAS behind it
# and an IVF build segfaults
import faiss  # noqa: F401
import numpy as np
import pandas as pd
import pymilvus

from m3ret.config import IndexConfig, replace
from m3ret.index.filters import SearchFilter
from m3ret.index.milvus_index import MilvusIndex
from m3ret.index.query import QUERY_FIELDS
from m3ret.index.rows import index_table
from m3ret.index.schema import SCALAR_FIELDS, VECTOR_FIELD, index_params

INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW")
BACKENDS = ("lite", "server")
MODALITIES = ("xray", "mri", "ultrasound", "pathology")
VERSION = "bench"
K = 10
# noise norm relative to the unit centre: cosine to the centre is about 1 / sqrt(1 + NOISE**2) = 0.75
NOISE = 0.9
# exact top-k is computed for this many queries at a time ([chunk, n] similarities in memory)
EXACT_CHUNK = 16


@dataclass(frozen=True)
class Row:
    backend: str
    n: int
    dim: int
    index_type: str
    insert_s: float | None
    index_s: float | None
    p50_ms: float
    p99_ms: float
    recall: float
    alias_p50_ms: float | None
    ids_only_p50_ms: float | None
    filtered_p50_ms: float
    filtered_p99_ms: float
    filtered_recall: float
    numpy_p50_ms: float

    @property
    def build_s(self) -> float | None:
        return None if self.insert_s is None else self.insert_s + self.index_s


# ------------------------------------------------------------------------------------------------ vectors
def mixture_model(clusters: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit centres float64 [clusters, dim] and uneven cluster weights [clusters] (as real classes are), fixed seed."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return centres, rng.dirichlet(np.full(clusters, 0.5))


def sample(centres: np.ndarray, weights: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 [n, dim] unit vectors (centre + isotropic noise, renormalised) and each one's cluster int64 [n]."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(centres), size=n, p=weights)
    points = centres[labels] + rng.standard_normal((n, centres.shape[1])) * (NOISE / np.sqrt(centres.shape[1]))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32), labels


def gallery(centres: np.ndarray, weights: np.ndarray, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows in the index schema (via `index_table`, one frame per item) and their vectors [n, dim]."""
    vectors, labels = sample(centres, weights, n, seed=1)
    items = [f"item{i:07d}" for i in range(n)]
    facts = pd.DataFrame(
        {
            "item_id": items,
            "dataset": "synthetic",
            "modality": [MODALITIES[c % len(MODALITIES)] for c in labels],
            "kind": "image",
            "label": labels.astype(str),
            "path": [f"/data/synthetic/{item}.png" for item in items],
            "series_hash": items,
            "split": "gallery",
            "group": items,
            "plane": "",
            "volume_index": 0,
            "frame_index": 0,
        }
    )
    return index_table(facts, "frame", VERSION), vectors


def exact_topk(q: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> list[set[int]]:
    """Row ids of the exact top-k by inner product for each query."""
    found = []
    for start in range(0, len(q), EXACT_CHUNK):
        sims = q[start : start + EXACT_CHUNK] @ vectors.T
        found += [set(ids[row].tolist()) for row in np.argpartition(-sims, k - 1, axis=1)[:, :k]]
    return found


def numpy_times(q: np.ndarray, galleries: list[np.ndarray], k: int) -> np.ndarray:
    """Seconds of each single-query numpy brute-force top-k, query i over galleries[i] [Q]."""
    times = []
    for vec, vectors in zip(q, galleries, strict=True):
        start = time.perf_counter()
        sims = vectors @ vec
        np.argpartition(-sims, k - 1)[:k]
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def fastest_numpy(q: np.ndarray, plain: list[np.ndarray], filtered: list[np.ndarray], warmup: int):
    """(threads, plain times [Q], filtered times [Q]) of numpy's search with its BLAS on one thread and on every
    core, whichever has the lower plain p50: on a shared machine one thread is often faster (measured 3.5 ms
    against 7.1 ms at 100k x 192), and a weak baseline would flatter every ratio."""
    from threadpoolctl import threadpool_limits

    runs = []
    for threads in (1, os.cpu_count()):
        with threadpool_limits(threads):
            numpy_times(q[:warmup], plain[:warmup], K)
            runs.append((threads, numpy_times(q, plain, K), numpy_times(q, filtered, K)))
    return min(runs, key=lambda run: float(np.median(run[1])))


@dataclass
class Workload:
    """One size's gallery, queries and exact answers, shared by every backend."""

    rows: pd.DataFrame
    vectors: np.ndarray
    q: np.ndarray
    own: list[SearchFilter]
    truth: list[set[int]]
    truth_own: list[set[int]]
    numpy_threads: int
    numpy_plain: np.ndarray
    numpy_filtered: np.ndarray


def workload(n: int, args: argparse.Namespace) -> Workload:
    centres, weights = mixture_model(args.clusters, args.dim)
    rows, vectors = gallery(centres, weights, n)
    q, q_clusters = sample(centres, weights, args.queries, seed=2)  # fresh points of the mixture, not in the collection
    ids = rows["id"].to_numpy()
    # the filtered search asks for the query's own modality, as a user searching MRI with an MRI image does
    q_modality = np.asarray([MODALITIES[c % len(MODALITIES)] for c in q_clusters])
    row_modality = rows["modality"].to_numpy()
    per_modality = {m: np.ascontiguousarray(vectors[row_modality == m]) for m in MODALITIES}
    truth_own: list[set[int]] = [set()] * len(q)
    for m in MODALITIES:
        asking = np.flatnonzero(q_modality == m)
        for i, found in zip(asking, exact_topk(q[asking], per_modality[m], ids[row_modality == m], K), strict=True):
            truth_own[i] = found
    timings = fastest_numpy(q, [vectors] * len(q), [per_modality[m] for m in q_modality], args.warmup)
    return Workload(
        rows,
        vectors,
        q,
        [SearchFilter(modality=(m,)) for m in q_modality],
        exact_topk(q, vectors, ids, K),
        truth_own,
        *timings,
    )


def numpy_row(n: int, dim: int, w: Workload) -> Row:
    p50 = float(np.percentile(w.numpy_plain, 50) * 1e3)
    return Row(
        f"numpy exact ({w.numpy_threads} thread{'s' if w.numpy_threads > 1 else ''})",
        n,
        dim,
        "-",
        None,
        None,
        p50,
        float(np.percentile(w.numpy_plain, 99) * 1e3),
        1.0,
        None,
        None,
        float(np.percentile(w.numpy_filtered, 50) * 1e3),
        float(np.percentile(w.numpy_filtered, 99) * 1e3),
        1.0,
        p50,
    )


# ------------------------------------------------------------------------------------------------ Milvus
def build_index(index: MilvusIndex, name: str) -> float:
    """Rebuild `name`'s vector index as `index.cfg` says and load it; seconds until every row is indexed and loaded."""
    client = index.client
    start = time.perf_counter()
    client.release_collection(name)
    client.drop_index(name, VECTOR_FIELD)
    client.create_index(name, index_params(client, index.cfg))
    index.wait_until_indexed(name)
    client.load_collection(name)
    return time.perf_counter() - start


def timed_searches(
    index: MilvusIndex,
    name: str | None,
    q: np.ndarray,
    wheres: list[SearchFilter | None],
    fields: tuple[str, ...] = SCALAR_FIELDS,
) -> tuple[np.ndarray, list[set[int]]]:
    """Seconds of each single-vector search [Q] (query i filtered by wheres[i]; through the alias when `name` is
    None) and the returned ids per query."""
    times, found = [], []
    for vec, where in zip(q, wheres, strict=True):
        start = time.perf_counter()
        hits = index.search(vec[None], K, where=where, collection=name, fields=fields)[0]
        times.append(time.perf_counter() - start)
        found.append({h.id for h in hits})
    return np.asarray(times), found


def recall(found: list[set[int]], truth: list[set[int]]) -> float:
    return float(np.mean([len(f & t) / len(t) for f, t in zip(found, truth, strict=True)]))


def bench_backend(backend: str, cfg: IndexConfig, n: int, args: argparse.Namespace, w: Workload, log) -> list[Row]:
    """Every index type of `args.index_types` on one collection of `cfg`'s backend, dropped afterwards."""
    base = MilvusIndex(replace(cfg, index_type="FLAT"))
    out = []
    name = base.collection_name(VERSION)
    try:
        base.drop_collection(name)
        base.ensure_collection(VERSION, args.dim)
        start = time.perf_counter()
        base.write(w.rows, w.vectors, collection=name)
        insert_s = time.perf_counter() - start
        base.publish(name)
        log(f"  {backend} {n} rows: insert (upsert + flush) {insert_s:.1f} s")
        for index_type in args.index_types:
            index_s = build_index(MilvusIndex(replace(cfg, index_type=index_type), client=base.client), name)
            # HNSW's ef is a search parameter: one build, a row per ef
            efs = args.hnsw_ef if index_type == "HNSW" else [cfg.hnsw_ef]
            for ef in efs:
                index = MilvusIndex(replace(cfg, index_type=index_type, hnsw_ef=ef), client=base.client)
                label = f"HNSW ef={ef}" if index_type == "HNSW" and len(efs) > 1 else index_type
                row = measure(index, name, w, args, (backend, n, args.dim, label, insert_s, index_s))
                out.append(row)
                log(
                    f"  {backend} {n} {label:<8} index {index_s:6.1f} s  p50 {row.p50_ms:7.2f} ms "
                    f"({row.p50_ms / row.numpy_p50_ms:.1f} x numpy)  recall {row.recall:.3f}"
                )
    finally:
        if base.current() == name:  # a server refuses to drop a collection an alias still names
            base.client.drop_alias(base.cfg.alias)
        base.drop_collection(name)
        base.close()
    return out


def measure(index: MilvusIndex, name: str, w: Workload, args: argparse.Namespace, head: tuple) -> Row:
    """The timed searches of one configuration on the built collection `name`; `head` = the Row's first fields."""
    none: list[SearchFilter | None] = [None] * len(w.q)
    warm = w.q[: args.warmup]
    timed_searches(index, name, warm, none[: len(warm)])
    timed_searches(index, name, warm, w.own[: len(warm)])
    plain_t, plain_ids = timed_searches(index, name, w.q, none)
    alias_t, _ = timed_searches(index, None, w.q, none, fields=QUERY_FIELDS)
    filt_t, filt_ids = timed_searches(index, name, w.q, w.own)
    bare_t, _ = timed_searches(index, name, w.q, none, fields=())
    return Row(
        *head,
        float(np.percentile(plain_t, 50) * 1e3),
        float(np.percentile(plain_t, 99) * 1e3),
        recall(plain_ids, w.truth),
        float(np.percentile(alias_t, 50) * 1e3),
        float(np.percentile(bare_t, 50) * 1e3),
        float(np.percentile(filt_t, 50) * 1e3),
        float(np.percentile(filt_t, 99) * 1e3),
        recall(filt_ids, w.truth_own),
        float(np.percentile(w.numpy_plain, 50) * 1e3),
    )


@contextmanager
def milvus_server(uri: str | None, root: Path) -> Iterator[str]:
    """`uri`, or a Milvus standalone started in `root` by the tests' launcher and stopped on exit."""
    if uri:
        yield uri
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "index"))
    from milvus_standalone import MilvusStandalone

    server = MilvusStandalone(root)
    try:
        yield server.start()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- printing
def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[Row]) -> str:
    lines = [
        "| backend | vectors | dim | index | insert s | index s | build s | p50 ms | p99 ms | x numpy p50 | recall@10 "
        "| alias p50 ms | x numpy | ids-only p50 ms | filtered p50 ms | filtered p99 ms | filtered recall@10 |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        alias_ratio = None if r.alias_p50_ms is None else r.alias_p50_ms / r.numpy_p50_ms
        lines.append(
            f"| {r.backend} | {r.n} | {r.dim} | {r.index_type} | {_cell(r.insert_s, '.1f')} "
            f"| {_cell(r.index_s, '.1f')} | {_cell(r.build_s, '.1f')} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.p50_ms / r.numpy_p50_ms:.2f} | {r.recall:.3f} "
            f"| {_cell(r.alias_p50_ms, '.2f')} | {_cell(alias_ratio, '.2f')} "
            f"| {_cell(r.ids_only_p50_ms, '.2f')} | {r.filtered_p50_ms:.2f} | {r.filtered_p99_ms:.2f} "
            f"| {r.filtered_recall:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k vectors and 50 queries only")
    parser.add_argument("--sizes", type=int, nargs="+", help="collection sizes (default 10000 100000; --quick 10000)")
    parser.add_argument("--dim", type=int, default=192, help="vector dimension (ViT-Ti 192, ViT-S 384)")
    parser.add_argument("--queries", type=int, help="timed single-vector searches (default 200; --quick 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed searches after each index build")
    parser.add_argument("--clusters", type=int, default=64, help="mixture components")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--index-types", nargs="+", choices=INDEX_TYPES, default=list(INDEX_TYPES))
    parser.add_argument("--hnsw-ef", type=int, nargs="+", help="HNSW search ef values (default IndexConfig's)")
    parser.add_argument("--server", help="a running Milvus server's URI (default: start a standalone here)")
    parser.add_argument("--lite-budget-s", type=float, default=900.0, help="skip Lite where estimated longer")
    parser.add_argument("--out", help="also write OUT.md (the command, then this output) and OUT.json")
    args = parser.parse_args(argv)
    args.hnsw_ef = args.hnsw_ef or [IndexConfig().hnsw_ef]
    sizes = sorted(args.sizes or ([10_000] if args.quick else [10_000, 100_000]))
    args.queries = args.queries or (50 if args.quick else 200)
    printed: list[str] = []

    def log(line: str = "") -> None:
        print(line, flush=True)
        printed.append(line)

    # collections and alias of their own, never the project's, should `--server` be a server in use
    cfg = IndexConfig(collection_prefix="m3ret_bench", alias="m3ret_bench_current")
    started = time.perf_counter()
    rows: list[Row] = []
    skipped: list[str] = []
    lite_seconds: tuple[int, float] | None = None  # (size, wall seconds) of the last Lite run
    with tempfile.TemporaryDirectory(prefix="m3ret-search-bench-") as tmp, ExitStack() as stack:
        server_uri = None
        if "server" in args.backends:
            server_uri = stack.enter_context(milvus_server(args.server, Path(tmp) / "server"))
            probe = MilvusIndex(replace(cfg, uri=server_uri))
            server_version = probe.client.get_server_version()
            probe.close()
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        log(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load}; pymilvus "
            f"{pymilvus.__version__}{f', Milvus server {server_version}' if server_uri else ''}; metric {cfg.metric}; "
            f"HNSW M={cfg.hnsw_m} efConstruction={cfg.hnsw_ef_construction} ef={'/'.join(map(str, args.hnsw_ef))}; "
            f"IVF nlist={cfg.ivf_nlist} nprobe={cfg.ivf_nprobe}; {args.queries} queries, k={K}; "
            f"vectors: {args.clusters}-component Gaussian mixture on the sphere (cosine to centre ~0.75), not uniform"
        )
        for n in sizes:
            w = workload(n, args)
            rows.append(numpy_row(n, args.dim, w))
            log(f"  numpy {n}: p50 {rows[-1].p50_ms:.2f} ms, BLAS on {w.numpy_threads} thread(s)")
            for backend in args.backends:
                estimate = lite_seconds[1] * n / lite_seconds[0] if backend == "lite" and lite_seconds else 0.0
                if estimate > args.lite_budget_s:
                    skipped.append(
                        f"Milvus Lite at {n} vectors skipped: estimated {estimate:.0f} s from its {lite_seconds[0]}"
                        f"-vector run ({lite_seconds[1]:.0f} s), over --lite-budget-s {args.lite_budget_s:.0f}"
                    )
                    log(f"  {skipped[-1]}")
                    continue
                backend_started = time.perf_counter()
                uri = server_uri if backend == "server" else str(Path(tmp) / f"search_{n}.db")
                rows += bench_backend(backend, replace(cfg, uri=uri), n, args, w, log)
                if backend == "lite":
                    lite_seconds = (n, time.perf_counter() - backend_started)
    log()
    log(table(rows))
    for line in skipped:
        log(f"\n- {line}.")
    log(
        "\n- build s = insert (MilvusIndex.write: upsert in "
        f"{cfg.insert_batch}-row batches + flush, measured once per size and backend, shared by the types) + this "
        "type's index build until every row is indexed and the collection loaded.\n"
        "- p50/p99: one `MilvusIndex.search` call by collection name (one query vector, every scalar field returned); "
        "x numpy: against the single-query numpy brute force top-10 in this process (the `numpy exact` rows); alias: "
        "the service's call, through the alias (looked up once per client) with the fields the service asks for; "
        "ids-only: by name, no scalar fields.\n"
        "- filtered: `modality == <the query's own modality>` (~1/4 of rows each); its recall is against the exact "
        "top-10 among the rows of that modality; numpy's filtered search runs over that modality's rows, sliced "
        "beforehand."
    )
    log(f"\ntotal {time.perf_counter() - started:.0f} s; at the end: load average {os.getloadavg()[0]:.1f}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        command = "$ " + shlex.join(["python", "benchmarks/search.py", *(argv if argv is not None else sys.argv[1:])])
        out.with_suffix(".md").write_text("```\n" + command + "\n```\n\n" + "\n".join(printed) + "\n")
        record = {
            "command": command[2:],
            "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "sizes": sizes},
            "skipped": skipped,
            "rows": [{**dataclasses.asdict(r), "build_s": r.build_s} for r in rows],
        }
        out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
