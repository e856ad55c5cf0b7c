"""A real PACS for tests: Debian's Orthanc with its DICOMweb plugin, on 127.0.0.1 (free ports, temporary storage).

`tests/conftest.py` starts one per session (`orthanc` fixture, emptied before each test by `pacs`); a test that needs
another setup (a login) starts its own with `Orthanc(root, users=...)`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import requests

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
MISSING = next(
    (f"{path} is missing (Debian packages orthanc, orthanc-dicomweb)" for path in (ORTHANC, DICOMWEB_PLUGIN)
     if not path.exists()),
    None,
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orthanc:
    """One Orthanc process in its own process group; `url` is its REST API, `dicomweb` its DICOMweb root."""

    def __init__(self, root: Path, users: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.storage = self.root / "storage"
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.auth = next(iter(users.items())) if users else None
        self.users = users or {}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Orthanc:
        self.storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "m3ret-tests",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            # every retrieval reads the storage area: a test breaks a series by removing its files
            "MaximumStorageCacheSize": 0,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.root / "orthanc.json").write_text(json.dumps(config))
        log = open(self.root / "orthanc.log", "wb")  # noqa: SIM115 - the process writes it until stopped
        self.process = subprocess.Popen(
            ["nice", str(ORTHANC), str(self.root / "orthanc.json")], stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _rest(self, method: str, path: str, **kwargs) -> requests.Response:
        response = requests.request(method, f"{self.url}{path}", auth=self.auth, timeout=60, **kwargs)
        response.raise_for_status()
        return response

    def upload(self, paths: Iterable[Path]) -> None:
        """Store DICOM files through the REST API (POST /instances), as a modality's export would."""
        for path in paths:
            self._rest("POST", "/instances", data=Path(path).read_bytes())

    def clear(self) -> None:
        """Delete every study."""
        for study in self._rest("GET", "/studies").json():
            self._rest("DELETE", f"/studies/{study}")

    def break_series(self, series_uid: str) -> None:
        """Remove the stored files of a series' instances but the first: the index still lists them all, retrieving
        the series fails (the first is the one a QIDO-RS series search reads its extra tags from)."""
        found = self._rest("POST", "/tools/lookup", data=series_uid).json()
        series = next(entry["ID"] for entry in found if entry["Type"] == "Series")
        for instance in self._rest("GET", f"/series/{series}/instances").json()[1:]:
            uuid = self._rest("GET", f"/instances/{instance['ID']}/attachments/dicom/info").json()["Uuid"]
            (self.storage / uuid[:2] / uuid[2:4] / uuid).unlink()
