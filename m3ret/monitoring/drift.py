"""Embedding drift between a reference and a current set of item vectors, overall and per modality (Evidently 0.7).

Each scope ("all", then every modality) is compared with the Evidently drift method `drift.method` names, the same
callable Evidently's `EmbeddingsDrift` metric runs. The verdict calls it directly, because the metric also fits a
t-SNE for its picture (about 35 ms per row on one core) that the JSON summary does not need; the HTML report
then runs `EmbeddingsDrift` itself on the same sampled rows, so its drift scores are the summary's.

A modality seen only in the current set is "new modality" and counts as drift; one gone from the current set is
"missing in current" (a current batch need not hold every modality); one with fewer than `min_rows` on a side is
"too few rows", reported but not tested.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.metric_types import render_widgets
from evidently.legacy.model.widget import BaseWidgetInfo
from evidently.legacy.renderers.html_widgets import group_widget, table_data
from evidently.metrics.embeddings import EmbeddingsDrift, MMDDriftMethod, ModelDriftMethod
from threadpoolctl import threadpool_limits

from m3ret.config import DriftConfig
from m3ret.monitoring.drift_plot import drift_chart

METHODS = {"model": ModelDriftMethod, "mmd": MMDDriftMethod}
Method = ModelDriftMethod | MMDDriftMethod
Scope = tuple[str, np.ndarray, np.ndarray]  # (name, reference rows [n_r, D], current rows [n_c, D])
ALL = "all"
TESTED, TOO_FEW, NEW, MISSING = "tested", "too few rows", "new modality", "missing in current"
DRIFT_JSON, DRIFT_HTML, DRIFT_PNG = "drift.json", "drift.html", "drift.png"
# Evidently's report embeds reference + current rows with a perplexity-30 t-SNE, which needs more than 30 rows.
_MIN_ROWS_FLOOR = 16


def drift_method(cfg: DriftConfig) -> Method:
    """Evidently's method for `cfg.method` at `cfg.threshold`, or at Evidently's own default when that is None."""
    if cfg.method not in METHODS:
        raise ValueError(f"drift.method={cfg.method!r}; valid: {sorted(METHODS)}")
    if cfg.threshold is None:
        return METHODS[cfg.method]()
    if isinstance(cfg.threshold, bool) or not isinstance(cfg.threshold, int | float):
        raise ValueError(f"drift.threshold must be a number or null, got {cfg.threshold!r}")
    return METHODS[cfg.method](threshold=float(cfg.threshold))


def _check(
    cfg: DriftConfig, reference: np.ndarray, ref_mod: np.ndarray, current: np.ndarray, cur_mod: np.ndarray
) -> None:
    if cfg.min_rows < _MIN_ROWS_FLOOR:
        raise ValueError(f"drift.min_rows={cfg.min_rows}: at least {_MIN_ROWS_FLOOR} (the report's t-SNE needs them)")
    if cfg.max_rows < cfg.min_rows:
        raise ValueError(f"drift.max_rows={cfg.max_rows} is below drift.min_rows={cfg.min_rows}")
    for name, x, mod in (("reference", reference, ref_mod), ("current", current, cur_mod)):
        if x.ndim != 2 or mod.shape != (len(x),):
            raise ValueError(f"{name}: vectors must be [N, D] with N modality labels; got {x.shape} and {mod.shape}")
        if len(x) == 0:
            raise ValueError(f"{name}: no vectors to compare")
    if reference.shape[1] != current.shape[1]:
        raise ValueError(f"reference is {reference.shape[1]}-d but current is {current.shape[1]}-d")


def _sample(x: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """At most `max_rows` rows of `x` [N, D], drawn without replacement in their original order."""
    if len(x) <= max_rows:
        return x
    keep = np.sort(np.random.default_rng(seed).choice(len(x), max_rows, replace=False))
    return x[keep]


def _scopes(
    reference: np.ndarray,
    reference_modality: np.ndarray,
    current: np.ndarray,
    current_modality: np.ndarray,
    cfg: DriftConfig,
) -> list[Scope]:
    """The checked inputs as scopes: ALL, then each modality in sorted order, rows sampled per side."""
    ref_mod, cur_mod = np.asarray(reference_modality).astype(str), np.asarray(current_modality).astype(str)
    _check(cfg, reference, ref_mod, current, cur_mod)
    pairs = [(ALL, reference, current)]
    for modality in sorted(set(ref_mod) | set(cur_mod)):
        pairs.append((modality, reference[ref_mod == modality], current[cur_mod == modality]))
    return [(s, _sample(r, cfg.max_rows, cfg.seed), _sample(c, cfg.max_rows, cfg.seed)) for s, r, c in pairs]


def _status(ref: np.ndarray, cur: np.ndarray, min_rows: int) -> str:
    if len(ref) == 0 and len(cur) > 0:
        return NEW
    if len(cur) == 0 and len(ref) > 0:
        return MISSING
    return TESTED if min(len(ref), len(cur)) >= min_rows else TOO_FEW


def _frame(x: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(x.astype(np.float64), columns=[f"e{i}" for i in range(x.shape[1])])


def _summarise(scopes: list[Scope], method: Method, cfg: DriftConfig) -> dict[str, Any]:
    rows = []
    for scope, ref, cur in scopes:
        status, score, drifted = _status(ref, cur, cfg.min_rows), None, False
        if status == TESTED:
            value, flag, _ = method(_frame(cur), _frame(ref))  # Evidently's order: current first
            score, drifted = float(value), bool(flag)
        drifted = drifted or status == NEW
        row = {"scope": scope, "status": status, "score": score, "drifted": drifted}
        rows.append(row | {"n_reference": len(ref), "n_current": len(cur)})
    drifted = any(r["drifted"] for r in rows)
    return {"method": cfg.method, "threshold": float(method.threshold), "drifted": drifted, "scopes": rows}


def embedding_drift(
    reference: np.ndarray,
    reference_modality: np.ndarray,
    current: np.ndarray,
    current_modality: np.ndarray,
    cfg: DriftConfig,
) -> dict[str, Any]:
    """Drift of `current` [N_c, D] against `reference` [N_r, D] (L2-normalised rows), overall and per modality.

    `*_modality` [N] label each row. Returns {"method", "threshold", "drifted" (any scope), "scopes": [{"scope",
    "status", "score" (None when untested), "drifted", "n_reference", "n_current"}]}, "all" first; the counts are
    the rows compared, after sampling at most `cfg.max_rows` per side.
    """
    return _summarise(_scopes(reference, reference_modality, current, current_modality, cfg), drift_method(cfg), cfg)


def _scope_widgets(scope: str, ref: np.ndarray, cur: np.ndarray, method: Method) -> list[BaseWidgetInfo]:
    """The widgets of Evidently's own `EmbeddingsDrift` report for one scope (its verdict and t-SNE density)."""
    reference, current = _frame(ref), _frame(cur)
    definition = DataDefinition(embeddings={scope: list(reference.columns)})
    report = Report([EmbeddingsDrift(embeddings_name=scope, drift_method=method)])
    # sklearn's t-SNE spins OpenMP threads; on a shared 2-core box (load 7) that took 40 s for 32 rows against 0.6 s
    # on one thread, while more threads gain under 2x on an idle one. The picture is not worth that gamble.
    with threadpool_limits(limits=1, user_api="openmp"):
        snapshot = report.run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    return [w for result in snapshot.metric_results.values() for w in result.get_widgets()]


