"""Ingest on a real mixed folder: every good item in the manifest, every hostile file quarantined with a reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mixed_source import GOOD, HOSTILE, PHI_VALUES, build_mixed_source  # noqa: E402

from m3ret.config import IngestConfig, ReadConfig, SourceConfig  # noqa: E402
from m3ret.data.ingest import ingest  # noqa: E402

SALT = b"test-salt-0123456789abcdef"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mixed_source(tmp_path_factory.mktemp("mixed") / "source")


def _cfg(tmp: Path, source: Path, workers: int = 2) -> IngestConfig:
    return IngestConfig(
        sources=(SourceConfig(path=str(source), dataset="mixed"),),
        out=str(tmp / "manifest.parquet"),
        quarantine=str(tmp / "quarantine.csv"),
        cache_dir=str(tmp / "cache"),
        workers=workers,
    )


def _item_name(path: str, source: Path) -> str:
    return Path(path).relative_to(source).parts[0]


def test_good_items_listed_and_hostile_files_quarantined(tmp_path: Path, source: Path) -> None:
    manifest, quarantine = ingest(_cfg(tmp_path, source), ReadConfig(), SALT)
    assert {_item_name(p, source) for p in manifest.path} == GOOD
    reasons = {Path(p).name: r for p, r in zip(quarantine.path, quarantine.reason, strict=True)}
    assert set(reasons) == HOSTILE
    assert all(reason.strip() for reason in reasons.values())
    assert "burned" in reasons["burned_in.dcm"].lower() or "annotation" in reasons["burned_in.dcm"].lower()
    assert "60000" in reasons["huge.dcm"] or "limit" in reasons["huge.dcm"].lower()
    assert "empty" in reasons["empty.dcm"].lower() or "zero" in reasons["empty.dcm"].lower()
    # what was written is what was returned
    assert pd.read_parquet(tmp_path / "manifest.parquet").item_id.tolist() == manifest.item_id.tolist()
    assert len(pd.read_csv(tmp_path / "quarantine.csv")) == len(HOSTILE)


def test_manifest_facts(tmp_path: Path, source: Path) -> None:
    manifest, _ = ingest(_cfg(tmp_path, source), ReadConfig(), SALT)
    by_name = {_item_name(p, source): row for p, row in zip(manifest.path, manifest.to_dict("records"), strict=True)}
    assert by_name["series_a"]["kind"] == "volume" and by_name["series_a"]["n_frames"] == 4
    assert len(json.loads(by_name["series_a"]["paths"])) == 4
    assert by_name["series_a"]["modality"] == "ct"
    assert by_name["clip.mp4"]["kind"] == "video"
    assert by_name["volume.nii.gz"]["kind"] == "volume"
    assert by_name["png_named.dcm"]["reader"] == "image"  # decided by content, not extension
    assert by_name["photo.png"]["channels"] == 3
    assert manifest.item_id.is_unique and (manifest.content_hash.str.len() == 64).all()
    assert set(manifest.dataset) == {"mixed"}


def test_no_phi_leaves_ingest_and_ids_are_salted(tmp_path: Path, source: Path) -> None:
    manifest, _ = ingest(_cfg(tmp_path, source), ReadConfig(), SALT)
    dump = manifest.to_json() + (tmp_path / "manifest.parquet").read_bytes().decode("latin-1")
    for value in PHI_VALUES:
        assert value not in dump
    series = manifest[manifest.reader == "dicom"].set_index(
        manifest[manifest.reader == "dicom"].path.map(lambda p: _item_name(p, source))
    )
    a, b = series.loc["series_a"], series.loc["series_b"]
    assert a.patient_hash and b.patient_hash and a.patient_hash != b.patient_hash
    other, _ = ingest(_cfg(tmp_path / "other", source), ReadConfig(), b"another-salt-0123456789")
    assert a.patient_hash not in set(other.patient_hash)


def test_rerun_reuses_cached_work(tmp_path: Path, source: Path) -> None:
    cfg = _cfg(tmp_path, source)
    first, _ = ingest(cfg, ReadConfig(), SALT)
    cache_files = sorted((tmp_path / "cache").glob("*.json"))
    assert len(cache_files) == len(first)
    # mark one cache entry: if the second run decoded again, the mark would be gone
    marked = cache_files[0]
    entries = json.loads(marked.read_text())
    entries[0][1]["body_part"] = "from-cache"
    marked.write_text(json.dumps(entries))
    second, _ = ingest(cfg, ReadConfig(), SALT)
    assert (second.body_part == "from-cache").sum() == 1
    assert second.item_id.tolist() == first.item_id.tolist()


def test_duplicate_content_is_one_item_and_reported(tmp_path: Path, source: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "photo_again.png").write_bytes((source / "photo.png").read_bytes())
    cfg = _cfg(tmp_path, source)
    cfg = IngestConfig(**{**cfg.__dict__, "sources": (*cfg.sources, SourceConfig(path=str(copy), dataset="copy"))})
    manifest, quarantine = ingest(cfg, ReadConfig(), SALT)
    assert len(manifest) == len(GOOD)
    dup = quarantine[quarantine.path.str.endswith("photo_again.png")]
    assert len(dup) == 1 and "duplicate" in dup.reason.iloc[0]


def test_serial_and_parallel_agree(tmp_path: Path, source: Path) -> None:
    serial, q1 = ingest(_cfg(tmp_path / "s", source, workers=1), ReadConfig(), SALT)
    parallel, q2 = ingest(_cfg(tmp_path / "p", source, workers=2), ReadConfig(), SALT)
    pd.testing.assert_frame_equal(serial, parallel)
    assert sorted(q1.path) == sorted(q2.path)


def test_labeled_sources_carry_labels_roles_and_groups(tmp_path: Path) -> None:
    """A manifest folder (like medbench) and a MedMNIST npz: labels and roles reach the manifest, groups are hashed."""
    from PIL import Image

    bench = tmp_path / "bench"
    (bench / "imgs").mkdir(parents=True)
    rows = ["dataset,path,label,group_id,role,modality"]
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, size=(20, 20), dtype=np.uint8)).save(bench / "imgs" / f"{i}.png")
        rows.append(f"toy,imgs/{i}.png,{'ab'[i % 2]},patient-{i // 2},{'query' if i == 0 else 'gallery'},xray")
    rows.append("toy,imgs/missing.png,a,patient-9,gallery,xray")
    (bench / "manifest.csv").write_text("\n".join(rows) + "\n")
    npz = tmp_path / "tinymnist.npz"
    images = rng.integers(0, 255, size=(3, 28, 28), dtype=np.uint8)
    labels = np.array([[0], [1], [1]])
    np.savez(
        npz,
        train_images=images[:2],
        train_labels=labels[:2],
        val_images=images[:0],
        val_labels=labels[:0],
        test_images=images[2:],
        test_labels=labels[2:],
    )
    cfg = IngestConfig(
        sources=(SourceConfig(path=str(bench)), SourceConfig(path=str(npz), dataset="tiny", modality="ultrasound")),
        out=str(tmp_path / "m.parquet"),
        quarantine=str(tmp_path / "q.csv"),
        cache_dir=str(tmp_path / "cache"),
    )
    manifest, quarantine = ingest(cfg, ReadConfig(), SALT)
    toy = manifest[manifest.dataset == "toy"].sort_values("path")
    assert toy.label.tolist() == ["a", "b", "a", "b"] and toy.role.tolist() == [
        "query",
        "gallery",
        "gallery",
        "gallery",
    ]
    assert (
        set(toy.modality) == {"xray"} and toy.group_hash.nunique() == 2 and "patient-0" not in toy.group_hash.tolist()
    )
    assert quarantine.path.str.endswith("missing.png").sum() == 1
    tiny = manifest[manifest.dataset == "tiny"].sort_values("entry")
    assert tiny.entry.tolist() == ["test:0", "train:0", "train:1"]
    assert tiny.role.tolist() == ["query", "gallery", "gallery"] and tiny.label.tolist() == ["1", "0", "1"]
    assert set(tiny.modality) == {"ultrasound"} and tiny.item_id.is_unique
