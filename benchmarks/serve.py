"""Throughput and latency of POST /search on a running retrieval service, at several client concurrencies, next to
what the same query costs without the service, measured in this process in the same run.

    M3RET_TOKEN=$(m3ret-serving token create bench) \
    python benchmarks/serve.py http://127.0.0.1:3000 small.jpg big.png [--requests 48] [--concurrency 1 4 16 32]

Run it where the service runs (same BENTOML_HOME, M3RET_MODEL_TAG and params file as `bentoml serve`): the baseline
loads the imported model from the BentoML store, decodes each file with its read/preprocess settings and times
`Encoder.embed` of its frames (the bare forward pass; also called from a second thread, as a thread pool would) and
an exact numpy search of its vector over the embed stage's item vectors (what the index holds at the series level),
and the query preview PNG the answer carries. Speed is reported as ratios against that baseline. A request the
service refuses after reading its upload (k=0) gives the cost of the HTTP handling itself.

For each file, a markdown table: requests shed with 503 + Retry-After (by design, beyond `serve.max_in_flight` or the
encoder's batching budget), answered requests/s, client-side p50/p99 latency of the answered ones, the service's mean
step times (`timing_ms`), how many requests shared one forward pass (BentoML's adaptive batch size histogram for the
`encode` API, read from /metrics before and after each level), p50 over (bare forward + exact search), requests/s
over concurrency 1's, and the CPU time each answered request cost the service's processes (the `bentoml serve` tree
listening on the URL's port: both services' workers, Milvus Lite inside the retrieval worker) and this client. On a
machine the service shares with its clients, cores / (service + client CPU per request) is the most requests/s any
concurrency can reach: the ceiling printed under each table.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil

from m3ret.config import load_params
from m3ret.data.thumbnails import to_png
from m3ret.models.embedding_set import EmbeddingSet
from m3ret.models.query import Query, decode_query
from serving.model_store import imported_settings, load_imported_encoder

STEPS = ("decode", "encode", "search")
_BATCH = re.compile(r'adaptive_batch_size_(sum|count)\{[^}]*method_name="encode"[^}]*\} ([0-9.e+-]+)')
BASELINE_RUNS = 30
WARM_UP = 16  # requests before each level's timed ones, at least


def batch_totals(client: httpx.Client, url: str) -> tuple[float, float]:
    """(sum, count) of the encode API's adaptive batch size histogram, summed over label sets."""
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in _BATCH.findall(client.get(f"{url}/metrics").text):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


def service_processes(port: int) -> list[psutil.Process]:
    """The process tree serving on local `port`: the topmost `bentoml` ancestor of the listener and all its
    descendants."""
    connections = psutil.net_connections("tcp")
    listeners = [c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    if not listeners:
        raise SystemExit(f"nothing on this machine listens on port {port}: run the benchmark where the service runs")
    root = psutil.Process(listeners[0])
    for parent in root.parents():
        if any("bentoml" in part for part in parent.cmdline()):
            root = parent
    return [root, *root.children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds the processes have used so far."""
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def _median_ms(call, runs: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(runs):
        tic = time.perf_counter()
        call()
        times.append((time.perf_counter() - tic) * 1000)
    return statistics.median(times)


def bare_baseline(file: Path, tag: str, gallery: np.ndarray, k: int, thumbnail_size: int) -> dict[str, float]:
    """Median ms of the bare forward pass of `file`'s frames (on this thread, which loaded the model, and from a
    second thread), of an exact top-k search of its vector and of its query preview PNG."""
    read_cfg, preprocess_cfg, _version = imported_settings(tag)
    encoder = load_imported_encoder(tag)
    frames, meta = decode_query(file, read_cfg, preprocess_cfg)
    forward = _median_ms(lambda: encoder.embed(frames), BASELINE_RUNS)
    with ThreadPoolExecutor(1) as other_thread:
        forward_elsewhere = _median_ms(lambda: other_thread.submit(encoder.embed, frames).result(), BASELINE_RUNS)
    query = Query.from_frame_vectors(frames, encoder.embed(frames).numpy(), meta)
    vector = query.vector

    def exact() -> np.ndarray:
        scores = gallery @ vector
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        return top[np.argsort(-scores[top])]

    return {
        "frames": len(frames),
        "forward": forward,
        "forward_elsewhere": forward_elsewhere,
        "exact_search": _median_ms(exact, BASELINE_RUNS),
        "preview": _median_ms(lambda: to_png(query.preview(), thumbnail_size), BASELINE_RUNS),
    }


def refused_ms(url: str, file: Path, token: str) -> float:
    """Median ms of a POST /search with `file` that the service refuses after parsing the upload (k=0: 400): what
    BentoML's request handling, the guards and the multipart upload cost."""
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {token}"}) as client:
        payload = file.read_bytes()

        def refused() -> None:
            response = client.post(f"{url}/search", files={"file": (file.name, payload)}, data={"k": "0"})
            assert response.status_code == 400, response.text

        return _median_ms(refused, BASELINE_RUNS)


def run_level(
    url: str, file: Path, k: int, concurrency: int, n_requests: int, token: str, service: list[psutil.Process]
) -> dict[str, float]:
    """`n_requests` searches, `concurrency` in flight at a time, with bearer `token`; latencies in ms, CPU ms per
    answered request of the `service` processes and of this client."""
    client_process = psutil.Process()
    payload = file.read_bytes()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=600, limits=limits, headers=headers) as client:

        def one(_: int) -> tuple[float, dict[str, float]] | None:
            """(latency, the service's step times), or None for a request shed with 503 + Retry-After."""
            tic = time.perf_counter()
            response = client.post(f"{url}/search", files={"file": (file.name, payload)}, data={"k": str(k)})
            latency = (time.perf_counter() - tic) * 1000
            if response.status_code == 503 and response.headers.get("retry-after"):
                return None
            response.raise_for_status()
            return latency, response.json()["timing_ms"]

        with ThreadPoolExecutor(concurrency) as pool:
            # warm-up: connections, and the encoder's batching dispatcher, whose first dozen calls after a start
            # calibrate it (two of them wait for company on purpose)
            list(pool.map(one, range(max(concurrency, WARM_UP))))
            batch_before = batch_totals(client, url)
            cpu_before = cpu_seconds(service), cpu_seconds([client_process])
            tic = time.perf_counter()
            outcomes = list(pool.map(one, range(n_requests)))
            wall = time.perf_counter() - tic
            cpu_after = cpu_seconds(service), cpu_seconds([client_process])
            batch_after = batch_totals(client, url)
    results = [r for r in outcomes if r is not None]
    if not results:
        raise SystemExit(f"concurrency {concurrency}: every request was shed (503); raise serve.max_in_flight")
    latencies = sorted(r[0] for r in results)
    batches = batch_after[1] - batch_before[1]
    return {
        "concurrency": concurrency,
        "requests": n_requests,
        "shed": n_requests - len(results),
        "rps": len(results) / wall,  # answered requests per second
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        **{step: statistics.fmean(r[1][step] for r in results) for step in STEPS},
        "per_batch": (batch_after[0] - batch_before[0]) / batches if batches else float("nan"),
        "service_cpu": (cpu_after[0] - cpu_before[0]) * 1000 / len(results),
        "client_cpu": (cpu_after[1] - cpu_before[1]) * 1000 / len(results),
    }


