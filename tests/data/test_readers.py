"""`read(path, cfg)`: the single entry point for one file or one DICOM series folder (search and serving use it)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from dicom_factory import write_ct_series  # noqa: E402

from m3ret.config import ReadConfig  # noqa: E402
from m3ret.data.errors import UnsupportedInputError  # noqa: E402
from m3ret.data.readers import read  # noqa: E402


def test_read_a_file_and_a_series_folder(tmp_path: Path) -> None:
    Image.fromarray(np.full((12, 20, 3), 90, dtype=np.uint8)).save(tmp_path / "photo.dcm", format="PNG")
    frames, meta = read(tmp_path / "photo.dcm", ReadConfig())
    assert frames.shape == (1, 12, 20, 3) and meta["kind"] == "image"
    hu = np.zeros((3, 8, 8), dtype=np.int16)
    write_ct_series(tmp_path / "series", hu)
    frames, meta = read(tmp_path / "series", ReadConfig())
    assert frames.shape == (3, 8, 8, 1) and meta["modality"] == "ct"


def test_folders_with_several_series_and_npz_sources_are_refused(tmp_path: Path) -> None:
    hu = np.zeros((2, 8, 8), dtype=np.int16)
    write_ct_series(tmp_path / "two", hu)
    write_ct_series(tmp_path / "two" / "other", hu, seed=1)
    with pytest.raises(UnsupportedInputError, match="2 DICOM series"):
        read(tmp_path / "two", ReadConfig())
    np.savez(tmp_path / "x.npz", train_images=np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(UnsupportedInputError, match="npz"):
        read(tmp_path / "x.npz", ReadConfig())
