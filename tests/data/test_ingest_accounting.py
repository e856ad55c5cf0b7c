"""The accounting invariant, file by file: every input file ends exactly once in the manifest (as a member of an
item) or in the quarantine (with its reason, and its series' item id when it belonged to one), after ingest and
after preprocess, on pydicom's and pydicom-data's files plus hostile series written here."""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dicom_factory import make_dataset, write_ct_series  # noqa: E402

from m3ret.config import IngestConfig, PreprocessConfig, ReadConfig, SourceConfig  # noqa: E402
from m3ret.data.ingest import ingest  # noqa: E402
from m3ret.data.preprocess import preprocess  # noqa: E402
from m3ret.data.sources import is_document  # noqa: E402

SALT = b"accounting-salt-0123456789"
PACKAGED = [Path(pydicom.__file__).parent / "data" / "test_files"]
try:
    import data_store  # pydicom-data

    PACKAGED.append(Path(data_store.__file__).parent / "data")
except ImportError:  # pragma: no cover - pydicom-data is a dependency; without it the test uses pydicom's files
    pass
MAX_PACKAGED_BYTES = 3 * 2**20  # keeps the run short: the few very large pydicom-data files add no new case


def _hostile(root: Path) -> dict[str, Path]:
    """Series and files that used to lose files: a truncated slice in a good series, a duplicated instance, a
    preamble-less dataset, and a series under a folder named after its patient."""
    hu = np.stack([np.full((16, 16), 20 * t, np.int16) for t in range(8)])
    series = write_ct_series(root / "Doe_Jane_MRN123456" / "ct", hu)
    whole = series[4].read_bytes()
    series[4].write_bytes(whole[: len(whole) - 100])
    duplicated = write_ct_series(root / "dup", hu[:4], seed=1)
    copy = root / "dup" / "zz_copy.dcm"
    shutil.copy(duplicated[0], copy)
    bare = make_dataset(np.arange(64, dtype=np.uint16).reshape(8, 8), modality="MR")
    bare.file_meta = pydicom.dataset.FileMetaDataset()
    bare.preamble = None
    bare.save_as(root / "bare.dcm", enforce_file_format=False, implicit_vr=True, little_endian=True)
    return {"truncated": series[4], "series": series[0], "copy": copy, "bare": root / "bare.dcm"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("accounting") / "corpus"
    for i, folder in enumerate(PACKAGED):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.stat().st_size <= MAX_PACKAGED_BYTES:
                target = root / f"packaged{i}" / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
    return root, _hostile(root / "hostile")


def _inputs(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() and not is_document(p)}


def _member_counts(manifest: pd.DataFrame) -> Counter:
    # an npz file holds many items; every other file belongs to exactly one
    return Counter(p for paths, reader in zip(manifest.paths, manifest.reader, strict=True) if reader != "npz"
                   for p in json.loads(paths))  # fmt: skip


def test_every_file_ends_once_in_the_manifest_or_the_quarantine(corpus, tmp_path) -> None:
    root, hostile = corpus
    cfg = IngestConfig(
        sources=(SourceConfig(path=str(root), dataset="acc"),),
        out=str(tmp_path / "manifest.parquet"),
        quarantine=str(tmp_path / "quarantine.csv"),
        cache_dir=str(tmp_path / "cache"),
        workers=2,
    )
    manifest, quarantine = ingest(cfg, ReadConfig(), SALT)
    members = _member_counts(manifest)
    quarantined = Counter(quarantine.path)
    assert not [p for p, n in members.items() if n > 1], "a file is a member of two items"
    assert not [p for p, n in quarantined.items() if n > 1], "a file is quarantined twice"
    assert not set(members) & set(quarantined), "a file is both an item's member and quarantined"
    inputs = _inputs(root)
    assert set(members) | set(quarantined) == inputs, f"lost: {sorted(inputs - set(members) - set(quarantined))}"
    assert quarantine.reason.str.len().gt(0).all()

    # the truncated slice is quarantined with its series' item id; the series keeps its other 7 slices
    truncated = quarantine.set_index("path").loc[str(hostile["truncated"])]
    series = manifest[manifest.item_id == truncated.item_id].iloc[0]
    assert series.n_frames == 7 and series.slice_gaps == 1 and str(hostile["series"]) in json.loads(series.paths)
    # the copy of an instance is reported, not stacked: that series holds 4 slices
    duplicate = quarantine.set_index("path").loc[str(hostile["copy"])]
    assert "duplicate instance" in duplicate.reason
    assert manifest.set_index("item_id").loc[duplicate.item_id].n_frames == 4
    assert str(hostile["bare"]) in members

    # preprocess keeps the same accounting: its quarantine names files of the manifest's items, with their item id
    frames, rejected = preprocess(manifest, PreprocessConfig(out=str(tmp_path / "frames"), size=16), ReadConfig())
    assert set(rejected.path) <= set(members) and set(rejected.item_id) <= set(manifest.item_id)
    done = set(frames.item_id) | set(rejected.item_id)
    assert done == set(manifest.item_id)
