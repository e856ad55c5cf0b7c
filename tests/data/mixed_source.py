"""A small mixed source folder for ingest/preprocess tests: good items of every kind plus hostile files."""

from __future__ import annotations

import sys
from pathlib import Path

import imageio_ffmpeg
import nibabel as nib
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from dicom_factory import make_dataset, save, write_ct_series  # noqa: E402

GOOD = {"series_a", "series_b", "volume.nii.gz", "clip.mp4", "photo.png", "png_named.dcm"}
HOSTILE = {"truncated.dcm", "empty.dcm", "zero_frames.mp4", "huge.dcm", "notes.bin", "burned_in.dcm"}
PHI_VALUES = ("Doe^Jane", "PAT-001", "19700101", "free text that must not leak")


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> Path:
    """uint8 [T,H,W,3] -> H.264 mp4."""
    writer = imageio_ffmpeg.write_frames(str(path), (frames.shape[2], frames.shape[1]), fps=fps, macro_block_size=1)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def build_mixed_source(root: Path) -> Path:
    """Writes the folder and returns it. Patient A owns series_a, patient B series_b (both CT, 4 slices 32x32)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    hu = rng.integers(-1000, 1000, size=(4, 32, 32)).astype(np.int16)
    write_ct_series(root / "series_a", hu, patient_id="PAT-001", patient_name="Doe^Jane")
    write_ct_series(root / "series_b", hu[::-1] // 2, patient_id="PAT-002", patient_name="Roe^Rick", seed=1)
    volume = rng.random((24, 20, 12)).astype(np.float32) * 100
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 2.0, 1.0])), root / "volume.nii.gz")
    ramp = np.linspace(0, 255, 16).astype(np.uint8)
    clip = np.broadcast_to(ramp[:, None, None, None], (16, 48, 64, 3)).copy()
    write_mp4(root / "clip.mp4", clip)
    Image.fromarray(rng.integers(0, 255, size=(40, 30, 3), dtype=np.uint8)).save(root / "photo.png")
    Image.fromarray(rng.integers(0, 255, size=(30, 30), dtype=np.uint8)).save(root / "png_named.dcm", format="PNG")

    full = save(make_dataset(rng.integers(0, 4000, size=(64, 64)).astype(np.uint16)), root / "whole.dcm")
    (root / "truncated.dcm").write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    full.unlink()
    (root / "empty.dcm").write_bytes(b"")
    (root / "zero_frames.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64)
    huge = make_dataset(np.zeros((8, 8), dtype=np.uint16))
    huge.Rows, huge.Columns = 60000, 60000
    save(huge, root / "huge.dcm")
    (root / "notes.bin").write_bytes(b"just some text, not an image\n" * 10)
    save(make_dataset(np.zeros((16, 16), dtype=np.uint16), burned_in="YES"), root / "burned_in.dcm")
    return root
