"""One-off check behind README.md here: the old benchmark path (m3ret/eval/benchmark_folder.py, commit 2eb8444) against
the new one (m3ret/eval/benchmark.py) on the same encoder and params, frame by frame and metric by metric.

    # 1. old code (a checkout of 2eb8444 at /tmp/wt-old): dump its decoded images, and its numbers with and without
    #    the byte-identical copies that ingest leaves out
    cd /tmp/wt-old && PYTHONPATH=/tmp/wt-old python .../compare_paths.py old --params P --out DIR
    # 2. new code: compare the stored frames with the dump pixel by pixel, and its numbers
    cd /work/wt-bench && PYTHONPATH=/work/wt-bench python .../compare_paths.py new --params P --out DIR

Numbers are exact search (`evaluate_vectors`, numpy), so the index's HNSW graph (built in each path's row order) is
out of the comparison; with --milvus the old deduplicated rows also go through a throw-away Milvus Lite collection.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from m3ret.config import load_params
from m3ret.models.encoder import load_encoder

BENCHES = {
    "medbench": Path("/work/shared/data/medbench"),
    "breastmnist": Path("/work/shared/data/medbench/medmnist/breastmnist.npz"),
    "adrenalmnist3d": Path("/work/shared/data/medbench/medmnist/adrenalmnist3d.npz"),
}


def _means(results: dict) -> str:
    return ", ".join(f"{name} {r.mean['mAP@10']:.4f}" for name, r in results.items())


def old(args: argparse.Namespace) -> None:
    from m3ret.eval.benchmark_folder import (
        BenchmarkFolder,
        benchmark_model_vectors,
        evaluate_vectors,
        load_benchmark_folder,
    )

    from m3ret.eval.baselines import raw_pixel_embeddings

    params = load_params(args.params)
    encoder = load_encoder(params.embed.model)
    for name, path in BENCHES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bench = load_benchmark_folder(path, params.preprocess.size, cache_dir=Path(params.evaluate.cache))
        table = bench.table
        np.savez(args.out / f"old-{name}.npz", images=np.asarray(bench.images), path=table["path"].to_numpy(str))
        if path.is_dir():
            # ingest keeps the first row of each content (manifest order) and reports the others as copies
            digests = pd.Series([hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in table["path"]])
            variants = {"all rows": np.ones(len(table), bool), "copies dropped": ~digests.duplicated().to_numpy()}
        else:
            variants = {"all rows": np.ones(len(table), bool)}
        for variant, keep in variants.items():
            sub = BenchmarkFolder(bench.root, table[keep].reset_index(drop=True), np.asarray(bench.images)[keep])
            raw = raw_pixel_embeddings(np.asarray(sub.images))
            vectors = benchmark_model_vectors(encoder, sub, params.readout, raw)
            results = {model: evaluate_vectors(v, sub) for model, v in vectors.items()}
            counts = {
                d: (int(m["n_query"]), int(m["n_gallery"])) for d, m in next(iter(results.values())).per_dataset.items()
            }
            print(f"old {name} [{variant}] {len(sub.table)} items; per dataset (queries, gallery) {counts}")
            print(f"  exact mean mAP@10: {_means(results)}")
            if args.milvus and variant == "copies dropped":
                from m3ret.eval.index_evaluation import collection_version, evaluate_vectors_in_index

                run = sub.table.rename(columns={"group_id": "group", "role": "split"})
                with tempfile.TemporaryDirectory() as scratch:
                    index_cfg = dataclasses.replace(params.index, uri=str(Path(scratch) / "cmp.db"))
                    milvus = {
                        m: evaluate_vectors_in_index(index_cfg, run, v, 10, "label", collection_version(m))
                        for m, v in vectors.items()
                    }
                print(
                    f"  through Milvus (old row order) mean mAP@10: {_means({m: e.result for m, e in milvus.items()})}"
                )


def new(args: argparse.Namespace) -> None:
    from m3ret.eval.benchmark import benchmark_model_vectors, evaluate_vectors, load_benchmark

    params = load_params(args.params)
    encoder = load_encoder(params.embed.model)
    for name, path in BENCHES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bench = load_benchmark(path, params.read, params.preprocess, Path(params.evaluate.cache))
        items = bench.items
        dump = np.load(args.out / f"old-{name}.npz")
        old_row = pd.Series(np.arange(len(dump["path"])), index=dump["path"])
        key = items["path"] + np.where(items["entry"] != "", ":" + items["entry"], "")
        rows = old_row.reindex(key).to_numpy()
        counts = np.bincount(bench.frame_item, minlength=len(items))
        print(
            f"new {name}: {len(items)} items, {len(bench.frame_ids)} frames ({counts.min()}..{counts.max()} per item)"
        )
        unmatched, left_out = int(np.isnan(rows).sum()), len(old_row) - len(items)
        print(f"  items without an old row: {unmatched}; old rows without an item: {left_out}")
        single = counts == 1
        if single.any():
            frames = np.stack([bench.preview(i) for i in np.flatnonzero(single)])
            old_images = dump["images"][rows[single].astype(np.int64)]
            same = (frames == old_images).reshape(len(frames), -1).all(axis=1)
            diff = np.abs(frames.astype(np.int16) - old_images.astype(np.int16))
            print(f"  one-frame items: {int(same.sum())} / {len(frames)} frames identical to the old decode, ", end="")
            print(f"max |diff| {diff.max()}")
        vectors = benchmark_model_vectors(encoder, bench, params.readout)
        results = {model: evaluate_vectors(v, bench) for model, v in vectors.items()}
        print(f"  exact mean mAP@10: {_means(results)}")
        if counts.max() > 1:
            middle_slice(bench, dump, rows, encoder, params)


def middle_slice(bench, dump: np.lib.npyio.NpzFile, rows: np.ndarray, encoder, params) -> None:
    """Volumes: each item as the stored frame of the cube's middle slice (the old representation, on the new path):
    pixel-compared with the old decode, then evaluated (whitening fitted on those frames of the gallery items)."""
    from m3ret.data.readers import read_item
    from m3ret.eval.benchmark import Benchmark, benchmark_model_vectors, evaluate_vectors

    first = bench.items.iloc[0]
    depth = len(read_item("npz", [Path(first["path"])], first["entry"], params.read)[0])
    frame_index = bench.store.table["frame_index"].to_numpy()[bench.frame_ids]
    at_middle = np.flatnonzero(frame_index == depth // 2)
    has_middle = np.zeros(len(bench.items), bool)
    has_middle[bench.frame_item[at_middle]] = True
    print(
        f"  volumes: middle slice {depth // 2} of {depth} stored for {int(has_middle.sum())} / {len(has_middle)} items"
    )
    sub = Benchmark(
        bench.root, bench.items, bench.store, bench.frame_ids[at_middle], bench.frame_item[at_middle], bench.left_out
    )
    sub = sub.subset(np.flatnonzero(has_middle))
    frames = sub.frames()
    old_images = dump["images"][rows[has_middle].astype(np.int64)]
    same = (frames == old_images).reshape(len(frames), -1).all(axis=1)
    print(f"  middle-slice frames identical to the old decode: {int(same.sum())} / {len(frames)}")
    vectors = benchmark_model_vectors(encoder, sub, params.readout)
    print(
        f"  middle slice only, exact mean mAP@10: {_means({m: evaluate_vectors(v, sub) for m, v in vectors.items()})}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["old", "new"])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the old decode's dump")
    parser.add_argument("--milvus", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    old(args) if args.mode == "old" else new(args)


if __name__ == "__main__":
    main()
