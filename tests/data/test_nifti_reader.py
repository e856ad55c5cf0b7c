"""read_nifti: canonical RAS display orientation, 4D stacking, HU detection, limits and broken files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from m3ret.config import LimitsConfig, ReadConfig
from m3ret.data.errors import InputTooLargeError, UnreadableInputError
from m3ret.data.nifti_reader import read_nifti

CFG = ReadConfig()
# RAS voxel grid (X=5, Y=6, Z=3) with spacing x=2, y=3, z=4 mm and one bright voxel at RAS index (1, 4, 2)
SHAPE, SPACING, BRIGHT = (5, 6, 3), (2.0, 3.0, 4.0), (1, 4, 2)


def _ras_volume() -> np.ndarray:
    data = np.zeros(SHAPE, np.int16)
    data[BRIGHT] = 100
    return data


def _stored(orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """The RAS volume stored in another voxel order, with the affine that keeps every voxel's world position."""
    data = _ras_volume()
    (nx, ny, _), (sx, sy, sz) = SHAPE, SPACING
    if orientation == "RAS":
        return data, np.diag([sx, sy, sz, 1.0])
    if orientation == "LAS":  # i' = X-1-i  ->  x = -sx * i' + sx * (X-1)
        return data[::-1], np.array([[-sx, 0, 0, sx * (nx - 1)], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1.0]])
    if orientation == "LPS":
        affine = np.array([[-sx, 0, 0, sx * (nx - 1)], [0, -sy, 0, sy * (ny - 1)], [0, 0, sz, 0], [0, 0, 0, 1.0]])
        return data[::-1, ::-1], affine
    if orientation == "SAR":  # stored axes (k, j, i)
        return data.transpose(2, 1, 0), np.array([[0, 0, sx, 0], [0, sy, 0, 0], [sz, 0, 0, 0], [0, 0, 0, 1.0]])
    raise ValueError(orientation)


def _save(tmp_path: Path, data: np.ndarray, affine: np.ndarray, name: str = "vol.nii") -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.mark.parametrize("orientation", ["RAS", "LAS", "LPS", "SAR"])
def test_bright_voxel_lands_at_its_ras_position(tmp_path: Path, orientation: str) -> None:
    data, affine = _stored(orientation)
    path = _save(tmp_path, data, affine)
    assert "".join(nib.aff2axcodes(affine)) == orientation
    frames, meta = read_nifti(path, CFG)
    nx, ny, nz = SHAPE
    assert frames.shape == (nz, ny, nx, 1) and frames.dtype == np.uint8
    i, j, k = BRIGHT
    # slice k, anterior at the top: row = Y-1-j, column = i (patient left on the left)
    assert np.unravel_index(np.argmax(frames), frames.shape) == (k, ny - 1 - j, i, 0)
    assert frames.max() == 255 and np.count_nonzero(frames) == 1
    assert meta["spacing"] == [SPACING[2], SPACING[1], SPACING[0]]
    assert meta["kind"] == "volume" and meta["modality"] == "" and meta["n_frames"] == nz
    assert meta["header"]["orientation"] == orientation and meta["header"]["shape"] == list(data.shape)
    np.testing.assert_allclose(meta["affine"], np.diag([*SPACING, 1.0]))
    json.dumps(meta)


def test_oblique_affine_is_reoriented_to_closest_canonical(tmp_path: Path) -> None:
    angle = np.deg2rad(70)  # stored axis 0 points mostly anterior, axis 1 mostly left
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(SPACING)
    path = _save(tmp_path, _ras_volume(), affine)
    frames, meta = read_nifti(path, CFG)
    expected = nib.as_closest_canonical(nib.load(path))
    assert expected.shape == (6, 5, 3)
    assert frames.shape == (3, 5, 6, 1)
    np.testing.assert_allclose(meta["affine"], expected.affine)
    assert meta["spacing"] == pytest.approx([4.0, 2.0, 3.0])


def test_4d_stacks_volumes_volume_major(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 3, 2), np.float32)
    for v in range(2):
        for z in range(3):
            data[:, :, z, v] = 10 * v + z
    frames, meta = read_nifti(_save(tmp_path, data, np.eye(4)), CFG)
    assert frames.shape == (6, 5, 4, 1)
    assert meta["n_volumes"] == 2 and meta["slices_per_volume"] == 3 and meta["n_frames"] == 6
    means = frames.reshape(6, -1).mean(axis=1)
    assert np.all(np.diff(means) > 0)  # t = v * Z + z


