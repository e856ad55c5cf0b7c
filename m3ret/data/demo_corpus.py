"""The demo corpus: real medical images that ship with installed packages, gathered into one folder.

`m3ret demo-data` writes it and the default `dvc repro` ingests it, so the whole pipeline runs offline on any
machine and every reader sees real files: DICOM from pydicom's test files and the pydicom-data bundle (CR, CT, MR,
US, NM across the usual transfer syntaxes, plus a few broken or hostile files for the quarantine path), NIfTI volumes
from nibabel's test data, fundus and pathology images from scikit-image, and short mp4 clips panned over those
images. Nothing is ever downloaded: a file that is not on disk is skipped and the README says so.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pydicom
import pydicom.data
import skimage.data
from nibabel.testing import data_path as nibabel_data_path
from PIL import Image
from pydicom.pixels import apply_rescale

from m3ret.config import ConfigError, DemoDataConfig

README_HEADER = "m3ret demo corpus"
# A multiple of 16, so the encoder never pads; not 96: decord2 3.x fails on 96-wide clips (a buffer size check)
VIDEO_SIZE = 128
VIDEO_FPS = 8
# One encoder thread: x264's output depends on its thread count, which would otherwise follow the machine's cores.
VIDEO_OUTPUT_PARAMS = ["-threads", "1"]


@dataclass(frozen=True)
class _Pick:
    """One packaged file: `name` as its package knows it, written to `target` (relative to the corpus root)."""

    name: str
    target: str
    note: str


@dataclass(frozen=True)
class _Origin:
    """A README row: where one corpus file came from."""

    path: str
    package: str
    original: str
    note: str


# Each DICOM file must decode with the installed codecs, or it is skipped; the modality folder matches the header.
DICOM_PICKS: tuple[_Pick, ...] = (
    _Pick("RG1_J2KI.dcm", "CR/cr_rg1_jpeg2000_lossy_monochrome1.dcm", "NEMA WG04 RG1, 1955x1841, MONOCHROME1"),
    _Pick("RG3_J2KR.dcm", "CR/cr_rg3_jpeg2000_lossless_monochrome1.dcm", "NEMA WG04 RG3, 1760x1760, MONOCHROME1"),
    _Pick("CT_small.dcm", "CT/ct_small.dcm", "NEMA WG04 CT1 downsized to 128x128, explicit VR little endian"),
    _Pick("693_J2KI.dcm", "CT/ct_head_jpeg2000_lossy.dcm", "pydicom issue #693 head CT, JPEG 2000"),
    _Pick("J2K_pixelrep_mismatch.dcm", "CT/ct_13bit_jpeg2000_lossless.dcm", "pydicom issue #1149, 13 bits stored"),
    _Pick("explicit_VR-UN.dcm", "CT/ct_pancreas_jpeg2000_vr_un.dcm", "TCIA de-identified CT, most tags VR UN"),
    _Pick("bad_sequence.dcm", "CT/ct_jpeg_lossless_invalid_sequence.dcm", "pydicom issue #1067, JPEG lossless"),
    _Pick("eCT_Supplemental.dcm", "CT/ct_enhanced_2frames.dcm", "NEMA enhanced multi-frame CT, 2 frames"),
    _Pick("MR_small.dcm", "MR/mr_small.dcm", "NEMA WG04 MR1 downsized to 64x64"),
    _Pick("MR_small_jpeg_ls_lossless.dcm", "MR/mr_small_jpeg_ls.dcm", "MR_small as JPEG-LS lossless"),
    _Pick("MR_small_RLE.dcm", "MR/mr_small_rle.dcm", "MR_small as RLE lossless"),
    _Pick("MR_small_bigendian.dcm", "MR/mr_small_big_endian.dcm", "MR_small as explicit VR big endian"),
    _Pick("emri_small.dcm", "MR/mr_enhanced_10frames.dcm", "enhanced multi-frame MR, 10 frames of 64x64"),
    _Pick("emri_small_jpeg_ls_lossless.dcm", "MR/mr_enhanced_10frames_jpeg_ls.dcm", "emri_small as JPEG-LS"),
    _Pick("MR2_J2KI.dcm", "MR/mr2_1024px_jpeg2000_lossy.dcm", "NEMA WG04 MR2, 1024x1024, rescale and window"),
    _Pick("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR/mr_siemens_with_overlays.dcm", "GDCM test data, overlay plane"),
    _Pick("US1_J2KR.dcm", "US/us1_jpeg2000_lossless_ybr_rct.dcm", "NEMA WG04 US1, 480x640 colour, YBR_RCT"),
    _Pick("examples_ybr_color.dcm", "US/us_cine_30frames_ybr_full_422.dcm", "30-frame colour cine, JPEG baseline"),
    _Pick("examples_rgb_color.dcm", "US/us1_rgb_cropped.dcm", "US1 cropped to 240x320, uncompressed RGB"),
    _Pick("OBXXXX1A_rle.dcm", "US/us_palette_color_rle.dcm", "Philips US, PALETTE COLOR, RLE lossless"),
    _Pick("gdcm-US-ALOKA-16.dcm", "US/us_aloka_16bit_segmented_palette.dcm", "GDCM test data, 16-bit segmented LUT"),
    _Pick("JPGLosslessP14SV1_1s_1f_8b.dcm", "US/us_jpeg_lossless_8bit.dcm", "768x1024 MONOCHROME2, JPEG lossless"),
    _Pick("color-pl.dcm", "US/us_rgb_planar.dcm", "RGB with planar configuration 1"),
    _Pick("ExplVR_BigEnd.dcm", "US/us_rgb_big_endian.dcm", "barre.nom.fr US-RGB-8-epicard downsized to 60x80"),
    _Pick("JPEG-LL.dcm", "NM/nm1_jpeg_lossless.dcm", "NEMA WG04 NM1, JPEG lossless process 14"),
    _Pick("JPEG2000.dcm", "NM/nm1_jpeg2000.dcm", "NEMA WG04 NM1, JPEG 2000"),
    _Pick("JPGExtended.dcm", "NM/nm1_jpeg_extended_12bit.dcm", "NEMA WG04 NM1, 12-bit JPEG extended"),
)

# Broken or hostile on purpose: the ingest stage must quarantine each one and go on.
BROKEN_PICKS: tuple[_Pick, ...] = (
    _Pick("MR_truncated.dcm", "broken/mr_truncated_pixel_data.dcm", "Pixel Data shorter than Rows x Columns"),
    _Pick(
        "JPEG2000-embedded-sequence-delimiter.dcm",
        "broken/nm_corrupt_jpeg2000_codestream.dcm",
        "corrupt codestream that declares a multi-terapixel image (decompression bomb)",
    ),
    _Pick("test-SR.dcm", "broken/sr_without_pixel_data.dcm", "a structured report: DICOM with no image"),
)

# Real 3D/4D volumes, not the header-only fixtures that share their folder.
NIFTI_PICKS: tuple[_Pick, ...] = (
    _Pick("anatomical.nii", "nifti/anatomical.nii", "3D anatomical MR, 33x41x25, big-endian int16"),
    _Pick("example4d.nii.gz", "nifti/example4d.nii.gz", "4D MR, 128x96x24x2, gzipped"),
    _Pick("example_nifti2.nii.gz", "nifti/example_nifti2.nii.gz", "NIfTI-2 header, 32x20x12x2"),
    _Pick("functional.nii", "nifti/functional.nii", "4D fMRI, 17x21x3x20"),
    _Pick("reoriented_anat_moved.nii", "nifti/reoriented_anat_moved.nii", "3D float32, rotated affine"),
)

# Only files shipped inside the scikit-image distribution: anything else (brain.tiff, ...) would need pooch.
IMAGE_PICKS: tuple[_Pick, ...] = (
    _Pick("retina.jpg", "images/fundus_retina.png", "fundus photograph; CC0 1.0 (M. Haggstrom, Wikimedia Commons)"),
    _Pick("ihc.png", "images/pathology_ihc.png", "IHC-stained colonic glands (CMMI); no known copyright restrictions"),
    _Pick("microaneurysms.png", "images/fundus_microaneurysms.png", "HRF fundus crop, green channel; CC0 (A. Maier)"),
)
VIDEO_SOURCES = ("retina.jpg", "ihc.png")
_FOLDERS = ("dicom", "nifti", "images", "video")

LICENCES = {
    "pydicom": "MIT. Per-file sources (NEMA WG04, GDCM under BSD-3-Clause, TCIA, dclunie.com, barre.nom.fr) are in "
    "pydicom/data/test_files/README.txt, which states no known restriction on their use as test data.",
    "pydicom-data": "MIT. The same sources and terms as pydicom's test files (pydicom/data/test_files/README.txt).",
    "nibabel": "MIT (nibabel's COPYING covers its test data).",
    "scikit-image": "BSD-3-Clause; each image's own terms are in its row (from skimage.data's docstrings).",
}


def build_demo_corpus(cfg: DemoDataConfig) -> dict[str, int]:
    """Write the demo corpus into `cfg.out` and return how many files each sub-folder holds.

    Layout: `dicom/<CR|CT|MR|US|NM>/*.dcm` and `dicom/broken/*.dcm` (copies of pydicom's and pydicom-data's files),
    `nifti/` (nibabel's test volumes), `images/` (PNG: scikit-image's fundus and IHC images, a 16-bit CT slice),
    `video/` (`cfg.n_videos` mp4 clips of `cfg.video_frames` frames, VIDEO_SIZE px square, VIDEO_FPS fps, panned
    and zoomed over the fundus or IHC image along a path drawn from `cfg.seed`), and README.txt with every file's
    origin and licence. The corpus is built beside `cfg.out` and then swapped in, so the folder ends up holding
    exactly this build and a failed build leaves the previous one alone.

    Returns e.g. `{"dicom": 31, "nifti": 5, "images": 4, "video": 3}` (the broken DICOM files count under dicom).
    Raises ConfigError for a negative `n_videos`, `video_frames` < 1, or an `out` folder that holds something other
    than a previous demo corpus (it would be deleted).
    """
    if cfg.n_videos < 0 or cfg.video_frames < 1:
        raise ConfigError(f"demo_data needs n_videos >= 0, video_frames >= 1; got {cfg.n_videos}, {cfg.video_frames}")
    out = Path(cfg.out)
    if out.exists() and not _is_demo_corpus(out):
        raise ConfigError(f"demo_data.out={cfg.out!r} exists and is not a demo corpus (no {README_HEADER!r} README)")
    staging = out.with_name(f".{out.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        origins = _write_corpus(staging, cfg)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return {folder: sum(1 for o in origins if o.path.startswith(f"{folder}/")) for folder in _FOLDERS}


def _write_corpus(root: Path, cfg: DemoDataConfig) -> list[_Origin]:
    origins: list[_Origin] = []
    skipped: list[str] = []
    _copy_dicom(root, DICOM_PICKS, origins, skipped, must_decode=True)
    _copy_dicom(root, BROKEN_PICKS, origins, skipped, must_decode=False)
    _copy_nifti(root, origins)
    sources = _write_images(root, origins, skipped)
    _write_videos(root, cfg, sources, origins, skipped)
    _write_readme(root, cfg, origins, skipped)
    return origins


def _is_demo_corpus(out: Path) -> bool:
    readme = out / "README.txt"
    if out.is_dir() and not any(out.iterdir()):
        return True
    return readme.is_file() and readme.read_text(errors="replace").startswith(README_HEADER)


def _version(dist: str) -> str:
    return f"{dist} {importlib.metadata.version(dist)}"


def _copy_dicom(
    root: Path, picks: tuple[_Pick, ...], origins: list[_Origin], skipped: list[str], *, must_decode: bool
) -> None:
    """Copy each pick found on disk by pydicom's own lookup (its test files, then pydicom-data); never downloads."""
    pydicom_root = Path(pydicom.data.DATA_ROOT).resolve()
    for pick in picks:
        found = pydicom.data.get_testdata_file(pick.name, download=False)
        if found is None:
            skipped.append(f"{pick.name}: not installed locally (pydicom would have to download it)")
            continue
        src = Path(found)
        if must_decode:
            reason = _dicom_decode_failure(src)
            if reason:
                skipped.append(f"{pick.name}: does not decode with the installed codecs ({reason})")
                continue
        package = "pydicom" if src.resolve().is_relative_to(pydicom_root) else "pydicom-data"
        _copy(src, root / "dicom" / pick.target)
        origins.append(_Origin(f"dicom/{pick.target}", _version(package), pick.name, pick.note))


