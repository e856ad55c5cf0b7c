"""The drift summary as a bar chart (matplotlib, Agg canvas): a score per scope against the threshold line."""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DRIFTED, STEADY, UNTESTED, THRESHOLD = "#d62728", "#1f77b4", "#7f7f7f", "#ff7f0e"
DPI = 100


def drift_chart(summary: dict[str, Any]) -> Figure:
    """`embedding_drift`'s summary as a figure: one bar per tested scope with its score above it (red when drifted,
    blue when not), the threshold as a dashed orange line; an untested scope has its status written in place of a bar
    (red for a new modality, which counts as drift, grey otherwise). Under each scope: the rows compared, reference /
    current. The title gives the method and the overall verdict. Save it with `.savefig(path)`."""
    scopes, threshold = summary["scopes"], float(summary["threshold"])
    scores = [s["score"] for s in scopes if s["score"] is not None]
    # Headroom above the larger of threshold and scores keeps the line and the value labels inside the axes.
    top = max([threshold, *scores, 1e-6]) * 1.25
    # MMD^2_u, an unbiased estimate, can fall below zero: room then for the bar and its label under the zero line
    lowest = min(scores, default=0.0)
    bottom = lowest - 0.1 * top if lowest < 0 else 0.0
    fig = Figure(figsize=(max(4.0, 1.5 + 1.1 * len(scopes)), 4.2), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = range(len(scopes))
    for x, scope in zip(positions, scopes, strict=True):
        if scope["score"] is not None:
            bar = ax.bar(x, scope["score"], width=0.6, color=DRIFTED if scope["drifted"] else STEADY)
            ax.bar_label(bar, fmt="%.3f", padding=2, fontsize=8)
        else:
            colour = DRIFTED if scope["drifted"] else UNTESTED
            ax.text(x, 0, scope["status"], color=colour, fontsize=8, ha="center", va="bottom")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(threshold, color=THRESHOLD, linestyle="--", linewidth=1.5, label=f"threshold {threshold:g}")
    ax.set_xticks(list(positions), [f"{s['scope']}\n{s['n_reference']} / {s['n_current']}" for s in scopes], fontsize=9)
    ax.set_xlim(-0.6, len(scopes) - 0.4)
    ax.set_ylim(bottom, top)
    ax.set_ylabel("drift score")
    ax.set_xlabel("scope; rows compared: reference / current", color=UNTESTED, fontsize=8)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    verdict = "DRIFT" if summary["drifted"] else "no drift"
    ax.set_title(f"Embedding drift ({summary['method']}): {verdict}", fontsize=11, loc="left")
    return fig
