"""The drift flow: the latest refresh batch's item embeddings against the pipeline's reference items (Evidently).

Reference: the embed stage's items of `drift.reference_splits`; current: the newest refresh batch that added items.
The report goes to `drift.out/<batch>`; a markdown artifact carries the summary and the path of the HTML report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.refresh_flow import refresh_flow, transient
from m3ret.config import load_params
from m3ret.index.ledger import latest_batch
from m3ret.stages.drift import batch_drift


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=transient, cache_policy=NO_CACHE)
def drift_report(params_path: str, state_dir: str) -> dict[str, Any] | None:
    """The drift summary of the latest batch (None when no refresh has added items yet)."""
    params = load_params(params_path)
    batch = latest_batch(Path(state_dir))
    return None if batch is None else batch_drift(Path(params.embed.out), batch, params.drift)


def drift_markdown(summary: dict[str, Any] | None, state_dir: str) -> str:
    if summary is None:
        return f"# m3ret drift\n\nNo refresh batch with new items in `{state_dir}` yet: nothing to compare.\n"
    html = Path(summary["files"]["html"]).resolve()
    lines = [
        "# m3ret drift",
        "",
        f"Batch `{summary['batch']}` vs reference, model `{summary['model_version']}`, method {summary['method']}: "
        f"**{'drift' if summary['drifted'] else 'no drift'}**.",
        "",
        "| scope | status | score | drifted | reference rows | current rows |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["scopes"]:
        score = "" if row["score"] is None else f"{row['score']:.3f}"
        lines.append(
            f"| {row['scope']} | {row['status']} | {score} | {row['drifted']} | {row['n_reference']} | "
            f"{row['n_current']} |"
        )
    lines += ["", f"Evidently report: [{html.name}]({html.as_uri()}) (`{html}`)"]
    return "\n".join(lines) + "\n"


@flow(name="m3ret-drift", log_prints=True)
def drift_flow(
    params_path: str = "params.yaml", state_dir: str = "data/refresh", trigger_refresh: bool = False
) -> dict[str, Any] | None:
    """Drift of the latest refresh batch; with `trigger_refresh`, a drifted result starts the refresh flow (as a
    subflow, its result under "refresh"). Returns the drift summary, or None before the first refresh batch."""
    summary = drift_report(params_path, state_dir)
    create_markdown_artifact(markdown=drift_markdown(summary, state_dir), key="m3ret-drift")
    if summary is not None:
        print(f"drift of batch {summary['batch']}: {'drift' if summary['drifted'] else 'no drift'}")
        if trigger_refresh and summary["drifted"]:
            summary["refresh"] = refresh_flow(params_path, state_dir)
    return summary
