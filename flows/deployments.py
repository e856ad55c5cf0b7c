"""Serve the three flows as scheduled deployments from one long-running process (`m3ret-flows serve`).

Default schedules (cron, the server's time zone UTC): refresh hourly, drift daily, pretrain weekly. The same
deployments for work pools (a GPU pool for pretraining) are in prefect.yaml at the repository root.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from flows.drift_flow import drift_flow
from flows.pretrain_flow import pretrain_flow
from flows.refresh_flow import refresh_flow

FLOWS = {"pretrain": pretrain_flow, "refresh": refresh_flow, "drift": drift_flow}
CRON = {"pretrain": "0 3 * * 0", "refresh": "0 * * * *", "drift": "30 2 * * *"}
DEPLOYMENT_NAME = "served"


def deployments(
    params_path: str = "params.yaml",
    interval_seconds: int | None = None,
    names: tuple[str, ...] = tuple(FLOWS),
    state_dir: str = "data/refresh",
) -> list[RunnerDeployment]:
    """One deployment per flow in `names`, on its CRON schedule, or every `interval_seconds` when given (tests,
    demos). Each deployment runs one flow run at a time."""
    unknown = sorted(set(names) - set(FLOWS))
    if unknown:
        raise ValueError(f"unknown flow(s) {unknown}; valid: {sorted(FLOWS)}")
    out = []
    for name in names:
        parameters = {"params_path": params_path} | ({} if name == "pretrain" else {"state_dir": state_dir})
        schedule = {"interval": interval_seconds} if interval_seconds else {"cron": CRON[name]}
        out.append(
            FLOWS[name].to_deployment(
                name=DEPLOYMENT_NAME,
                parameters=parameters,
                tags=["m3ret", name],
                concurrency_limit=1,
                # the flows are importable from the installed package, wherever the server runs them from
                entrypoint_type=EntrypointType.MODULE_PATH,
                **schedule,
            )
        )
    return out


def serve_all(
    params_path: str = "params.yaml",
    interval_seconds: int | None = None,
    names: tuple[str, ...] = tuple(FLOWS),
    state_dir: str = "data/refresh",
) -> None:
    """Serve the deployments until interrupted (Ctrl-C); one flow run at a time across all of them (Milvus Lite
    allows one process per file, and the machine is shared)."""
    serve(*deployments(params_path, interval_seconds, names, state_dir), limit=1)
