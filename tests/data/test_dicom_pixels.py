"""DICOM fast paths: native pixel data read as pydicom reads it, int16 series storage widened when needed, slice
positions parsed from the raw bytes as pydicom parses them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from m3ret.config import LimitsConfig
from m3ret.data.dicom_pixels import native_pixels
from m3ret.data.dicom_reader import read_dicom_hu

sys.path.insert(0, str(Path(__file__).parent))
from dicom_factory import make_dataset, save, write_dicom  # noqa: E402

LIMITS = LimitsConfig()


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16])
def test_native_pixels_equal_pydicom(tmp_path, dtype):
    info = np.iinfo(dtype)
    stored = np.random.default_rng(0).integers(info.min, info.max, (3, 5, 7), endpoint=True).astype(dtype)
    ds = dcmread(write_dicom(tmp_path / "a.dcm", stored, modality="MR"))
    native = native_pixels(ds, 3)
    assert native is not None and native.dtype == pixel_array(ds).dtype
    np.testing.assert_array_equal(native, pixel_array(ds))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    np.testing.assert_array_equal(native_pixels(ds, 3), pixel_array(ds))


def test_native_pixels_leave_the_rest_to_pydicom(tmp_path):
    stored = (np.arange(48).reshape(6, 8) * 80).astype(np.uint16)
    partial = dcmread(write_dicom(tmp_path / "b.dcm", stored, bits_stored=12, modality="MR"))
    assert native_pixels(partial, 1) is None  # BitsStored < BitsAllocated: pydicom masks / sign-extends
    rle = make_dataset(stored, modality="MR")
    rle.compress(RLELossless)
    assert native_pixels(dcmread(save(rle, tmp_path / "rle.dcm")), 1) is None  # compressed
    short = dcmread(write_dicom(tmp_path / "c.dcm", stored, modality="MR"))
    short.PixelData = short.PixelData[:-10]
    assert native_pixels(short, 1) is None  # truncated: pydicom raises and names the cause
    rgb = dcmread(write_dicom(tmp_path / "d.dcm", np.zeros((4, 4, 3), np.uint8), modality="OT"))
    assert native_pixels(rgb, 1) is None


@pytest.mark.parametrize(
    ("stored", "rescale"),
    [
        (np.array([[0, 1000], [3000, 4095]], np.uint16), (1, -1024)),  # CT: int16 HU
        (np.array([[0, 1000], [3000, 4095]], np.uint16), (2.5, -7.25)),  # fractional: float32
        (np.array([[0, 1000], [60000, 65535]], np.uint16), (1, 0)),  # beyond int16: float32
        (np.array([[-2000, 0], [5, 30000]], np.int16), (2, 0)),  # integer, beyond int16 after the slope
    ],
)
def test_series_values_equal_pydicom_modality_lut(tmp_path, stored, rescale):
    first = write_dicom(tmp_path / "s" / "0.dcm", stored, rescale=(1, 0), position=(0, 0, 0), series_uid="1.2.3")
    second = write_dicom(tmp_path / "s" / "1.dcm", stored, rescale=rescale, position=(0, 0, 1), series_uid="1.2.3")
    values, meta = read_dicom_hu([first, second], LIMITS)
    assert values.dtype == np.float32 and meta["members"] == [str(first), str(second)]
    for t, path in enumerate((first, second)):
        ds = dcmread(path)
        np.testing.assert_array_equal(values[t], apply_modality_lut(pixel_array(ds), ds).astype(np.float32))


def test_raw_decimals_equal_pydicom_values(tmp_path):
    from m3ret.data.dicom_geometry import _raw_decimals

    path = write_dicom(tmp_path / "g.dcm", np.zeros((2, 2), np.int16), position=(-100.25, 1e-3, 7), instance=3)
    ds = dcmread(path)
    fast = _raw_decimals(ds, "ImagePositionPatient")
    np.testing.assert_array_equal(fast, np.asarray(dcmread(path).ImagePositionPatient, dtype=np.float64))
    assert ds.ImagePositionPatient[0] == -100.25
    assert _raw_decimals(ds, "ImagePositionPatient") is None  # converted now: pydicom's value is used
    assert _raw_decimals(ds, "SliceLocation") is None
