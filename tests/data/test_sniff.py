"""sniff_kind decides by content: each kind under a wrong extension, plus empty, text and look-alike files."""

from __future__ import annotations

import gzip
import shutil
import zipfile
from pathlib import Path

import imageio_ffmpeg
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from m3ret.data.errors import UnreadableInputError, UnsupportedInputError
from m3ret.data.sniff import sniff_kind


def _dicom_dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "anon"
    ds.Rows, ds.Columns = 4, 4
    return ds


def _write_dicom(path: Path) -> Path:
    ds = _dicom_dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_png(path: Path) -> Path:
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(path, format="PNG")
    return path


def _write_mp4(path: Path) -> Path:
    # ffmpeg picks the container from the name, so write .mp4 and rename
    mp4 = path.with_suffix(".mp4")
    writer = imageio_ffmpeg.write_frames(str(mp4), (32, 32), fps=8, codec="libx264", pix_fmt_in="gray")
    writer.send(None)
    for k in range(4):
        writer.send(np.full((32, 32), 40 * k, np.uint8).tobytes())
    writer.close()
    return mp4.rename(path)


def _write_nifti(path: Path, cls: type = nib.Nifti1Image) -> Path:
    nifti = cls(np.zeros((4, 4, 3), np.int16), np.eye(4))
    if str(path).endswith(".gz"):
        # the name must end in .gz for nibabel to compress; the test then renames it
        nib.save(nifti, path)
    else:
        nib.save(nifti, path.with_suffix(".nii"))
        path.with_suffix(".nii").rename(path)
    return path


def test_png_named_dcm_is_image(tmp_path: Path) -> None:
    assert sniff_kind(_write_png(tmp_path / "scan.dcm")) == "image"


def test_dicom_named_png_is_dicom(tmp_path: Path) -> None:
    assert sniff_kind(_write_dicom(tmp_path / "photo.png")) == "dicom"


def test_preambleless_dicom_is_dicom(tmp_path: Path) -> None:
    path = tmp_path / "IM0001"
    _dicom_dataset().save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[:2] == b"\x08\x00"  # (0008,0016) first, no preamble
    assert sniff_kind(path) == "dicom"


def test_mp4_named_jpg_is_video(tmp_path: Path) -> None:
    assert sniff_kind(_write_mp4(tmp_path / "frame.jpg")) == "video"


@pytest.mark.parametrize(
    "head",
    [b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(64), b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01" + bytes(64)],
    ids=["avi", "matroska"],
)
def test_avi_and_matroska_magic_are_video(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "clip.bin"
    path.write_bytes(head)
    assert sniff_kind(path) == "video"


@pytest.mark.parametrize("cls", [nib.Nifti1Image, nib.Nifti2Image], ids=["nifti1", "nifti2"])
def test_nifti_named_txt_is_nifti(tmp_path: Path, cls: type) -> None:
    assert sniff_kind(_write_nifti(tmp_path / "notes.txt", cls)) == "nifti"


def test_gzipped_nifti_with_wrong_name_is_nifti(tmp_path: Path) -> None:
    path = _write_nifti(tmp_path / "vol.nii.gz")
    assert sniff_kind(shutil.move(path, tmp_path / "vol.dat")) == "nifti"


def test_truncated_gzipped_nifti_is_still_nifti(tmp_path: Path) -> None:
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(32, 32, 16)).astype(np.float32), np.eye(4)), path)
    path.write_bytes(path.read_bytes()[:2000])
    assert sniff_kind(path) == "nifti"


def test_heif_still_is_not_video(tmp_path: Path) -> None:
    path = tmp_path / "photo.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    with pytest.raises(UnsupportedInputError, match="heic"):
        sniff_kind(path)


def test_big_endian_nifti_is_nifti(tmp_path: Path) -> None:
    header = nib.Nifti1Header(endianness=">")
    path = tmp_path / "be.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4), header), path)
    assert path.read_bytes()[:4] == (348).to_bytes(4, "big")
    assert sniff_kind(path) == "nifti"


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF", "BMP"])
def test_other_image_formats(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "image.dat"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format=fmt)
    assert sniff_kind(path) == "image"


def test_npz_is_npz_and_other_zip_is_unsupported(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "arrays.npz", train_images=np.zeros((2, 4, 4), np.uint8))
    assert sniff_kind(tmp_path / "arrays.npz") == "npz"
    with zipfile.ZipFile(tmp_path / "docs.npz", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(UnsupportedInputError, match="zip"):
        sniff_kind(tmp_path / "docs.npz")


def test_zero_byte_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.touch()
    with pytest.raises(UnreadableInputError, match="empty"):
        sniff_kind(path)


def test_text_file_is_unsupported_and_says_text(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_text("patient notes: nothing to see here\n")
    with pytest.raises(UnsupportedInputError, match="text") as info:
        sniff_kind(path)
    assert info.value.path == str(path)


def test_text_starting_with_bm_is_not_bmp(tmp_path: Path) -> None:
    path = tmp_path / "notes.bmp"
    path.write_text("BMI report for the week, " * 4)
    with pytest.raises(UnsupportedInputError):
        sniff_kind(path)


def test_gzip_without_nifti_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "log.nii.gz"
    path.write_bytes(gzip.compress(b"just a log file\n" * 100))
    with pytest.raises(UnsupportedInputError, match="gzip"):
        sniff_kind(path)


def test_binary_garbage_is_unsupported_with_hex(tmp_path: Path) -> None:
    path = tmp_path / "blob.dcm"
    path.write_bytes(bytes(range(200, 256)) * 4)
    with pytest.raises(UnsupportedInputError, match="c8 c9 ca"):
        sniff_kind(path)