def _dicom_decode_failure(path: Path) -> str:
    """'' when pydicom decodes the pixels with the installed plugins, else the first line of the reason."""
    try:
        with warnings.catch_warnings():
            # Several of these files are deliberately odd (VR UN, invalid sequences); pydicom warns but decodes.
            warnings.simplefilter("ignore")
            pydicom.dcmread(path).pixel_array  # noqa: B018  (decoding is the check)
    except Exception as err:  # any decoder failure means "skip this file"; the reason goes into the README
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return ""


def _copy_nifti(root: Path, origins: list[_Origin]) -> None:
    for pick in NIFTI_PICKS:
        src = Path(nibabel_data_path) / pick.name
        if src.is_file():
            _copy(src, root / pick.target)
            origins.append(_Origin(pick.target, _version("nibabel"), f"nibabel/tests/data/{pick.name}", pick.note))


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)  # a real copy, so the corpus stays valid when the venv changes


def _write_images(root: Path, origins: list[_Origin], skipped: list[str]) -> dict[str, np.ndarray]:
    """Write the PNGs and return the RGB arrays [H, W, 3] uint8 of the video sources that are present."""
    images_dir = root / "images"
    images_dir.mkdir()
    skimage_dir = Path(skimage.data.data_dir)
    sources: dict[str, np.ndarray] = {}
    for pick in IMAGE_PICKS:
        src = skimage_dir / pick.name
        if not src.is_file():
            skipped.append(f"{pick.name}: not shipped with scikit-image here (would need a pooch download)")
            continue
        with Image.open(src) as img:
            img.load()
            # PNG is lossless at any level; level 1 writes the 1411 px fundus image in a quarter of the default time.
            img.save(root / pick.target, format="PNG", compress_level=1)
            if pick.name in VIDEO_SOURCES:
                sources[pick.name] = np.asarray(img.convert("RGB"))
        origins.append(_Origin(pick.target, _version("scikit-image"), f"skimage/data/{pick.name}", pick.note))

    ct_path = pydicom.data.get_testdata_file("CT_small.dcm", download=False)
    if ct_path is None:
        skipped.append("CT_small.dcm: not installed locally, so no 16-bit PNG")
        return sources
    ds = pydicom.dcmread(ct_path)
    # CT number + 1024 is the usual way CT slices are stored in 16-bit PNG (air, -1000 HU, stays above zero).
    ct_numbers = apply_rescale(ds.pixel_array, ds) + 1024.0
    target = "images/ct_small_slice_16bit.png"
    Image.fromarray(np.clip(ct_numbers, 0, 65535).astype(np.uint16)).save(root / target, format="PNG")
    origins.append(
        _Origin(target, _version("pydicom"), "CT_small.dcm", "16-bit grey PNG of its slice, CT number + 1024")
    )
    return sources


