"""One real Ray cluster for the engine tests (a head and a worker node on this machine), started when a test first
asks for it and stopped, every process of it, at the end of the session; and the tests' random encoder.

This process is a driver of the cluster: ray reads its token settings when it is imported, so they are set here,
before any test module imports ray; the cluster's folder is short, since Ray's unix sockets live under it and their
paths may not exceed 107 characters.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "flows"))
from ray_cluster import RayCluster, ray_env  # noqa: E402
from tiny_world import write_encoder  # noqa: E402

_ROOT = Path(tempfile.mkdtemp(prefix="m3ret-ray-"))
atexit.register(shutil.rmtree, _ROOT, True)
os.environ.update(ray_env(_ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    cluster = RayCluster(_ROOT, worker_nodes=1).start()
    try:
        yield cluster
    finally:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
        cluster.stop()


@pytest.fixture(scope="session")
def encoder_file(tmp_path_factory) -> Path:
    """`tiny_world.write_encoder`: a random, seeded ViT-Ti at 32 px."""
    return write_encoder(tmp_path_factory.mktemp("encoder") / "encoder.pt")
