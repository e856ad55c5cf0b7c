"""Retrieval quality of pretrained encoders on a labeled benchmark folder or MedMNIST npz, next to the floors every
encoder must beat: raw pixels (32x32 grey, mean-centred, cosine: the medbench README protocol, here of the stored
frames, so letterboxed) and a randomly initialised encoder of the same architecture, each plain and whitened, every
model under the readout of params.yaml's `readout` section (whitening fitted on the benchmark's gallery frames, no
labels). The benchmark is ingested and preprocessed as params.yaml's `read` and `preprocess` sections say
(`load_benchmark`), as `m3ret evaluate --bench` does.

    python benchmarks/pretrain_quality.py --bench ../shared/data/medbench \\
        --encoder simdino=models/simdino/encoder.pt --encoder mae=models/mae/encoder.pt [--pooling mean+grid]

Prints one markdown table per model (per dataset P@1, mAP@10, R@10) and a summary of mean mAP@10.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from m3ret.config import load_params, replace, to_dict
from m3ret.eval.benchmark import benchmark_model_vectors, evaluate_vectors, load_benchmark
from m3ret.eval.retrieval_metrics import RetrievalResult, format_table
from m3ret.models.encoder import load_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--encoder", action="append", default=[], help="NAME=path/to/encoder.pt (repeatable)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="its read/preprocess/readout sections")
    parser.add_argument("--pooling", default="", help="override readout.pooling (e.g. mean, mean+grid)")
    parser.add_argument("--no-whiten", action="store_true", help="override readout.whiten to false")
    parser.add_argument("--size", type=int, default=0, help="override preprocess.size (the frames' side in px)")
    parser.add_argument("--cache", type=Path, default=Path("data/cache/bench"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write {model: {mean, per_dataset}} here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    readout = replace(
        params.readout,
        pooling=args.pooling or params.readout.pooling,
        whiten=params.readout.whiten and not args.no_whiten,
    )
    prep = replace(params.preprocess, size=args.size or params.preprocess.size)

    bench = load_benchmark(args.bench, params.read, prep, args.cache)
    results: dict[str, RetrievalResult] = {}
    for spec in args.encoder:
        name, path = spec.split("=", 1)
        encoder = load_encoder(Path(path))
        cfg = encoder.cfg
        arch = f"{cfg.name} {cfg.img_size}px/p{cfg.patch_size}, readout {readout.pooling}"
        for model, vectors in benchmark_model_vectors(encoder, bench, readout).items():
            title = f"{name} ({arch})" if model == "encoder" else f"{model} ({arch})"
            results.setdefault(title, evaluate_vectors(vectors, bench))

    for title, result in results.items():
        print(format_table(result, title) + "\n")
    print("| model | mean P@1 | mean mAP@10 | mean R@10 |")
    print("| --- | ---: | ---: | ---: |")
    for title, result in results.items():
        m = result.mean
        print(f"| {title} | {m['P@1']:.3f} | {m['mAP@10']:.3f} | {m['R@10']:.3f} |")
    if args.json:
        summary = {t: {"mean": r.mean, "per_dataset": r.per_dataset} for t, r in results.items()}
        args.json.write_text(json.dumps({"readout": to_dict(readout), "models": summary}, indent=2) + "\n")
    best = max((r.mean["mAP@10"], t) for t, r in results.items())
    print(f"\nbest mean mAP@10: {best[0]:.3f} ({best[1]}); n_queries={int(np.sum(bench.items['split'] == 'query'))}")


if __name__ == "__main__":
    main()
