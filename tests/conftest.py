"""Fixtures for every test folder: a real Orthanc PACS (tests/orthanc_server.py), started once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from orthanc_server import MISSING, Orthanc  # noqa: E402


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Orthanc:
    """One Orthanc with DICOMweb on 127.0.0.1 for the session, stopped (its process group) at the end."""
    if MISSING:
        pytest.skip(MISSING)
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture()
def pacs(orthanc: Orthanc) -> Orthanc:
    """The session's Orthanc, emptied: the test sees only the studies it uploads."""
    orthanc.clear()
    return orthanc
