"""A real Milvus standalone server (the `milvus` package's `milvus-server`, Milvus 2.3.5) for the tests that must
hold on a server, not only on Milvus Lite.

`milvus-server` forks `milvus run standalone`, which binds every port on all interfaces, so every port it opens gets
a free one picked here (two test runs on one machine cannot collide) and clients talk to it on 127.0.0.1 only. Two
ports are not among `milvus-server`'s options: the embedded etcd's own listen and peer ports (its defaults 2379 and
2380, whatever `--etcd-port` says: that option only tells Milvus where to connect) are set through an etcd config
file (ETCD_CONFIG_PATH, which Milvus reads from the environment), and the metrics/health port, which the launcher
probes upwards from 9091 (two servers starting together could both take the same one), is set on the launcher's
server object before it starts. The server runs in a process group of its own, stopped whole: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path

# `milvus-server --<name>` options that each open a port (index-coord's is configured although standalone
# does not listen on it); `proxy-port` is the one clients use.
PORT_OPTIONS = (
    "proxy-port",
    "proxy-internal-port",
    "etcd-port",
    "root-coord-port",
    "query-coord-port",
    "query-node-port",
    "index-coord-port",
    "index-node-port",
    "data-coord-port",
    "data-node-port",
)
# runs `milvus-server`'s own entry point with the metrics port taken from argv[1] instead of probed from 9091
_LAUNCH = "import sys, milvus; milvus.default_server.webservice_port = int(sys.argv.pop(1)); sys.exit(milvus.main())"


class MilvusServerError(RuntimeError):
    """The server did not start (the message ends with the tail of its logs)."""


def server_executable() -> Path | None:
    """`milvus-server` next to this interpreter (the dev extra installs it), or None."""
    path = Path(sys.executable).parent / "milvus-server"
    return path if path.exists() else None


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now (held together while chosen, so they differ)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


class MilvusStandalone:
    """One `milvus-server` with its data, configs and logs in `root`; `uri` once `start` returned."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy-port']}"

    def start(self, timeout_s: float = 180.0) -> str:
        """Start the server and wait until a client lists its collections; returns its URI."""
        if server_executable() is None:
            raise MilvusServerError(f"no milvus-server next to {sys.executable} (pip install -e '.[dev]')")
        self.root.mkdir(parents=True, exist_ok=True)
        *options, etcd_peer, metrics = free_ports(len(PORT_OPTIONS) + 2)
        self.ports = dict(zip(PORT_OPTIONS, options, strict=True))
        etcd_config = self.root / "embed-etcd.yaml"
        client_url, peer_url = f"http://127.0.0.1:{self.ports['etcd-port']}", f"http://127.0.0.1:{etcd_peer}"
        etcd_config.write_text(
            f"name: m3ret-test\nlisten-client-urls: {client_url}\nadvertise-client-urls: {client_url}\n"
            f"listen-peer-urls: {peer_url}\ninitial-advertise-peer-urls: {peer_url}\n"
            f"initial-cluster: m3ret-test={peer_url}\n"
        )
        command = [sys.executable, "-c", _LAUNCH, str(metrics), "--data", str(self.root)]
        for option, port in self.ports.items():
            command += [f"--{option}", str(port)]
        with open(self.root / "launcher.log", "wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=self.root,
                env={**os.environ, "ETCD_CONFIG_PATH": str(etcd_config)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.uri

    def _wait_ready(self, timeout_s: float) -> None:
        from pymilvus import MilvusClient

        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MilvusServerError(f"milvus-server exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                client = MilvusClient(uri=self.uri, timeout=5)
                try:
                    client.list_collections()
                    return
                finally:
                    client.close()
            except Exception as error:  # not listening yet, or listening but not serving yet
                last_error = error
            time.sleep(1.0)
        raise MilvusServerError(f"not ready after {timeout_s:.0f} s ({last_error})\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the launcher's output and of Milvus's stderr (where a failed start says why)."""
        out = []
        for path in (self.root / "launcher.log", self.root / "logs" / "milvus-stderr.log"):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after `grace_s`."""
        if self.proc is None:
            return
        group = self.proc.pid  # start_new_session: the launcher leads its own group
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(group, self.proc):
            time.sleep(0.2)
        if _group_alive(group, self.proc):
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None


def _group_alive(group: int, leader: subprocess.Popen) -> bool:
    leader.poll()  # reap the launcher when it has exited, so only live members keep the group
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
