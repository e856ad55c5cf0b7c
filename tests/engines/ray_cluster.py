"""A real Ray cluster on this machine for tests and benchmarks: a head and worker nodes started by `ray start`.

Every node has 1 CPU and a 100 MB object store, no dashboard, no usage stats, token authentication with a token of
its own, and its temporary and session files in a folder of its own. Ray advertises the machine's own address even
when given 127.0.0.1 (`ray._private.services.resolve_ip_for_localhost`) and binds its GCS and raylets on every
interface; drivers connect to 127.0.0.1. `stop` ends exactly the processes this cluster started: `ray stop` would
end every Ray on the machine, so each node's process group is killed and then any process whose environment carries
this cluster's marker (Ray workers start their own process groups).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

MARKER = "M3RET_TEST_RAY_CLUSTER"
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_env(root: Path) -> dict[str, str]:
    """The variables a driver (or a node) of the cluster under `root` needs: its token (written there when missing),
    no usage stats. A driver must have them before it imports ray, which reads them once."""
    token = Path(root) / "token"
    if not token.exists():
        token.write_text(secrets.token_hex(32) + "\n")
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(root / "token"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def marked_processes(marker: str) -> list[psutil.Process]:
    """Live processes started with `MARKER=marker` in their environment (what they inherited, not what they set)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


class RayCluster:
    """`worker_nodes` + 1 nodes of 1 CPU on 127.0.0.1; `address` is what `engine.ray_address` takes."""

    def __init__(self, root: Path, worker_nodes: int = 1) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.marker = uuid.uuid4().hex
        self.worker_nodes = worker_nodes
        self._groups: list[int] = []

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **ray_env(self.root), MARKER: self.marker}

    def _ray_start(self, *args: str) -> None:
        with open(self.root / f"node{len(self._groups)}.log", "w") as log:
            node = subprocess.Popen(
                [RAY, "start", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--object-store-memory",
                 "100000000", "--disable-usage-stats", *args],
                cwd=self.root, env=self.env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._groups.append(node.pid)  # the node's daemons stay in the process group of `ray start`
        if node.wait(timeout=180) != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed: see {self.root}/node*.log")

    def start(self) -> RayCluster:
        try:
            self._ray_start("--head", "--port", str(self.port), "--ray-client-server-port", str(free_port()),
                            "--include-dashboard=false", "--temp-dir", str(self.root / "tmp"))  # fmt: skip
            for _ in range(self.worker_nodes):
                self.add_worker_node()
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker_node(self) -> None:
        self._ray_start("--address", self.address)

    def processes(self) -> list[psutil.Process]:
        """The live processes that carry this cluster's marker: its nodes, their workers, drivers given `env`."""
        return marked_processes(self.marker)

    def stop(self) -> None:
        """Kill every process of the cluster and wait until none is left."""
        for group in self._groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (left := self.processes()) and time.monotonic() < deadline:
            for proc in left:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            time.sleep(0.5)
        if left:
            raise RuntimeError(f"ray processes left behind: {[p.pid for p in left]}")
