"""Draw retrieval quality during pretraining as a PNG (`m3ret.train.learning_curve`): the mean mAP@10 of each run
against images seen (the `eval/mAP@10.tsv` series the pretrain stage writes: columns step, images_seen, mAP@10), one
panel per benchmark dataset beside it, and horizontal reference lines (raw pixels, random init).

    python benchmarks/plot_pretrain_curves.py --run cpu-60min=benchmarks/results/cpu-60min/curve \\
        --ref "raw pixels=0.624" --out benchmarks/results/cpu-60min/learning_curve.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from m3ret.train.learning_curve import TITLE, learning_curve_figure, read_curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=metrics_dir (repeatable)")
    parser.add_argument("--ref", action="append", default=[], help="NAME=value: a horizontal line on the mean panel")
    parser.add_argument("--metric", default="mAP@10")
    parser.add_argument("--title", default=TITLE)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    runs = {name: read_curves(Path(root), args.metric) for name, root in (s.split("=", 1) for s in args.run)}
    if missing := [name for name, curves in runs.items() if not curves]:
        parser.error(f"no eval/{args.metric}.tsv series for run(s) {missing}")
    refs = {name: float(v) for name, v in (spec.rsplit("=", 1) for spec in args.ref)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    learning_curve_figure(runs, args.metric, refs, args.title).savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
