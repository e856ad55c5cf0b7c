"""Retrieval quality per dataset as grouped bars (matplotlib, Agg canvas), drawn from the per_dataset.csv table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PER_DATASET_PNG = "per_dataset.png"
MEAN = "mean"
DPI = 110


def per_dataset_chart(table: pd.DataFrame, metric: str | None = None) -> Figure:
    """Grouped bars of `metric` (default: the table's mAP@k column) from a table with one row per (dataset, model), as
    `write_evaluation_outputs` writes to per_dataset.csv: one group per dataset in the table's order with the mean over
    datasets last (past a dotted divider), one bar per model in each group (the models in the table's order, one
    colour each, named in the legend), the value written on each bar. A missing (dataset, model) pair has no bar."""
    metric = metric or next(c for c in table.columns if c.startswith("mAP@") and not c.endswith("_rel"))
    names = list(dict.fromkeys(table["dataset"]))
    datasets = [d for d in names if d != MEAN] + [d for d in names if d == MEAN]
    models = list(dict.fromkeys(table["model"]))
    values = table.pivot_table(index="dataset", columns="model", values=metric, aggfunc="first")
    values = values.reindex(index=datasets, columns=models)
    width = 0.8 / len(models)
    fig = Figure(figsize=(max(6.0, 1.5 + len(datasets) * (0.3 * len(models) + 0.5)), 4.2), dpi=DPI)
    fig.set_layout_engine("constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups = np.arange(len(datasets))
    for i, model in enumerate(models):
        bars = ax.bar(groups + (i - (len(models) - 1) / 2) * width, values[model].to_numpy(), width, label=model)
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=6, rotation=90)
    if datasets[-1] == MEAN and len(datasets) > 1:
        ax.axvline(len(datasets) - 1.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(groups, datasets, fontsize=8, rotation=15 if len(datasets) > 4 else 0)
    ax.set_ylim(0, 1.15)  # retrieval metrics lie in [0, 1]; the headroom holds the value labels
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"{metric} per dataset", fontsize=10, loc="left")
    fig.legend(loc="outside upper right", ncols=min(len(models), 5), fontsize=7, frameon=False)
    return fig
