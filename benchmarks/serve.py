"""Throughput and latency of POST /search on a running retrieval service, at several client concurrencies.

    M3RET_TOKEN=$(m3ret-serving token create bench) \
    python benchmarks/serve.py http://127.0.0.1:3000 data/demo/some_image.png [--requests 48] [--concurrency 1 4 16]

Prints a markdown table: requests/s, client-side p50/p99 latency, the service's mean step times (`timing_ms`), the
share of a request spent outside the encoder step, and how many requests shared one forward pass (BentoML's
adaptive batch size histogram for the `encode` API, read from /metrics before and after each level). The encode
step includes waiting for the batch to form, so "outside encode" is a lower bound on time outside the forward pass.
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

STEPS = ("decode", "encode", "search")
_BATCH = re.compile(r'adaptive_batch_size_(sum|count)\{[^}]*method_name="encode"[^}]*\} ([0-9.e+-]+)')


def batch_totals(client: httpx.Client, url: str) -> tuple[float, float]:
    """(sum, count) of the encode API's adaptive batch size histogram, summed over label sets."""
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in _BATCH.findall(client.get(f"{url}/metrics").text):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


def run_level(url: str, file: Path, k: int, concurrency: int, n_requests: int, token: str) -> dict[str, float]:
    """`n_requests` searches, `concurrency` in flight at a time, with bearer `token`; latencies in ms."""
    payload = file.read_bytes()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=600, limits=limits, headers=headers) as client:

        def one(_: int) -> tuple[float, dict[str, float]]:
            tic = time.perf_counter()
            response = client.post(f"{url}/search", files={"file": (file.name, payload)}, data={"k": str(k)})
            latency = (time.perf_counter() - tic) * 1000
            response.raise_for_status()
            return latency, response.json()["timing_ms"]

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(concurrency)))  # warm-up: connections, first batches
            batch_before = batch_totals(client, url)
            tic = time.perf_counter()
            results = list(pool.map(one, range(n_requests)))
            wall = time.perf_counter() - tic
            batch_after = batch_totals(client, url)
    latencies = sorted(r[0] for r in results)
    steps = {step: statistics.fmean(r[1][step] for r in results) for step in STEPS}
    mean_latency = statistics.fmean(latencies)
    batches = batch_after[1] - batch_before[1]
    return {
        "concurrency": concurrency,
        "requests": n_requests,
        "rps": n_requests / wall,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        **steps,
        "outside_encode": 1.0 - steps["encode"] / mean_latency,
        "per_batch": (batch_after[0] - batch_before[0]) / batches if batches else float("nan"),
    }


def table(rows: list[dict[str, float]]) -> str:
    head = (
        "| concurrency | requests | req/s | p50 ms | p99 ms | decode ms | encode ms | search ms "
        "| outside encode | requests per forward pass |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['concurrency']:.0f} | {r['requests']:.0f} | {r['rps']:.2f} | {r['p50']:.0f} | {r['p99']:.0f} "
            f"| {r['decode']:.1f} | {r['encode']:.1f} | {r['search']:.1f} "
            f"| {r['outside_encode']:.0%} | {r['per_batch']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="service base URL, e.g. http://127.0.0.1:3000")
    parser.add_argument("file", type=Path, help="the query file sent with every request")
    parser.add_argument("--requests", type=int, default=48, help="timed requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    token = os.environ.get("M3RET_TOKEN", "")
    if not token:
        parser.error("set M3RET_TOKEN to a bearer token of the service (m3ret-serving token create NAME)")
    url = args.url.rstrip("/")
    health = httpx.get(f"{url}/healthz", timeout=30).json()
    print(f"service {url}: model {health['model_version']}, {health['collection']} ({health['rows']} rows)")
    print(f"query {args.file.name}, k={args.k}\n")
    rows = [run_level(url, args.file, args.k, c, args.requests, token) for c in args.concurrency]
    print(table(rows))


if __name__ == "__main__":
    main()
