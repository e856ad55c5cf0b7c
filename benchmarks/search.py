"""Search speed and quality of the Milvus index: latency p50/p99, recall@10 and build rows/s per index type and size.

For each collection size (default 10k and 100k vectors) it makes clustered synthetic embeddings: a Gaussian mixture on
the unit sphere (`--clusters` centres, uneven cluster sizes, each point = centre + isotropic noise, renormalised; a
point's cosine to its centre is about 0.75), not uniform noise, which has no neighbourhood structure for an ANN index
to exploit and would make every index look worse than on real embeddings. Each cluster gets one modality, so a
modality filter keeps whole neighbourhoods, as it does for real image embeddings.

The rows go through the project's code path: `index_table` (m3ret.index.rows) makes the scalar fields,
`MilvusIndex.ensure_collection` + `write` (upsert, flush) stores them in a fresh Milvus Lite file, once per size
(as FLAT). Then each index type (FLAT, IVF_FLAT, IVF_SQ8, HNSW, with IndexConfig's default parameters) is built on
that same collection (release, drop index, `create_index` with `schema.index_params`, wait until every row is
indexed, load), so build time = the shared insert + that type's index build. Queries are fresh points of the same
mixture (not in the collection). Each query is a single-vector `MilvusIndex.search(q, 10)` returning every scalar
field (what the service asks for); after warm-up searches, p50/p99 are over `--queries` searches, and recall@10 is
against exact top-10 by numpy brute force on the same vectors (same ranking rule: inner product of unit vectors).
The filtered search adds `SearchFilter(modality=(<the query's own modality>,))` (about a quarter of the rows), and
its recall is against the exact top-10 among those rows. A numpy brute-force single query is the latency
reference (`x numpy`).

    /root/.cache/m3ret-bootstrap/bin/python benchmarks/search.py [--quick] [--sizes 10000 100000] [--dim 192]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pymilvus

from m3ret.config import IndexConfig, replace
from m3ret.index.filters import SearchFilter
from m3ret.index.milvus_index import MilvusIndex
from m3ret.index.rows import index_table
from m3ret.index.schema import SCALAR_FIELDS, VECTOR_FIELD, index_params

INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW")
MODALITIES = ("xray", "mri", "ultrasound", "pathology")
VERSION = "bench"
K = 10
# noise norm relative to the unit centre: cosine to the centre is about 1 / sqrt(1 + NOISE**2) = 0.75
NOISE = 0.9


@dataclass(frozen=True)
class Row:
    n: int
    dim: int
    index_type: str
    insert_s: float
    index_s: float
    p50_ms: float
    p99_ms: float
    recall: float
    ids_only_p50_ms: float
    filtered_p50_ms: float
    filtered_p99_ms: float
    filtered_recall: float
    numpy_p50_ms: float

    @property
    def build_rows_per_s(self) -> float:
        return self.n / (self.insert_s + self.index_s)


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
    sims = q @ vectors.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return [set(ids[row].tolist()) for row in top]


def numpy_p50(q: np.ndarray, vectors: np.ndarray, k: int) -> float:
    """Median seconds of a single-query numpy brute-force top-k over `vectors`."""
    times = []
    for vec in q:
        start = time.perf_counter()
        sims = vectors @ vec
        np.argpartition(-sims, k - 1)[:k]
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ------------------------------------------------------------------------------------------------ Milvus
def build_index(index: MilvusIndex, name: str) -> float:
    """Rebuild `name`'s vector index as `index.cfg` says and load it; seconds until every row is indexed and loaded."""
    client = index.client
    start = time.perf_counter()
    client.release_collection(name)
    client.drop_index(name, VECTOR_FIELD)
    client.create_index(name, index_params(client, index.cfg))
    while True:
        state = client.describe_index(name, VECTOR_FIELD)
        if state.get("state") == "Finished" and not state.get("pending_index_rows"):
            break
        time.sleep(0.05)
    client.load_collection(name)
    return time.perf_counter() - start


def timed_searches(
    index: MilvusIndex,
    name: str,
    q: np.ndarray,
    wheres: list[SearchFilter | None],
    fields: tuple[str, ...] = SCALAR_FIELDS,
) -> tuple[np.ndarray, list[set[int]]]:
    """Seconds of each single-vector search [Q] (query i filtered by wheres[i]) and the returned ids per query."""
    times, found = [], []
    for vec, where in zip(q, wheres, strict=True):
        start = time.perf_counter()
        hits = index.search(vec[None], K, where=where, collection=name, fields=fields)[0]
        times.append(time.perf_counter() - start)
        found.append({h.id for h in hits})
    return np.asarray(times), found


def recall(found: list[set[int]], truth: list[set[int]]) -> float:
    return float(np.mean([len(f & t) / len(t) for f, t in zip(found, truth, strict=True)]))


