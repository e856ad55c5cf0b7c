"""The refresh (what the Prefect refresh flow's task runs) on the two-node Ray cluster: new files ingested,
preprocessed and embedded on the cluster, a broken one quarantined, the batch upserted into Milvus Lite by this
process alone; the same report, vectors and rows as a refresh on the local engine."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "flows"))
from tiny_world import N_IMAGES, build_world, publish, write_png  # noqa: E402

from m3ret.config import EngineConfig, load_params  # noqa: E402
from m3ret.index.filters import SearchFilter  # noqa: E402
from m3ret.index.ledger import latest_batch  # noqa: E402
from m3ret.index.milvus_index import MilvusIndex  # noqa: E402
from m3ret.models.embedding_set import EmbeddingSet  # noqa: E402
from m3ret.stages.refresh import refresh  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template(tmp_path_factory, encoder_file) -> Path:
    root = tmp_path_factory.mktemp("template")
    build_world(root, encoder_file)
    return root


def _refresh_new_files(template: Path, root: Path, engine: EngineConfig):
    """A copy of the published world, three new PNGs and a broken one, one refresh on `engine`."""
    world = shutil.copytree(template, root)
    with contextlib.chdir(world):
        params = load_params("params.yaml").model_copy(update={"engine": engine})
        publish(params)
        source = Path(params.ingest.sources[0].path)
        for i in range(3):
            write_png(source / f"new{i}.png", seed=100 + i)
        (source / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
        report = refresh(params, Path("state"))
        batch = EmbeddingSet.load(latest_batch(Path("state")))
        index = MilvusIndex(params.index)
        try:
            rows = index.count(where=SearchFilter(level="series"))
        finally:
            index.close()
    return report, batch, rows


def test_a_refresh_on_the_cluster_equals_a_local_refresh(ray_cluster, template, tmp_path):
    engine = EngineConfig(kind="ray", ray_address=ray_cluster.address, items_per_task=2)
    on_ray, ray_batch, ray_rows = _refresh_new_files(template, tmp_path / "ray", engine)
    local, local_batch, local_rows = _refresh_new_files(template, tmp_path / "local", EngineConfig())
    assert sorted(on_ray.added.values()) == [f"source/new{i}.png" for i in range(3)]
    assert (on_ray.added, on_ray.skipped, on_ray.deleted) == (local.added, local.skipped, local.deleted)
    assert on_ray.quarantined == local.quarantined and [p for p, _ in on_ray.quarantined] == ["source/broken.png"]
    assert ray_rows == local_rows == N_IMAGES + 3
    assert list(ray_batch.items.item_id) == list(local_batch.items.item_id)
    np.testing.assert_allclose(ray_batch.frame_vectors, local_batch.frame_vectors, atol=1e-4, rtol=0)
