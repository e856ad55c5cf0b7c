"""`dvc repro` end to end on the demo corpus in a temporary git repo, and reruns limited to what changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from m3ret.data.frame_store import FrameStore

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _stale(repo: Path, *targets: str) -> dict:
    """`dvc status --json` without the sources stage's standing "always changed" (it fingerprints the sources on
    every repro); empty when everything is up to date."""
    status = json.loads(_run(["dvc", "status", "--json", *targets], repo))
    return {stage: why for stage, why in status.items() if why != ["always changed"]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    shutil.copytree(ROOT / "m3ret", repo / "m3ret", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo_data"].update(n_videos=1, video_frames=8)
    params["preprocess"].update(size=32, max_slices_per_plane=8)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "init"], repo)
    return repo


def test_repro_builds_every_data_stage(repo: Path) -> None:
    _run(["dvc", "repro", "preprocess", "split"], repo)
    manifest = pd.read_parquet(repo / "data/manifest.parquet")
    assert {"image", "volume", "video"} <= set(manifest.kind)
    assert {"dicom", "nifti", "video", "image"} <= set(manifest.reader)
    quarantine = pd.read_csv(repo / "reports/quarantine.csv")
    assert quarantine.path.str.contains("broken").sum() >= 3 and quarantine.reason.notna().all()
    store = FrameStore(repo / "data/frames")
    assert store.size == 32 and set(store.table.item_id) == set(manifest.item_id)
    splits = pd.read_parquet(repo / "data/splits.parquet")
    assert set(splits.item_id) == set(manifest.item_id)
    assert (splits.groupby("group").split.nunique() == 1).all()
    metrics = json.loads((repo / "reports/ingest.json").read_text())
    assert metrics["items"] == len(manifest) and metrics["quarantined"] == len(quarantine)


def test_changing_one_param_reruns_only_dependent_stages(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["preprocess"]["size"] = 24
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro", "preprocess", "split"], repo)
    assert "Running stage 'preprocess'" in out
    for stage in ("demo_data", "ingest", "split"):
        assert f"Running stage '{stage}'" not in out
    assert FrameStore(repo / "data/frames").size == 24
    assert _stale(repo, "preprocess", "split") == {}


def test_outputs_round_trip_through_the_remote(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    _run(["dvc", "remote", "add", "-f", "-d", "store", str(remote)], repo)
    _run(["dvc", "push", "preprocess", "split"], repo)
    assert any(remote.rglob("*"))
    before = pd.read_parquet(repo / "data/splits.parquet")
    shutil.rmtree(repo / "data/frames")
    (repo / "data/splits.parquet").unlink()
    shutil.rmtree(repo / ".dvc/cache")
    _run(["dvc", "pull", "preprocess", "split"], repo)
    pd.testing.assert_frame_equal(pd.read_parquet(repo / "data/splits.parquet"), before)
    assert len(FrameStore(repo / "data/frames")) > 0


def test_full_pipeline_trains_indexes_evaluates_and_serves_search(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"].update(epochs=1.0, batch_size=32, checkpoint_every=1000)
    params["pretrain"]["model"].update(img_size=32, patch_size=8)
    params["drift"].update(min_rows=16)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "repro"], repo)

    embed = json.loads((repo / "reports/embed.json").read_text())
    index = json.loads((repo / "reports/index.json").read_text())
    assert index["collection"] == f"m3ret_{embed['model_version']}"
    assert index["rows"] == embed["frames"] + embed["items"]
    gate = json.loads((repo / "reports/evaluate/gate.json").read_text())
    assert gate["passed"] and gate["published"] == index["collection"]
    metrics = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert {"splits_encoder/mAP@10", "splits_raw_pixels/mAP@10", "splits_random_init/mAP@10"} <= set(metrics)
    assert (repo / "reports/evaluate/retrieval_grid.png").stat().st_size > 0
    drift = json.loads((repo / "reports/drift/drift.json").read_text())
    assert drift["scopes"][0]["scope"] == "all" and (repo / "reports/drift/drift.html").exists()

    # a file that is in the index comes back first, through the alias, with its stored metadata
    manifest = pd.read_parquet(repo / "data/manifest.parquet")
    image = manifest[manifest.kind == "image"].iloc[0]
    out = _run(["m3ret", "search", image.path, "--k", "3", "--json", "--grid", "grid.png"], repo)
    hits = json.loads(out[out.index("{") : out.rindex("}") + 1])["hits"]
    assert hits[0]["item_id"] == image.item_id and hits[0]["score"] > 0.999
    assert (repo / "grid.png").exists()
    assert _stale(repo) == {}

    # a code change reruns pretrain, which resumes at its last step: nothing to train, and its metrics are kept
    trained = json.loads((repo / "reports/pretrain/metrics.json").read_text())
    with (repo / "m3ret/train/schedule.py").open("a") as f:
        f.write("# edited\n")
    assert "Running stage 'pretrain'" in _run(["dvc", "repro", "pretrain"], repo)
    assert json.loads((repo / "reports/pretrain/metrics.json").read_text()) == trained
    assert _stale(repo, "pretrain") == {}


def _picture(path: Path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)


def test_a_file_added_to_a_source_outside_the_repository_reruns_ingest(repo: Path, tmp_path: Path) -> None:
    external = tmp_path / "scans"
    external.mkdir()
    _picture(external / "first.png", seed=1)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["sources"].append({"path": str(external), "dataset": "scans"})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "repro", "ingest"], repo)
    assert (pd.read_parquet(repo / "data/manifest.parquet").dataset == "scans").sum() == 1

    assert "Running stage 'ingest'" not in _run(["dvc", "repro", "ingest"], repo)  # nothing changed: no rerun
    _picture(external / "second.png", seed=2)
    assert "Running stage 'ingest'" in _run(["dvc", "repro", "ingest"], repo)
    assert (pd.read_parquet(repo / "data/manifest.parquet").dataset == "scans").sum() == 2
    assert "scans" not in (repo / "data/sources.json").read_text()  # a digest and counts, no path
