"""Fixtures for the flows tests: a random tiny encoder, a published tiny world, and one Prefect test harness.

Prefect reads its settings when it is imported, so PREFECT_HOME and analytics are set here, before any test module
imports prefect; the harness (a local API server on a temporary SQLite database) starts once per session.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="m3ret-prefect-home-")
atexit.register(shutil.rmtree, _PREFECT_HOME, True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

import pytest  # noqa: E402
from tiny_world import build_world, publish, write_encoder  # noqa: E402

from m3ret.config import Params, load_params  # noqa: E402


@pytest.fixture(scope="session")
def encoder_file(tmp_path_factory) -> Path:
    """`tiny_world.write_encoder`: a random, seeded ViT-Ti at the world's frame size."""
    return write_encoder(tmp_path_factory.mktemp("encoder") / "encoder.pt")


@pytest.fixture(scope="session")
def template_world(tmp_path_factory, encoder_file) -> Path:
    """A tiny world built once (up to the embed stage); tests get copies."""
    root = tmp_path_factory.mktemp("template_world")
    build_world(root, encoder_file)
    return root


@pytest.fixture()
def world_dir(tmp_path, template_world, monkeypatch) -> Path:
    """A fresh copy of the template world, made the working directory (params paths are relative to it)."""
    root = shutil.copytree(template_world, tmp_path / "world")
    monkeypatch.chdir(root)
    return root


@pytest.fixture()
def world(world_dir) -> Params:
    """A published tiny world; tests add, change and break files under `params.ingest.sources[0].path`."""
    params = load_params(world_dir / "params.yaml")
    publish(params)
    return params


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """One Prefect test harness (local API server, temporary database) for every flows test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
