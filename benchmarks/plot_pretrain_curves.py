"""Draw retrieval quality during pretraining as a PNG (matplotlib, Agg): the mean mAP@10 of each run against images
seen (the `eval/mAP@10.tsv` series the pretrain stage writes: columns step, images_seen, mAP@10), one panel per
benchmark dataset beside it, and horizontal reference lines (raw pixels, random init).

    python benchmarks/plot_pretrain_curves.py --run cpu-60min=benchmarks/results/cpu-60min/curve \\
        --ref "raw pixels=0.624" --out benchmarks/results/cpu-60min/learning_curve.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def read_curves(metrics_dir: Path, metric: str) -> dict[str, pd.DataFrame]:
    """{"mean": series, "<dataset>": series, ...} from metrics_dir/plots/metrics/eval/ (a pretrain metrics_dir) or
    from metrics_dir itself (a copy of that eval folder)."""
    nested = Path(metrics_dir) / "plots" / "metrics" / "eval"
    root = nested if nested.is_dir() else Path(metrics_dir)
    curves = {"mean": pd.read_csv(root / f"{metric}.tsv", sep="\t")}
    for series in sorted(root.glob(f"*/{metric}.tsv")):
        curves[series.parent.name] = pd.read_csv(series, sep="\t")
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=metrics_dir (repeatable)")
    parser.add_argument("--ref", action="append", default=[], help="NAME=value: a horizontal line on the mean panel")
    parser.add_argument("--metric", default="mAP@10")
    parser.add_argument("--title", default="retrieval quality during pretraining")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    runs = {name: read_curves(Path(root), args.metric) for name, root in (s.split("=", 1) for s in args.run)}
    refs = {name: float(v) for name, v in (spec.rsplit("=", 1) for spec in args.ref)}
    panels = list(next(iter(runs.values())))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for name, curves in runs.items():
            if panel in curves:
                series = curves[panel]
                ax.plot(series["images_seen"] / 1000, series[args.metric], marker="o", ms=3, label=name)
        if panel == "mean":
            for i, (name, value) in enumerate(refs.items()):
                ax.axhline(value, ls="--", lw=1, color=f"C{len(runs) + i}", label=f"{name} {value:.3f}")
        ax.set_title(f"{panel} {args.metric}" if panel == "mean" else panel, fontsize=9)
        ax.set_xlabel("images seen (thousands)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(args.metric)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