def bench_size(n: int, args: argparse.Namespace, root: Path) -> list[Row]:
    centres, weights = mixture_model(args.clusters, args.dim)
    rows_df, vectors = gallery(centres, weights, n)
    q, q_clusters = sample(centres, weights, args.queries, seed=2)  # fresh points of the mixture, not in the collection
    ids = rows_df["id"].to_numpy()
    truth = exact_topk(q, vectors, ids, K)
    # the filtered search asks for the query's own modality, as a user searching MRI with an MRI image does
    q_modality = np.asarray([MODALITIES[c % len(MODALITIES)] for c in q_clusters])
    own = [SearchFilter(modality=(m,)) for m in q_modality]
    truth_own: list[set[int]] = [set()] * len(q)
    row_modality = rows_df["modality"].to_numpy()
    for m in MODALITIES:
        asking, rows = np.flatnonzero(q_modality == m), row_modality == m
        for i, found in zip(asking, exact_topk(q[asking], vectors[rows], ids[rows], K), strict=True):
            truth_own[i] = found
    none: list[SearchFilter | None] = [None] * len(q)
    np_p50 = numpy_p50(q, vectors, K)

    cfg = IndexConfig(uri=str(root / f"search_{n}.db"), index_type="FLAT")
    base = MilvusIndex(cfg)
    out = []
    try:
        name = base.ensure_collection(VERSION, args.dim)
        start = time.perf_counter()
        base.write(rows_df, vectors, collection=name)
        insert_s = time.perf_counter() - start
        print(f"  {n} rows: insert (upsert + flush) {insert_s:.1f} s", flush=True)
        for index_type in INDEX_TYPES:
            index = MilvusIndex(replace(cfg, index_type=index_type), client=base.client)
            index_s = build_index(index, name)
            warm = q[: args.warmup]
            timed_searches(index, name, warm, none[: len(warm)])
            timed_searches(index, name, warm, own[: len(warm)])
            plain_t, plain_ids = timed_searches(index, name, q, none)
            filt_t, filt_ids = timed_searches(index, name, q, own)
            bare_t, _ = timed_searches(index, name, q, none, fields=())
            row = Row(
                n,
                args.dim,
                index_type,
                insert_s,
                index_s,
                float(np.percentile(plain_t, 50) * 1e3),
                float(np.percentile(plain_t, 99) * 1e3),
                recall(plain_ids, truth),
                float(np.percentile(bare_t, 50) * 1e3),
                float(np.percentile(filt_t, 50) * 1e3),
                float(np.percentile(filt_t, 99) * 1e3),
                recall(filt_ids, truth_own),
                np_p50 * 1e3,
            )
            out.append(row)
            print(
                f"  {n} {index_type:<8} index {index_s:6.1f} s  p50 {row.p50_ms:6.2f} ms  recall {row.recall:.3f}",
                flush=True,
            )
    finally:
        base.close()
    return out


# ---------------------------------------------------------------------------------------------- printing
def table(rows: list[Row]) -> str:
    lines = [
        "| vectors | dim | index | insert s | index s | build rows/s | p50 ms | p99 ms | x numpy p50 | recall@10 "
        "| ids-only p50 ms | filtered p50 ms | filtered p99 ms | filtered recall@10 |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.n} | {r.dim} | {r.index_type} | {r.insert_s:.1f} | {r.index_s:.1f} | {r.build_rows_per_s:.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.p50_ms / r.numpy_p50_ms:.1f} | {r.recall:.3f} "
            f"| {r.ids_only_p50_ms:.2f} "
            f"| {r.filtered_p50_ms:.2f} | {r.filtered_p99_ms:.2f} | {r.filtered_recall:.3f} |"
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
    args = parser.parse_args(argv)
    sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000])
    args.queries = args.queries or (50 if args.quick else 200)
    cfg = IndexConfig()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load}; pymilvus {pymilvus.__version__} "
        f"(Milvus Lite); metric {cfg.metric}; HNSW M={cfg.hnsw_m} efConstruction={cfg.hnsw_ef_construction} "
        f"ef={cfg.hnsw_ef}; IVF nlist={cfg.ivf_nlist} nprobe={cfg.ivf_nprobe}; {args.queries} queries, k={K}; "
        f"vectors: {args.clusters}-component Gaussian mixture on the sphere (cosine to centre ~0.75), not uniform"
    )
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="m3ret-search-bench-") as tmp:
        for n in sizes:
            rows += bench_size(n, args, Path(tmp))
    print()
    print(table(rows))
    print(
        "\n- build rows/s = vectors / (insert + this type's index build); insert (MilvusIndex.write: upsert in "
        f"{cfg.insert_batch}-row batches + flush) is measured once per size and shared by the types.\n"
        "- latency is one `MilvusIndex.search` call (one query vector, all scalar fields returned) through the "
        "embedded Milvus Lite server's gRPC; x numpy: against a single-query numpy brute force top-10; ids-only: the "
        "same search returning no scalar fields.\n"
        "- filtered: `modality == <the query's own modality>` (~1/4 of rows each); its recall is against the exact "
        "top-10 among the rows of that modality."
    )
    print(f"\ntotal {time.perf_counter() - started:.0f} s; at the end: load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
