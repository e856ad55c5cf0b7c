"""Each flow run for real under the session's Prefect test harness, on the tiny world; results and artifacts checked
through the returned values and the Prefect API."""

from __future__ import annotations

import json
import math
from pathlib import Path
from uuid import UUID

import numpy as np
from PIL import Image
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from tiny_world import N_IMAGES, write_png

from flows.drift_flow import drift_flow
from flows.pretrain_flow import pretrain_flow
from flows.refresh_flow import refresh_flow
from m3ret.config import load_params
from m3ret.index.ledger import latest_batch
from m3ret.stages.refresh import refresh


def _artifact(flow_run_id: UUID, key: str) -> str:
    """The markdown of the artifact `key` that flow run created (exactly one)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    assert len(found) == 1, found
    return found[0].data


def test_pretrain_flow_trains_in_process_and_publishes_metrics(world_dir):
    state = pretrain_flow("params.yaml", max_steps=2, return_state=True)
    metrics = state.result()
    assert metrics["step"] == 2 and metrics["images_seen"] == 8
    assert math.isfinite(metrics["train/loss"])
    assert Path("models/pretrain/encoder.pt").stat().st_size > 0
    markdown = _artifact(state.state_details.flow_run_id, "m3ret-pretrain")
    assert "| train/loss |" in markdown and "| step | 2 |" in markdown


def test_pretrain_flow_refuses_a_profile_whose_frames_are_not_there(world_dir):
    state = pretrain_flow("params.yaml", profile="gpu-vit-small", max_steps=1, return_state=True)
    assert state.is_failed()
    assert "preprocess.size=224" in state.message and "32 px" in state.message
    merged = load_params(Path("reports/pretrain/params.yaml"))  # the profile applied over params.yaml
    assert (merged.pretrain.objective, merged.pretrain.model.name) == ("simdino", "vit_small_patch16_224")
    assert merged.ingest.sources[0].path == "source"


def test_refresh_flow_publishes_the_first_model_then_adds_new_files(world_dir, tmp_path):
    state_dir = str(tmp_path / "state")
    first = refresh_flow("params.yaml", state_dir, return_state=True)
    result = first.result()
    assert result["rebuild"]["published"]
    assert result["refresh"]["added"] == {} and result["refresh"]["skipped"] == N_IMAGES
    gate = json.loads(Path("models/index_gate.json").read_text())
    assert gate["collection"] == result["rebuild"]["collection"]
    assert "New model" in _artifact(first.state_details.flow_run_id, "m3ret-refresh")

    write_png(Path("source/new.png"), seed=900)
    Path("source/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    second = refresh_flow("params.yaml", state_dir, return_state=True)
    result = second.result()
    assert result["rebuild"] is None
    assert list(result["refresh"]["added"].values()) == ["source/new.png"]
    assert [path for path, _ in result["refresh"]["quarantined"]] == ["source/broken.png"]
    markdown = _artifact(second.state_details.flow_run_id, "m3ret-refresh")
    assert "| 1 | 24 | 1 | 0 |" in markdown and "| 1 |" in markdown and "broken.png" not in markdown


def test_drift_flow_compares_the_latest_batch_and_can_start_a_refresh(world, tmp_path):
    state_dir = tmp_path / "state"
    empty = drift_flow("params.yaml", str(state_dir), return_state=True)
    assert empty.result() is None
    assert "nothing to compare" in _artifact(empty.state_details.flow_run_id, "m3ret-drift")

    # a batch unlike the reference: flat noise instead of stripes
    rng = np.random.default_rng(7)
    for i in range(16):
        pixels = rng.integers(0, 256, size=(40, 40), dtype=np.uint8)
        Image.fromarray(pixels).save(Path("source") / f"noise{i:02d}.png")
    refresh(world, state_dir)
    batch = latest_batch(state_dir)

    state = drift_flow("params.yaml", str(state_dir), trigger_refresh=True, return_state=True)
    summary = state.result()
    assert summary["batch"] == batch.name
    overall = summary["scopes"][0]
    assert (overall["scope"], overall["status"], overall["n_current"]) == ("all", "tested", 16)
    assert summary["drifted"] and overall["drifted"], overall
    html = Path(summary["files"]["html"])
    assert html.parent == Path(world.drift.out) / batch.name and html.stat().st_size > 0
    markdown = _artifact(state.state_details.flow_run_id, "m3ret-drift")
    assert str(html.resolve()) in markdown and "**drift**" in markdown
    # drifted + trigger_refresh: the refresh flow ran as a subflow and found nothing new
    assert summary["refresh"]["refresh"]["added"] == {}