def _html(summary: dict[str, Any], scopes: list[Scope], method: Method) -> str:
    """One self-contained page (Evidently inlines its JS and font): the summary table, then a section per scope."""
    columns = ["scope", "status", "score", "drifted", "n_reference", "n_current"]
    rows = [[row[c] for c in columns] for row in summary["scopes"]]
    rows = [[scope, status, "" if score is None else f"{score:.4g}", *rest] for scope, status, score, *rest in rows]
    title = f"Embedding drift ({summary['method']}; drift when score > {summary['threshold']:g})"
    widgets = [table_data(column_names=columns, data=rows, title=title)]
    tested = {row["scope"] for row in summary["scopes"] if row["status"] == TESTED}
    for scope, ref, cur in scopes:
        if scope in tested:
            widgets.append(group_widget(title=f"Scope: {scope}", widgets=_scope_widgets(scope, ref, cur, method)))
    return render_widgets(widgets)


def write_drift_report(
    reference: np.ndarray,
    reference_modality: np.ndarray,
    current: np.ndarray,
    current_modality: np.ndarray,
    cfg: DriftConfig,
    out_dir: Path,
) -> dict[str, Any]:
    """`embedding_drift`, written to `out_dir`: drift.json (the summary), drift.html (Evidently), drift.png (bars).

    Returns the summary with "files": {"json", "html", "png"} paths added.
    """
    scopes, method = _scopes(reference, reference_modality, current, current_modality, cfg), drift_method(cfg)
    summary = _summarise(scopes, method, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / DRIFT_JSON, "html": out_dir / DRIFT_HTML, "png": out_dir / DRIFT_PNG}
    files["json"].write_text(json.dumps(summary, indent=2) + "\n")
    files["html"].write_text(_html(summary, scopes, method), encoding="utf-8")
    drift_chart(summary).savefig(files["png"])
    return summary | {"files": {k: str(v) for k, v in files.items()}}
