"""Hostile uploads the service must refuse with a 4xx and a reason: name -> (bytes, allowed statuses, words the reason
holds)."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from dicom_factory import make_dataset, save  # noqa: E402

if TYPE_CHECKING:
    from conftest import Served


def _zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("slice.dcm", b"\0" * (64 << 20))
    return buffer.getvalue()


def _truncated_dicom() -> bytes:
    buffer = io.BytesIO()
    make_dataset(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data[: len(data) // 2]


def _huge_dicom(tmp: Path) -> bytes:
    ds = make_dataset(np.zeros((8, 8), dtype=np.uint16))
    ds.Rows, ds.Columns = 60000, 60000
    return save(ds, tmp / "huge.dcm").read_bytes()


def hostile_uploads(served: Served, tmp: Path) -> dict[str, tuple[bytes, set[int], str]]:
    video = served.queries["video"].read_bytes()
    moov = video.find(b"moov")
    return {
        "text": (b"just a note, not an image\n" * 20, {415}, "text"),
        "truncated_dicom": (_truncated_dicom(), {422}, ""),
        "zip_bomb": (_zip_bomb(), {413}, "zip bomb"),
        "oversized": (np.random.default_rng(0).bytes((served.max_upload_mb + 1) << 20), {413}, "limit"),
        "huge_dims": (_huge_dicom(tmp), {413}, ""),
        "video_no_frames": (video[: max(moov, 64)], {415, 422}, ""),
        "empty": (b"", {422}, "empty"),
    }
