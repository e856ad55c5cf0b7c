"""DICOM fast paths: integer rescale and int16 series storage (widened when needed) equal pydicom's modality LUT."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels import apply_modality_lut, pixel_array

from m3ret.config import LimitsConfig
from m3ret.data.dicom_reader import read_dicom_hu

sys.path.insert(0, str(Path(__file__).parent))
from dicom_factory import write_dicom  # noqa: E402

LIMITS = LimitsConfig()


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