def _write_videos(
    root: Path, cfg: DemoDataConfig, sources: dict[str, np.ndarray], origins: list[_Origin], skipped: list[str]
) -> None:
    names = [name for name in VIDEO_SOURCES if name in sources]
    if cfg.n_videos and not names:
        skipped.append("video: none of the source images is present, so no clips were written")
        return
    video_dir = root / "video"
    video_dir.mkdir()
    for index in range(cfg.n_videos):
        name = names[index % len(names)]
        frames = _pan_frames(sources[name], cfg.video_frames, np.random.default_rng([cfg.seed, index]))
        target = f"video/pan_{index:02d}_{Path(name).stem}.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(root / target),
            (VIDEO_SIZE, VIDEO_SIZE),
            fps=VIDEO_FPS,
            codec="libx264",
            ffmpeg_log_level="error",
            output_params=VIDEO_OUTPUT_PARAMS,
        )
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        note = f"{cfg.video_frames} frames at {VIDEO_FPS} fps, an endoscopy-like pan and zoom over it, seed {cfg.seed}"
        origins.append(_Origin(target, _version("scikit-image"), f"skimage/data/{name}", note))


def _pan_frames(image: np.ndarray, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Frames [n_frames, VIDEO_SIZE, VIDEO_SIZE, 3] uint8 of a camera gliding and zooming across `image` [H, W, 3].

    The crop's centre moves in a straight line between two points drawn in the middle 40% of the image and its side
    changes linearly between two sizes in [25%, 50%] of the shorter edge, so every crop stays inside the image.
    """
    height, width = image.shape[:2]
    centres = rng.uniform(0.3, 0.7, size=(2, 2)) * np.array([width, height])
    sides = rng.uniform(0.25, 0.5, size=2) * min(height, width)
    pil = Image.fromarray(image)
    frames = np.empty((n_frames, VIDEO_SIZE, VIDEO_SIZE, 3), dtype=np.uint8)
    for t, a in enumerate(np.linspace(0.0, 1.0, n_frames)):
        cx, cy = centres[0] + a * (centres[1] - centres[0])
        half = (sides[0] + a * (sides[1] - sides[0])) / 2
        box = (cx - half, cy - half, cx + half, cy + half)
        frames[t] = np.asarray(pil.resize((VIDEO_SIZE, VIDEO_SIZE), Image.Resampling.BILINEAR, box=box))
    return frames


def _write_readme(root: Path, cfg: DemoDataConfig, origins: list[_Origin], skipped: list[str]) -> None:
    rows = [("path", "package", "original", "note"), *((o.path, o.package, o.original, o.note) for o in origins)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3] for row in rows]
    used = sorted({o.package.split()[0] for o in origins})
    lines = [
        README_HEADER,
        "=" * len(README_HEADER),
        "",
        "Written by `m3ret demo-data` (m3ret.data.demo_corpus.build_demo_corpus) from files that ship with installed",
        f"Python packages; nothing was downloaded. seed={cfg.seed}, n_videos={cfg.n_videos}, "
        f"video_frames={cfg.video_frames}.",
        "dicom/broken/ holds deliberately broken or hostile files: ingest must quarantine each one and go on.",
        "",
        *table,
        "",
        "Licences",
        *(f"  {package}: {LICENCES[package]}" for package in used),
    ]
    if skipped:
        lines += ["", "Skipped (not on disk here, or not decodable with the installed codecs)"]
        lines += [f"  {reason}" for reason in skipped]
    (root / "README.txt").write_text("\n".join(lines) + "\n")