def table(rows: list[dict[str, float]], bare: dict[str, float]) -> str:
    floor = bare["forward"] + bare["exact_search"]
    head = (
        "| concurrency | requests | shed (503) | req/s | p50 ms | p99 ms | decode ms | encode ms | search ms "
        "| requests per forward pass | p50 / (bare forward + exact search) | req/s / concurrency 1's "
        "| service CPU ms per request | client CPU ms per request |"
    )
    lines = [head, "|" + "---:|" * 14]
    for r in rows:
        lines.append(
            f"| {r['concurrency']:.0f} | {r['requests']:.0f} | {r['shed']:.0f} | {r['rps']:.2f} | {r['p50']:.0f} "
            f"| {r['p99']:.0f} "
            f"| {r['decode']:.1f} | {r['encode']:.1f} | {r['search']:.1f} | {r['per_batch']:.2f} "
            f"| {r['p50'] / floor:.2f} | {r['rps'] / rows[0]['rps']:.2f} | {r['service_cpu']:.1f} "
            f"| {r['client_cpu']:.1f} |"
        )
    busiest = rows[-1]
    ceiling = (os.cpu_count() or 1) * 1000 / (busiest["service_cpu"] + busiest["client_cpu"])
    lines.append(
        f"\nceiling on this machine: {os.cpu_count()} cores / ({busiest['service_cpu']:.1f} + "
        f"{busiest['client_cpu']:.1f}) CPU ms per request at concurrency {busiest['concurrency']:.0f} = "
        f"{ceiling:.0f} req/s, {ceiling / rows[0]['rps']:.2f}x concurrency 1's"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="service base URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("files", type=Path, nargs="+", help="query files; each is sent alone at every level")
    parser.add_argument("--requests", type=int, default=48, help="timed requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    token = os.environ.get("M3RET_TOKEN", "")
    if not token:
        parser.error("set M3RET_TOKEN to a bearer token of the service (m3ret-serving token create NAME)")
    url = args.url.rstrip("/")
    service = service_processes(httpx.URL(url).port or 80)
    health = httpx.get(f"{url}/healthz", timeout=30).json()
    tag = os.environ.get("M3RET_MODEL_TAG", "m3ret-encoder:latest")
    params = load_params(os.environ.get("M3RET_PARAMS", "params.yaml"))
    version, _items, gallery = EmbeddingSet.load_items(params.embed.out)
    if version != health["model_version"]:
        parser.error(f"{params.embed.out} holds model {version}; the service serves {health['model_version']}")
    print(f"service {url}: model {health['model_version']}, {health['collection']} ({health['rows']} rows)")
    print(f"baseline: {tag} in this process, exact search over {len(gallery)} item vectors; k={args.k}")
    for file in args.files:
        bare = bare_baseline(file, tag, gallery, args.k, params.serve.thumbnail_size)
        refused = refused_ms(url, file, token)
        rows = [run_level(url, file, args.k, c, args.requests, token, service) for c in args.concurrency]
        print(f"\n{file.name} ({file.stat().st_size / 1024:.0f} KB, {bare['frames']} frame(s)): bare forward "
              f"{bare['forward']:.1f} ms (from a second thread {bare['forward_elsewhere']:.1f} ms), exact search "
              f"{bare['exact_search']:.2f} ms, query preview PNG {bare['preview']:.1f} ms; the service refusing it "
              f"after reading the upload (k=0): {refused:.1f} ms\n")  # fmt: skip
        print(table(rows, bare))


if __name__ == "__main__":
    main()
