"""The default engine is `local`: today's process pool and embed process, and nothing imports ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from m3ret.config import EngineConfig, Params
from m3ret.data.parallel import parallel_map
from m3ret.engines import open_engine
from m3ret.engines.local import LocalEngine
from m3ret.models.frame_vectors import pool_frames

ROOT = Path(__file__).resolve().parents[2]


def test_local_is_the_default_and_is_todays_code() -> None:
    assert Params().engine.kind == "local"
    with open_engine(EngineConfig()) as engine:
        assert isinstance(engine, LocalEngine)
        assert engine.map_items is parallel_map and engine.pool_frames is pool_frames
        assert list(engine.map_items(abs, [-1, 2, -3], 2, "abs")) == [1, 2, 3]


def test_the_local_engine_never_imports_ray() -> None:
    """In a fresh interpreter: every stage and the CLI imported, an item map run, and ray is not among the modules."""
    code = (
        "import sys\n"
        "import m3ret.cli, m3ret.stages.ingest, m3ret.stages.preprocess, m3ret.stages.embed, m3ret.stages.refresh\n"
        "from m3ret.config import EngineConfig\n"
        "from m3ret.engines import open_engine\n"
        "with open_engine(EngineConfig()) as engine:\n"
        "    assert list(engine.map_items(abs, [-1, 2], 2, 'abs')) == [1, 2]\n"
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=300)


def test_an_unknown_engine_is_refused() -> None:
    unknown = EngineConfig.model_construct(kind="spark")  # past the section's own check, as a typo in code would be
    with pytest.raises(ValueError, match=r"engine.kind='spark'; valid: \['local', 'ray'\]"), open_engine(unknown):
        pass
