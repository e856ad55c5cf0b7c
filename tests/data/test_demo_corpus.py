"""The demo corpus: every file it writes opens with the plain library call, and a rebuild reproduces it exactly."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEGLSLossless, JPEGLSNearLossless

from m3ret.config import ConfigError, DemoDataConfig, ReadConfig
from m3ret.data.demo_corpus import VIDEO_SIZE, build_demo_corpus
from m3ret.data.dicom_reader import read_dicom
from m3ret.data.errors import InputError
from m3ret.data.video_reader import decord  # loaded after torch, see there

# Not the defaults, so the test sees that the config is respected.
N_VIDEOS, VIDEO_FRAMES, SEED = 2, 10, 3


def _config(out: Path) -> DemoDataConfig:
    return DemoDataConfig(out=str(out), n_videos=N_VIDEOS, video_frames=VIDEO_FRAMES, seed=SEED)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _decode_dicom(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some files are odd on purpose (VR UN, invalid sequences)
        ds = pydicom.dcmread(path)
        return ds, ds.pixel_array


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("corpus") / "demo"
    return root, build_demo_corpus(_config(root))


def test_counts_match_the_files_and_the_readme_names_each_one(corpus: tuple[Path, dict[str, int]]) -> None:
    root, counts = corpus
    files = _files(root)
    assert set(counts) == {"dicom", "nifti", "images", "video"}
    for folder, n in counts.items():
        assert n == sum(f.startswith(f"{folder}/") for f in files)
    assert counts["video"] == N_VIDEOS
    assert counts["dicom"] <= 40 and counts["dicom"] >= 20 and counts["nifti"] >= 3 and counts["images"] >= 3
    assert len(files) == sum(counts.values()) + 1  # + README.txt
    assert sum((root / f).stat().st_size for f in files) < 30e6
    readme = (root / "README.txt").read_text()
    assert all(f in readme for f in files if f != "README.txt")
    assert not list(root.parent.glob(".*partial"))  # the staging folder was swapped in, not left behind


def test_dicom_files_decode_and_sit_in_their_modality_folder(corpus: tuple[Path, dict[str, int]]) -> None:
    root, _ = corpus
    paths = sorted(p for p in (root / "dicom").rglob("*.dcm") if p.parent.name != "broken")
    seen = {"multiframe": False, "jpeg_ls": False, "monochrome1": False, "colour": False}
    for path in paths:
        ds, pixels = _decode_dicom(path)
        assert ds.Modality == path.parent.name, path
        assert pixels.ndim >= 2 and pixels.size > 0, path
        seen["multiframe"] |= int(ds.get("NumberOfFrames", 1)) > 1
        seen["jpeg_ls"] |= ds.file_meta.TransferSyntaxUID in (JPEGLSLossless, JPEGLSNearLossless)
        seen["monochrome1"] |= ds.PhotometricInterpretation == "MONOCHROME1"
        seen["colour"] |= ds.PhotometricInterpretation.startswith(("RGB", "YBR"))
    assert {p.parent.name for p in paths} == {"CR", "CT", "MR", "US", "NM"}
    assert all(seen.values()), seen


def test_broken_dicom_files_do_not_decode(corpus: tuple[Path, dict[str, int]]) -> None:
    root, _ = corpus
    broken = sorted((root / "dicom" / "broken").glob("*.dcm"))
    assert len(broken) >= 2
    for path in broken:
        with pytest.raises(Exception):  # noqa: B017  (each file fails its own way: that is the point)
            _decode_dicom(path)
        # and m3ret's reader turns each failure into a quarantinable input error with a reason
        with pytest.raises(InputError):
            read_dicom([path], ReadConfig())


def test_nifti_files_are_real_volumes(corpus: tuple[Path, dict[str, int]]) -> None:
    root, _ = corpus
    paths = sorted((root / "nifti").iterdir())
    assert any(nib.load(p).ndim == 4 for p in paths)
    for path in paths:
        volume = np.asarray(nib.load(path).dataobj)
        assert volume.ndim in (3, 4) and volume.size >= 1000, path
        assert np.isfinite(volume).all() and volume.max() > volume.min(), path


def test_images_open_with_pil(corpus: tuple[Path, dict[str, int]]) -> None:
    root, _ = corpus
    modes = {}
    for path in sorted((root / "images").iterdir()):
        with Image.open(path) as img:
            assert img.format == "PNG"
            modes[path.name] = img.mode
            assert np.asarray(img).std() > 0, path
    assert "RGB" in modes.values() and "I;16" in modes.values(), modes


def test_videos_have_the_configured_frames(corpus: tuple[Path, dict[str, int]]) -> None:
    root, _ = corpus
    for path in sorted((root / "video").iterdir()):
        reader = decord.VideoReader(str(path))
        assert len(reader) == VIDEO_FRAMES
        frames = reader.get_batch(list(range(VIDEO_FRAMES))).asnumpy()
        assert frames.shape == (VIDEO_FRAMES, VIDEO_SIZE, VIDEO_SIZE, 3)
        assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 5  # the camera moved


def test_rebuild_replaces_stale_files_and_reproduces_the_corpus(
    corpus: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    first, counts = corpus
    out = tmp_path / "demo"
    shutil.copytree(first, out)
    (out / "stale.txt").write_text("left over")
    (out / "dicom" / "CT" / "stale.dcm").write_bytes(b"old")
    (out / "video" / "pan_00_retina.mp4").write_bytes(b"overwritten")

    assert build_demo_corpus(_config(out)) == counts
    assert _files(out) == _files(first)
    assert (out / "README.txt").read_text() == (first / "README.txt").read_text()
    for name in _files(first / "video"):
        a, b = first / "video" / name, out / "video" / name
        frames_a = decord.VideoReader(str(a)).get_batch(list(range(VIDEO_FRAMES))).asnumpy()
        frames_b = decord.VideoReader(str(b)).get_batch(list(range(VIDEO_FRAMES))).asnumpy()
        np.testing.assert_array_equal(frames_a, frames_b)
        # The encoder runs on one thread, so the bytes too are the same on any machine with this ffmpeg.
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def test_refuses_to_replace_a_folder_that_is_not_a_corpus(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not a demo corpus"):
        build_demo_corpus(_config(out))
    assert (out / "keep.txt").read_text() == "precious"


def test_rejects_impossible_video_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="video_frames"):
        build_demo_corpus(DemoDataConfig(out=str(tmp_path / "demo"), video_frames=0))
    assert not (tmp_path / "demo").exists()