def test_gzipped_nifti_with_any_name(tmp_path: Path) -> None:
    data, affine = _stored("LPS")
    path = _save(tmp_path, data, affine, "vol.nii.gz")
    frames, _ = read_nifti(path.rename(tmp_path / "upload.bin"), CFG)
    assert np.unravel_index(np.argmax(frames), frames.shape) == (2, 1, 1, 0)


def test_nifti2_is_read(tmp_path: Path) -> None:
    path = tmp_path / "vol2.nii"
    nib.save(nib.Nifti2Image(_ras_volume(), np.diag([*SPACING, 1.0])), path)
    frames, meta = read_nifti(path, CFG)
    assert frames.shape == (3, 6, 5, 1) and meta["header"]["format"] == "nifti2"


def test_hu_like_intensities_get_ct_window(tmp_path: Path) -> None:
    data = np.zeros((8, 8, 4), np.int16)
    data[:2] = -1000  # air
    data[-1] = 1200  # bone
    frames, meta = read_nifti(_save(tmp_path, data, np.eye(4)), CFG)
    assert meta["modality"] == "ct"
    low, high = -160.0, 240.0  # soft_tissue preset: centre 40, width 400
    assert meta["header"]["window"] == [low, high]
    assert set(np.unique(frames)) == {0, 102, 255}  # 0 HU -> 160 / 400 * 255


def test_mr_like_intensities_use_percentiles(tmp_path: Path) -> None:
    data = np.random.default_rng(0).uniform(0, 1000, (8, 8, 4)).astype(np.float32)
    frames, meta = read_nifti(_save(tmp_path, data, np.eye(4)), CFG)
    assert meta["modality"] == ""
    assert frames.min() == 0 and frames.max() == 255


def test_2d_nifti_is_an_image(tmp_path: Path) -> None:
    data = np.arange(20, dtype=np.float32).reshape(4, 5)
    frames, meta = read_nifti(_save(tmp_path, data, np.diag([0.5, 0.7, 1.0, 1.0])), CFG)
    assert frames.shape == (1, 5, 4, 1)
    assert meta["kind"] == "image" and meta["spacing"] == pytest.approx([1.0, 0.7, 0.5])
    assert frames[0, 0, 3, 0] == 255  # largest x, largest y (anterior, top row)


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_truncated_file_is_unreadable(tmp_path: Path, name: str) -> None:
    path = _save(tmp_path, np.random.default_rng(0).normal(size=(16, 16, 8)).astype(np.float32), np.eye(4), name)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnreadableInputError) as info:
        read_nifti(path, CFG)
    assert info.value.path == str(path)


def test_header_declaring_huge_dims_is_refused_before_loading(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    header["magic"] = b"n+1"
    path = tmp_path / "huge.nii"
    with path.open("wb") as fh:  # the header alone: reading any voxel would fail as truncated
        header.write_to(fh)
        fh.write(b"\x00" * 4)
    with pytest.raises(InputTooLargeError, match="voxels"):
        read_nifti(path, CFG)
    small = ReadConfig(limits=LimitsConfig(max_frames=2))
    with pytest.raises(InputTooLargeError, match="max_frames"):
        read_nifti(_save(tmp_path, _ras_volume(), np.eye(4)), small)


@pytest.mark.parametrize("name", ["example4d.nii.gz", "anatomical.nii", "example_nifti2.nii.gz"])
def test_nibabel_test_data(name: str) -> None:
    path = Path(data_path) / name
    if not path.exists():
        pytest.skip(f"{name} not shipped with this nibabel")
    canonical = nib.as_closest_canonical(nib.load(path))
    nx, ny, nz = canonical.shape[:3]
    n_vol = canonical.shape[3] if canonical.ndim == 4 else 1
    frames, meta = read_nifti(path, CFG)
    assert frames.shape == (n_vol * nz, ny, nx, 1)
    assert meta["n_volumes"] == n_vol and meta["kind"] == "volume"
    assert frames.max() == 255 and frames.min() == 0
    assert meta["spacing"] == pytest.approx([float(z) for z in canonical.header.get_zooms()[2::-1]])
    json.dumps(meta)
