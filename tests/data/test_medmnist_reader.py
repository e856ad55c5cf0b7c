"""MedMNIST npz: entries, roles (test = query, train/val = gallery), labels, 2D/RGB/3D frames, the real files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from m3ret.data.errors import UnreadableInputError, UnsupportedInputError
from m3ret.data.medmnist_reader import iter_medmnist, medmnist_entries, read_medmnist_entry

MEDMNIST = Path("/work/shared/data/medbench/medmnist")
COUNTS = {"train": 5, "val": 2, "test": 3}


def _write(path: Path, image_shape: tuple[int, ...], n_labels: int = 1) -> Path:
    arrays = {}
    for subset, n in COUNTS.items():
        # each image is filled with a value naming its subset and index, so reads can be traced back
        base = {"train": 0, "val": 100, "test": 200}[subset]
        images = np.stack([np.full(image_shape, base + i, np.uint8) for i in range(n)])
        arrays[f"{subset}_images"] = images
        arrays[f"{subset}_labels"] = (np.arange(n * n_labels).reshape(n, n_labels) % 4).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def test_2d_grey_entries_roles_and_labels(tmp_path: Path) -> None:
    path = _write(tmp_path / "tiny.npz", (8, 8))
    entries = medmnist_entries(path)
    assert entries[:2] == ["train:0", "train:1"] and entries[-1] == "test:2" and len(entries) == 10
    items = list(iter_medmnist(path))
    assert [entry for entry, _, _ in items] == entries
    assert Counter(meta["role"] for _, _, meta in items) == {"gallery": 7, "query": 3}
    assert {meta["subset"] for _, _, meta in items if meta["role"] == "query"} == {"test"}
    entry, frames, meta = items[8]
    assert entry == "test:1" and frames.shape == (1, 8, 8, 1) and frames.dtype == np.uint8
    assert np.all(frames == 201) and meta["label"] == "1" and meta["kind"] == "image"
    json.dumps(meta)


def test_rgb_multilabel(tmp_path: Path) -> None:
    path = _write(tmp_path / "rgb.npz", (6, 6, 3), n_labels=3)
    frames, meta = read_medmnist_entry(path, "train:1")
    assert frames.shape == (1, 6, 6, 3) and meta["channels"] == 3
    assert meta["label"] == "3,0,1"  # labels row 1 of arange(15).reshape(5, 3) % 4


def test_3d_volumes(tmp_path: Path) -> None:
    path = _write(tmp_path / "vol3d.npz", (4, 4, 4))
    frames, meta = read_medmnist_entry(path, "val:1")
    assert frames.shape == (4, 4, 4, 1) and meta["kind"] == "volume" and meta["n_frames"] == 4
    assert np.all(frames == 101) and meta["role"] == "gallery"


def test_read_entry_matches_iteration_and_is_a_copy(tmp_path: Path) -> None:
    path = _write(tmp_path / "tiny.npz", (8, 8))
    by_entry = {entry: (frames, meta) for entry, frames, meta in iter_medmnist(path)}
    frames, meta = read_medmnist_entry(path, "test:2")
    np.testing.assert_array_equal(frames, by_entry["test:2"][0])
    assert meta == by_entry["test:2"][1]
    frames[:] = 0  # callers may write to their frames without touching the cached arrays
    assert np.all(read_medmnist_entry(path, "test:2")[0] == 202)


@pytest.mark.parametrize("entry", ["test:3", "train:-1", "extra:0", "test"])
def test_unknown_entry_is_unreadable(tmp_path: Path, entry: str) -> None:
    with pytest.raises(UnreadableInputError, match="entry"):
        read_medmnist_entry(_write(tmp_path / "tiny.npz", (8, 8)), entry)


def test_other_npz_layouts_are_unsupported(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.zeros(3))
    with pytest.raises(UnsupportedInputError, match="train"):
        medmnist_entries(tmp_path / "other.npz")
    np.savez(tmp_path / "nolabels.npz", train_images=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(UnsupportedInputError, match="train_labels"):
        medmnist_entries(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "float.npz", train_images=np.zeros((3, 4, 4)), train_labels=np.zeros(3))
    with pytest.raises(UnsupportedInputError, match="uint8"):
        list(iter_medmnist(tmp_path / "float.npz"))


@pytest.mark.skipif(not MEDMNIST.is_dir(), reason="shared MedMNIST files not present")
def test_real_breastmnist_counts() -> None:
    path = MEDMNIST / "breastmnist.npz"
    items = [(entry, frames.shape, meta["role"], meta["label"]) for entry, frames, meta in iter_medmnist(path)]
    assert len(items) == 546 + 78 + 156
    assert Counter(role for *_, role, _ in items) == {"gallery": 546 + 78, "query": 156}
    assert {shape for _, shape, _, _ in items} == {(1, 28, 28, 1)}
    assert {label for *_, label in items} == {"0", "1"}


@pytest.mark.skipif(not MEDMNIST.is_dir(), reason="shared MedMNIST files not present")
def test_real_adrenalmnist3d_entries_and_one_volume() -> None:
    path = MEDMNIST / "adrenalmnist3d.npz"
    assert len(medmnist_entries(path)) == 1188 + 98 + 298
    frames, meta = read_medmnist_entry(path, "test:0")
    assert frames.shape == (28, 28, 28, 1) and meta["kind"] == "volume" and meta["role"] == "query"
    assert meta["label"] in {"0", "1"}


def test_a_subset_that_cannot_be_decompressed_fails_every_entry_without_decompressing_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from m3ret.data import medmnist_reader

    path = tmp_path / "broken.npz"
    n = 40
    images = np.random.default_rng(0).integers(0, 255, (n, 32, 32), dtype=np.uint8)
    np.savez_compressed(path, train_images=images, train_labels=np.zeros((n, 1), np.uint8))
    data = bytearray(path.read_bytes())
    middle = len(data) // 3  # inside the compressed train_images data, past its npy header
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))

    calls: list[str] = []
    load_subset = medmnist_reader._load_subset
    monkeypatch.setattr(medmnist_reader, "_load_subset", lambda p, s: calls.append(s) or load_subset(p, s))
    for entry in ("train:0", "train:1", "train:2"):
        with pytest.raises(UnreadableInputError, match="cannot decompress the train arrays"):
            read_medmnist_entry(path, entry)
    assert calls == ["train"]
