"""The served deployments end to end: a local `prefect server start`, `python -m flows serve` against it with a
5 s interval, and a scheduled run of the refresh deployment seen COMPLETED through the API. Slow: two services."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from flows.deployments import CRON, deployments

TIMEOUT_S = 300  # a loaded 2-core CI box: server start, serve start, a run's imports; never asserted on


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    """SIGINT to the process group (serve pauses its schedules on it), SIGKILL to the group after `grace_s`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace_s)
    # the group also holds the runs' and the server's own child processes, which may outlive the leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def _wait_until(predicate, what: str, processes: list[subprocess.Popen], logs: Path) -> object:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for p in processes:
            if p.poll() is not None:
                pytest.fail(f"{p.args[:4]} exited with {p.returncode} while waiting for {what}\n{_tails(logs)}")
        value = predicate()
        if value:
            return value
        time.sleep(2)
    pytest.fail(f"timed out waiting for {what}\n{_tails(logs)}")


def _tails(logs: Path) -> str:
    return "\n".join(f"--- {f.name}\n" + "\n".join(f.read_text().splitlines()[-30:]) for f in sorted(logs.iterdir()))


def _refresh_runs(api: str, states: list[str]) -> list[dict]:
    """Runs of the served refresh deployment in one of `states` (state types, e.g. COMPLETED)."""
    try:
        with httpx.Client(base_url=api, timeout=10) as client:
            body = {
                "flows": {"name": {"any_": ["m3ret-refresh"]}},
                "deployments": {"name": {"any_": ["served"]}},
                "flow_runs": {"state": {"type": {"any_": states}}},
            }
            return client.post("/flow_runs/filter", json=body).raise_for_status().json()
    except httpx.HTTPError:
        return []


def _first_finished(api: str, logs: Path) -> list[dict]:
    """COMPLETED runs, once there is one; a FAILED or CRASHED run ends the wait at once with the logs."""
    failed = _refresh_runs(api, ["FAILED", "CRASHED"])
    if failed:
        pytest.fail(f"scheduled run {failed[0]['name']} ended {failed[0]['state_type']}\n{_tails(logs)}")
    return _refresh_runs(api, ["COMPLETED"])


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_served_refresh_deployment_completes_a_scheduled_run(world_dir, tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "prefect-home"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_UI_ENABLED": "false",
        # schedule the deployment's runs within seconds of its creation, and pick them up as soon
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen] = []
    outputs = [(logs / "server.log").open("w"), (logs / "serve.log").open("w")]
    try:
        prefect = Path(sys.executable).parent / "prefect"
        server = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=outputs[0],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(server)
        _wait_until(lambda: _healthy(api), "the Prefect server", processes, logs)

        serve = subprocess.Popen(
            [sys.executable, "-m", "flows", "serve", "--params", "params.yaml", "--interval-seconds", "5"]
            + ["--only", "refresh", "--state-dir", str(tmp_path / "state")],
            cwd=world_dir,
            env=env,
            stdout=outputs[1],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(serve)
        runs = _wait_until(lambda: _first_finished(api, logs), "a COMPLETED scheduled refresh run", processes, logs)
        assert runs[0]["auto_scheduled"] and runs[0]["parameters"]["params_path"] == "params.yaml"
        # the run did the work: the first model was gated and published, and the ledger written
        assert Path(world_dir / "models" / "index_gate.json").is_file()
        assert (tmp_path / "state" / "ledger.parquet").is_file()
    finally:
        for process, grace in zip(reversed(processes), (15, 10), strict=False):
            _stop(process, grace)
        for output in outputs:
            output.close()


def test_prefect_yaml_deploys_the_three_flows_to_their_pools():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    root = Path(__file__).resolve().parents[2]
    config = PrefectYamlModel.model_validate(yaml.safe_load((root / "prefect.yaml").read_text()))
    by_flow = {}
    for deployment in config.deployments:
        flow = load_flow_from_entrypoint(str(root / deployment.entrypoint))
        by_flow[flow.name] = deployment
        assert set(deployment.parameters) <= set(flow.parameters.properties)
    assert {name: d.work_pool.name for name, d in by_flow.items()} == {
        "m3ret-pretrain": "m3ret-gpu",
        "m3ret-refresh": "m3ret-cpu",
        "m3ret-drift": "m3ret-cpu",
    }
    assert by_flow["m3ret-refresh"].schedules[0].cron == CRON["refresh"]


def test_served_deployments_use_cron_unless_an_interval_is_given():
    served = {d.name + "/" + d.flow_name: d for d in deployments("p.yaml")}
    assert sorted(served) == ["served/m3ret-drift", "served/m3ret-pretrain", "served/m3ret-refresh"]
    refresh = served["served/m3ret-refresh"]
    assert refresh.schedules[0].schedule.cron == CRON["refresh"]
    assert refresh.parameters == {"params_path": "p.yaml", "state_dir": "data/refresh"}
    assert refresh.entrypoint == "flows.refresh_flow.refresh_flow"
    (quick,) = deployments("p.yaml", interval_seconds=5, names=("drift",))
    assert quick.schedules[0].schedule.interval.total_seconds() == 5
    with pytest.raises(ValueError, match="unknown flow"):
        deployments(names=("nightly",))
