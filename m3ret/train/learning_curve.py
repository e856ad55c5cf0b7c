"""Retrieval quality during pretraining as a picture (matplotlib, Agg canvas), drawn from the pretrain stage's series.

The stage logs each `evaluate` result under `eval/` (progress.py): the mean `<metric>` in
`plots/metrics/eval/<metric>.tsv` and each benchmark dataset's in `plots/metrics/eval/<dataset>/<metric>.tsv`, all
with the columns step, images_seen, <metric>. The evaluate callback returns the model's numbers only (the floors are
measured by the evaluate stage), so reference lines come from the caller.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LEARNING_CURVE_PNG = "learning_curve.png"
MEAN = "mean"
TITLE = "retrieval quality during pretraining"
DPI = 120


def read_curves(metrics_dir: Path, metric: str = "mAP@10") -> dict[str, pd.DataFrame]:
    """{"mean": series, "<dataset>": series, ...} (datasets sorted) from `metrics_dir`/plots/metrics/eval/ (a pretrain
    metrics_dir) or from `metrics_dir` itself (a copy of that eval folder); {} when there is no mean series yet."""
    nested = Path(metrics_dir) / "plots" / "metrics" / "eval"
    root = nested if nested.is_dir() else Path(metrics_dir)
    if not (root / f"{metric}.tsv").is_file():
        return {}
    curves = {MEAN: pd.read_csv(root / f"{metric}.tsv", sep="\t")}
    for series in sorted(root.glob(f"*/{metric}.tsv")):
        curves[series.parent.name] = pd.read_csv(series, sep="\t")
    return curves


def learning_curve_figure(
    runs: Mapping[str, Mapping[str, pd.DataFrame]],
    metric: str = "mAP@10",
    refs: Mapping[str, float] | None = None,
    title: str = TITLE,
) -> Figure:
    """`metric` against images seen (thousands): the first panel the mean over datasets, then one small panel per
    benchmark dataset; one line per run of `runs` ({run name: `read_curves` result}), and on the mean panel a dashed
    horizontal line per reference ({name: value}, e.g. a floor). A legend when there is more than one line to name."""
    refs = refs or {}
    datasets = sorted({panel for curves in runs.values() for panel in curves} - {MEAN})
    panels = [MEAN, *datasets]
    fig = Figure(figsize=(4.2 * len(panels), 3.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        for name, curves in runs.items():
            if panel in curves:
                series = curves[panel]
                ax.plot(series["images_seen"] / 1000, series[metric], marker="o", ms=3, label=name)
        if panel == MEAN:
            for i, (name, value) in enumerate(refs.items()):
                ax.axhline(value, ls="--", lw=1, color=f"C{len(runs) + i}", label=f"{name} {value:.3f}")
        ax.set_title(f"{panel} {metric}" if panel == MEAN else panel, fontsize=9)
        ax.set_xlabel("images seen (thousands)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    if len(runs) + len(refs) > 1:
        axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return fig


def write_learning_curve(metrics_dir: Path, metric: str = "mAP@10") -> Path | None:
    """Draw a pretrain metrics_dir's own curve (`learning_curve_figure` of its `read_curves`) to
    `metrics_dir`/learning_curve.png; returns that path, or None, drawing nothing, when no `metric` was logged."""
    curves = read_curves(metrics_dir, metric)
    if not curves:
        return None
    out = Path(metrics_dir) / LEARNING_CURVE_PNG
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # a reader mid-run sees the last picture, never half of one
    learning_curve_figure({Path(metrics_dir).name: curves}, metric).savefig(tmp, format="png")
    tmp.replace(out)
    return out
