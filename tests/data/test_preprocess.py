"""Preprocess: manifest items to letterboxed uint8 frames in shards, linked to their items."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dicom_factory import write_ct_series  # noqa: E402
from mixed_source import build_mixed_source  # noqa: E402

from m3ret.config import IngestConfig, PreprocessConfig, ReadConfig, SourceConfig  # noqa: E402
from m3ret.data.frame_store import FrameStore  # noqa: E402
from m3ret.data.ingest import ingest  # noqa: E402
from m3ret.data.preprocess import item_frames, preprocess, to_rgb  # noqa: E402
from m3ret.data.readers import read  # noqa: E402
from m3ret.data.resize import letterbox  # noqa: E402


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("prep")
    source = build_mixed_source(tmp / "source")
    cfg = IngestConfig(
        sources=(SourceConfig(path=str(source)),),
        out=str(tmp / "m.parquet"),
        quarantine=str(tmp / "q.csv"),
        cache_dir=str(tmp / "cache"),
    )
    return ingest(cfg, ReadConfig(), b"salt-salt-salt-salt")[0]


def test_frames_per_item_and_store_round_trip(tmp_path: Path, manifest: pd.DataFrame) -> None:
    cfg = PreprocessConfig(
        out=str(tmp_path / "frames"), size=32, slice_stride=1, drop_blank_slices=False, shard_frames=7
    )
    frames, quarantine = preprocess(manifest, cfg, ReadConfig())
    assert quarantine.empty
    counts = frames.groupby("item_id").size()
    expected = dict(zip(manifest.item_id, manifest.n_frames, strict=True))
    video = manifest[manifest.kind == "video"].item_id.iloc[0]
    expected[video] = ReadConfig().video.num_frames
    assert counts.to_dict() == expected
    store = FrameStore(tmp_path / "frames")
    assert len(store) == len(frames) and store.size == 32
    assert len(list((tmp_path / "frames").glob("shard-*.npy"))) == -(-len(frames) // 7)
    batch = store.get(np.arange(len(store))[::-1])
    assert batch.shape == (len(frames), 32, 32, 3) and batch.dtype == np.uint8
    # grey items are replicated to 3 identical channels
    grey_ids = set(manifest[manifest.channels == 1].item_id)
    grey_rows = frames.index[frames.item_id.isin(grey_ids)].to_numpy()
    grey = store.get(grey_rows)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    # video frames keep their timestamps, in order
    stamps = frames[frames.item_id == video].timestamp.to_numpy()
    assert np.all(np.diff(stamps) > 0)


def test_stride_and_cap_limit_slices(tmp_path: Path, manifest: pd.DataFrame) -> None:
    cfg = PreprocessConfig(
        out=str(tmp_path / "f"),
        size=16,
        slice_stride=2,
        max_slices_per_plane=3,
        drop_blank_slices=False,
        planes=("axial", "coronal", "sagittal"),
    )
    frames, _ = preprocess(manifest, cfg, ReadConfig())
    nifti = manifest[manifest.reader == "nifti"].item_id.iloc[0]
    per_plane = frames[frames.item_id == nifti].groupby("plane").size().to_dict()
    assert per_plane == {"axial": 3, "coronal": 3, "sagittal": 3}


def test_item_frames_planes_and_blank_slices() -> None:
    volume = np.zeros((10, 8, 6, 1), dtype=np.uint8)
    volume[2:5, 2:6, 1:5] = 200  # a block in slices 2..4; the rest is blank
    meta = {"kind": "volume", "spacing": [3.0, 1.0, 1.0]}
    cfg = PreprocessConfig(size=12, slice_stride=1, planes=("axial",), drop_blank_slices=True)
    out, records = item_frames(volume, meta, cfg)
    assert [r["frame_index"] for r in records] == [2, 3, 4]
    assert out.shape == (3, 12, 12, 3)
    cfg = PreprocessConfig(size=12, planes=("coronal",), drop_blank_slices=False)
    out, records = item_frames(volume, meta, cfg)
    assert len(records) == 8 and {r["plane"] for r in records} == {"coronal"}
    # coronal cut of 10 slices x 3 mm vs 6 px x 1 mm: taller than wide, superior (last slice) at the top
    frame = out[3, :, :, 0]
    rows = np.flatnonzero(frame.max(axis=1))
    assert rows.min() > 0 and rows.max() < 11 and rows.mean() > 6


def test_letterbox_keeps_aspect_and_to_rgb() -> None:
    wide = np.full((10, 40, 1), 255, dtype=np.uint8)
    boxed = letterbox(wide, 20)
    assert boxed.shape == (20, 20, 1)
    assert boxed[:, :, 0].max(axis=1).tolist().count(255) == 5
    tall = letterbox(np.full((8, 4, 3), 200, dtype=np.uint8), 16)
    assert (tall[:, 4:12] == 200).all() and (tall[:, :4] == 0).all() and (tall[:, 12:] == 0).all()
    colour = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    colour[..., 0] = 255
    assert (to_rgb(colour, "replicate") == colour).all()
    grey = to_rgb(colour, "grey")
    assert (grey == 76).all()


def test_npz_entries_are_read_on_the_one_reader_path_and_each_subset_decompressed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_medmnist_reader import COUNTS, _write

    from m3ret.data import medmnist_reader

    flat, cube = _write(tmp_path / "flat.npz", (8, 8)), _write(tmp_path / "cube3d.npz", (4, 6, 6))
    cfg = IngestConfig(
        sources=(SourceConfig(path=str(flat)), SourceConfig(path=str(cube))),
        out=str(tmp_path / "m.parquet"),
        quarantine=str(tmp_path / "q.csv"),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
    )
    manifest, quarantine = ingest(cfg, ReadConfig(), b"salt-salt-salt-salt")
    assert quarantine.empty and len(manifest) == 2 * sum(COUNTS.values())

    loads: list[tuple[str, str]] = []
    load_subset = medmnist_reader._load_subset
    monkeypatch.setattr(
        medmnist_reader,
        "_load_subset",
        lambda path, subset: loads.append((Path(path).name, subset)) or load_subset(path, subset),
    )
    medmnist_reader._cached_subset.cache_clear()
    prep = PreprocessConfig(out=str(tmp_path / "frames"), size=8, workers=1, drop_blank_slices=False)
    frames, quarantine = preprocess(manifest, prep, ReadConfig())
    assert quarantine.empty
    assert sorted(loads) == sorted((f.name, s) for f in (flat, cube) for s in COUNTS)  # each subset once
    per_item = frames.groupby("item_id").size()
    kinds = manifest.set_index("item_id")["kind"]
    assert set(per_item[kinds[per_item.index] == "image"]) == {1} and set(
        per_item[kinds[per_item.index] == "volume"]
    ) == {4}
    # the stored frame of an entry is what the reader gives for it, prepared by `item_frames`
    row = manifest[(manifest.path == str(cube)) & (manifest.entry == "test:2")].iloc[0]
    expected, _ = item_frames(*medmnist_reader.read_medmnist_entry(cube, "test:2"), prep)
    ids = frames.frame_id[frames.item_id == row.item_id].to_numpy()
    np.testing.assert_array_equal(FrameStore(tmp_path / "frames").get(ids), expected)


def test_blank_slices_judged_a_few_slices_at_a_time(monkeypatch):
    """Slab-wise std (no float64 copy of the whole volume) keeps exactly the slices one std over all would."""
    from m3ret.data import preprocess as stage

    rng = np.random.default_rng(3)
    volume = rng.integers(0, 256, (40, 9, 11, 1), dtype=np.uint8)
    volume[::3] = 7  # blank slices
    volume[1] = 7
    volume[1, 0, :3] = 12  # nearly blank: std below BLANK_STD
    cfg = PreprocessConfig(slice_stride=1, max_slices_per_plane=64)
    index = np.arange(len(volume))
    whole = index[volume.reshape(len(volume), -1).std(axis=1) >= stage.BLANK_STD]
    monkeypatch.setattr(stage, "_STD_CHUNK_VALUES", 250)  # 2 slices per slab, the last one short
    np.testing.assert_array_equal(stage._select_slices(volume, cfg), whole)


def test_a_single_slice_keeps_its_pixel_aspect_like_its_volume(tmp_path: Path) -> None:
    """Oblong pixels (rows 1.5 mm apart, columns 0.75 mm): one DICOM slice is letterboxed with the same proportions as
    the same slice inside its series, so a query slice looks like its own series' frame."""
    hu = np.zeros((3, 32, 48), dtype=np.int16) - 1000
    hu[:, 8:24, 12:36] = 400  # a block 16 rows x 24 columns: 24 mm x 18 mm
    paths = write_ct_series(tmp_path / "series", hu, spacing=(2.5, 1.5, 0.75))
    cfg = PreprocessConfig(size=32, drop_blank_slices=False)
    series_frames, meta = read(tmp_path / "series", ReadConfig())
    volume, _records = item_frames(series_frames, meta, cfg)
    single, single_meta = read(paths[1], ReadConfig())
    one, _ = item_frames(single, single_meta, cfg)
    assert single_meta["spacing"][1:] == [1.5, 0.75]
    assert np.array_equal(one[0], volume[1])
    bright = np.argwhere(one[0, ..., 0] > 128)
    rows, cols = np.ptp(bright[:, 0]) + 1, np.ptp(bright[:, 1]) + 1
    assert rows > cols  # 24 mm tall, 18 mm wide: taller than wide, as in the body
