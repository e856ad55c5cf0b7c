"""What one Milvus Lite search call costs, and which part of it m3ret's wrapper adds.

    python benchmarks/milvus_call_cost.py [--rows 10000] [--dim 192] [--calls 30]

For a FLAT and an HNSW collection of `--rows` random unit vectors it times, in this process, the raw
`MilvusClient.search` (no output fields, no filter, the collection by name: the floor) and `MilvusIndex.search` with
what the callers ask for: every scalar field or only the hit fields, the level filter or none, through the alias.
Prints a markdown table of ms per call and the ratio to the floor (machines here are noisy: read the ratios).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from m3ret.config import IndexConfig
from m3ret.index.filters import SearchFilter
from m3ret.index.milvus_index import MilvusIndex
from m3ret.index.query import QUERY_FIELDS
from m3ret.index.rows import index_table
from m3ret.index.schema import SCALAR_FIELDS


def _timed(call, calls: int) -> float:
    call()  # warm: the first call loads segments
    tic = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - tic) / calls * 1000


def _rows(index: MilvusIndex, name: str, query: np.ndarray, calls: int) -> list[tuple[str, float]]:
    """(call, ms per call) of the floor and of m3ret's searches on the published collection `name`."""
    series = SearchFilter(level="series")
    params = {"metric_type": "IP", "params": {}}
    raw = _timed(lambda: index.client.search(name, data=[query[0]], limit=10, search_params=params), calls)
    out = [("raw client: no fields, no filter, by name (floor)", raw)]
    cases = {
        "m3ret: every scalar field, level filter, via alias": (SCALAR_FIELDS, series),
        "m3ret: the query's fields (search, service), level filter, via alias": (QUERY_FIELDS, series),
        "m3ret: item_id only, no filter, via alias": (("item_id",), None),
    }
    for label, (fields, where) in cases.items():
        out.append((label, _timed(lambda f=fields, w=where: index.search(query, 10, w, fields=f), calls)))
    out.append(("alias lookup (`current()`, once per search)", _timed(index.current, calls)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.rows, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    n = args.rows
    facts = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(n)], "series_hash": "", "group": [f"g{i}" for i in range(n)],
         "modality": rng.choice(["ct", "mri", "xray"], n), "dataset": "d", "split": "gallery", "label": "l",
         "kind": "image"}
    )  # fmt: skip
    print(f"{args.rows} rows x {args.dim}, k=10, {args.calls} calls each\n")
    print("| index | call | ms per call | x floor |\n| --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for index_type in ("FLAT", "HNSW"):
            index = MilvusIndex(IndexConfig(uri=str(Path(tmp) / f"{index_type}.db"), index_type=index_type))
            try:
                name = index.ensure_collection("bench", args.dim)
                index.write(index_table(facts, "series", "bench"), vectors, collection=name)
                index.publish(name)
                rows = _rows(index, name, vectors[:1], args.calls)
            finally:
                index.close()
            floor = rows[0][1]
            for label, ms in rows:
                print(f"| {index_type} | {label} | {ms:.2f} | {ms / floor:.2f} |")


if __name__ == "__main__":
    main()
