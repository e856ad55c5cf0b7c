"""Retrieval quality of pretrained encoders on a labeled benchmark folder, next to the two floors every encoder must
beat: raw pixels (32x32 grey, mean-centred, cosine: the medbench README protocol) and a randomly initialised encoder
of the same architecture.

    python benchmarks/pretrain_quality.py --bench ../shared/data/medbench \\
        --encoder simdino=models/simdino/encoder.pt --encoder mae=models/mae/encoder.pt

Prints one markdown table per encoder (per dataset P@1, mAP@10, R@10) and a summary of mean mAP@10.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from m3ret.eval.baselines import raw_pixel_embeddings_from_files
from m3ret.eval.benchmark_folder import evaluate_encoder, load_benchmark_folder
from m3ret.eval.retrieval_metrics import RetrievalResult, evaluate_embeddings, format_table
from m3ret.models.encoder import build_encoder, load_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--encoder", action="append", default=[], help="NAME=path/to/encoder.pt (repeatable)")
    parser.add_argument("--size", type=int, default=64, help="frame size the benchmark images are letterboxed to")
    parser.add_argument("--cache", type=Path, default=Path("data/cache/bench"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    bench = load_benchmark_folder(args.bench, args.size, cache_dir=args.cache)
    table = bench.table
    results: dict[str, RetrievalResult] = {}
    raw = raw_pixel_embeddings_from_files(table["path"].tolist())
    results["raw pixels (32x32 grey)"] = evaluate_embeddings(
        raw,
        table["label"].to_numpy(),
        table["group_id"].to_numpy(),
        table["role"].to_numpy(),
        table["dataset"].to_numpy(),
    )
    random_done: set[str] = set()
    for spec in args.encoder:
        name, path = spec.split("=", 1)
        encoder = load_encoder(Path(path))
        cfg = encoder.cfg
        arch = f"{cfg.name} {cfg.img_size}px/p{cfg.patch_size} {cfg.pooling}"
        if arch not in random_done:
            torch.manual_seed(0)
            random = build_encoder(cfg).eval()
            results[f"random init ({arch})"] = evaluate_encoder(lambda b, m=random: m.embed(b).numpy(), bench)
            random_done.add(arch)
        results[f"{name} ({arch})"] = evaluate_encoder(lambda b, m=encoder: m.embed(b).numpy(), bench)

    for title, result in results.items():
        print(format_table(result, title) + "\n")
    print("| encoder | mean P@1 | mean mAP@10 | mean R@10 |")
    print("| --- | ---: | ---: | ---: |")
    for title, result in results.items():
        m = result.mean
        print(f"| {title} | {m['P@1']:.3f} | {m['mAP@10']:.3f} | {m['R@10']:.3f} |")
    best = max((r.mean["mAP@10"], t) for t, r in results.items())
    print(f"\nbest mean mAP@10: {best[0]:.3f} ({best[1]}); n_queries={int(np.sum(table['role'] == 'query'))}")


if __name__ == "__main__":
    main()
