"""The refresh flow: gate and publish a new model when there is one, then index the sources' new and changed files.

Thin glue: each task is one `m3ret.stages.refresh` call; what passes between tasks is small (paths, ids, counts).
Ingest, preprocess and embed run where params.yaml's `engine` section says (this process, or a Ray cluster whose
driver is this process); the index is written from here alone.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from m3ret.config import ConfigError, load_params
from m3ret.stages.refresh import ModelVersionError, new_model_version, rebuild_for_new_model, refresh


def transient(task: Any, task_run: TaskRun, state: State) -> bool:
    """Retry I/O failures, not a broken configuration or a model that must be gated first."""
    return not isinstance(state.data, ConfigError | ModelVersionError | FileNotFoundError)


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=transient, cache_policy=NO_CACHE)
def publish_new_model(params_path: str) -> dict[str, Any] | None:
    """When the encoder is a new model: build its collection, run the evaluation gate, publish if it passes."""
    params = load_params(params_path)
    if new_model_version(params) is None:
        return None
    return rebuild_for_new_model(params).to_dict()


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=transient, cache_policy=NO_CACHE)
def refresh_index(params_path: str, state_dir: str) -> dict[str, Any]:
    """New and changed source files into the published collection (upserts are idempotent, so a retry is safe)."""
    return refresh(load_params(params_path), Path(state_dir)).to_dict()


def refresh_markdown(rebuild: dict[str, Any] | None, report: dict[str, Any] | None) -> str:
    lines = ["# m3ret refresh", ""]
    if rebuild:
        verdict = "passed: published" if rebuild["published"] else "failed: not published, refresh skipped"
        lines += [f"New model `{rebuild['model_version']}` ({rebuild['collection']}): gate {verdict}.", ""]
    if report:
        lines += [
            f"Batch `{report['batch']}`, model `{report['model_version']}`.",
            "",
            "| added | skipped | quarantined | deleted |",
            "| --- | --- | --- | --- |",
            f"| {len(report['added'])} | {report['skipped']} | {len(report['quarantined'])} "
            f"| {len(report['deleted'])} |",
        ]
        if report["quarantined"]:
            # the reasons only: a file's path can name its patient, and this artifact leaves the machine
            lines += ["", "| quarantine reason | files |", "| --- | --- |"]
            reasons = Counter(reason.replace(path, "<file>") for path, reason in report["quarantined"])
            lines += [f"| {reason} | {count} |" for reason, count in sorted(reasons.items())]
            lines += ["", f"Which files: `{report['batch']}/report.json` in the refresh state folder."]
    return "\n".join(lines) + "\n"


@flow(name="m3ret-refresh", log_prints=True)
def refresh_flow(params_path: str = "params.yaml", state_dir: str = "data/refresh") -> dict[str, Any]:
    """Publish a new model if its gate passes, then index new/changed files; returns {"rebuild", "refresh"}."""
    rebuild = publish_new_model(params_path)
    report = None if rebuild and not rebuild["published"] else refresh_index(params_path, state_dir)
    create_markdown_artifact(markdown=refresh_markdown(rebuild, report), key="m3ret-refresh")
    if report:
        print(f"refresh: {len(report['added'])} added, {report['skipped']} skipped, "
              f"{len(report['quarantined'])} quarantined, {len(report['deleted'])} deleted")  # fmt: skip
    return {"rebuild": rebuild, "refresh": report}
