"""DICOM reader: synthetic files written with pydicom, plus real files that ship with pydicom / pydicom-data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import MPEG4HP41, JPEG2000Lossless, RLELossless

from m3ret.config import LimitsConfig, ReadConfig, WindowingConfig, replace
from m3ret.data.dicom_meta import HEADER_ALLOWLIST
from m3ret.data.dicom_reader import group_dicom_series, read_dicom, read_dicom_hu
from m3ret.data.errors import InputTooLargeError, PHIRiskError, UnreadableInputError
from m3ret.data.intensity import window_to_uint8
from m3ret.data.sniff import sniff_kind

sys.path.insert(0, str(Path(__file__).parent))
from dicom_factory import make_dataset, save, write_ct_series, write_dicom  # noqa: E402

CFG = ReadConfig()
LIMITS = LimitsConfig()
META_KEYS = {"kind", "modality", "body_part", "spacing", "n_frames", "height", "width", "channels", "header", "ids"}
META_KEYS |= {"members", "dropped", "slice_gaps"}  # the series accounting: which files were used, which not


def _ramp(h: int = 6, w: int = 8, dtype: type = np.uint16, scale: int = 10) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * scale).astype(dtype)


def _local_testdata(name: str) -> Path:
    """A pydicom / pydicom-data test file already on disk (never downloads); skips when absent."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed locally")
    return Path(path)


# ------------------------------------------------------------------------------------------ grey / CT
def test_ct_slice_hu_exact_and_soft_tissue_window(tmp_path: Path) -> None:
    stored = np.array([[0, 500, 1000], [1100, 1200, 3000]], dtype=np.int16)
    path = write_dicom(tmp_path / "ct.dcm", stored, modality="CT", rescale=(2.0, -1024.0), slice_thickness=1.25)
    hu, meta = read_dicom_hu([path], LIMITS)
    assert hu.dtype == np.float32 and hu.shape == (1, 2, 3)
    np.testing.assert_array_equal(hu[0], stored * 2.0 - 1024.0)
    assert meta["kind"] == "image" and meta["modality"] == "ct" and meta["spacing"] == [1.25, 0.5, 0.75]

    frames, _ = read_dicom([path], CFG)
    assert frames.dtype == np.uint8 and frames.shape == (1, 2, 3, 1)
    # soft tissue (40, 400) -> [-160, 240] HU: -1024 and -24 saturate / sit inside, 1176 and above saturate
    np.testing.assert_array_equal(frames[0, ..., 0], window_to_uint8(hu[0], -160.0, 240.0))
    assert frames[0, 0, 0, 0] == 0 and frames[0, 1, 2, 0] == 255
    assert frames[0, 0, 1, 0] == round((-24 + 160) * 255 / 400)

    lung = replace(CFG, windowing=WindowingConfig(ct_preset="lung"))
    np.testing.assert_array_equal(read_dicom([path], lung)[0][0, ..., 0], window_to_uint8(hu[0], -1350.0, 150.0))


def test_ct_series_sorted_by_position_with_spacing(tmp_path: Path) -> None:
    hu = np.stack([np.full((4, 5), 100 * t, dtype=np.int16) for t in range(5)])
    true_order = write_ct_series(tmp_path, hu, spacing=(2.5, 0.5, 0.75))
    assert sorted(true_order) != true_order  # the file names do not give the order away
    values, meta = read_dicom_hu(true_order[::-1], LIMITS)
    np.testing.assert_array_equal(values[:, 0, 0], [0, 100, 200, 300, 400])
    assert meta["kind"] == "volume" and meta["n_frames"] == 5 and meta["spacing"] == pytest.approx([2.5, 0.5, 0.75])
    frames, _ = read_dicom(true_order, CFG)
    assert frames.shape == (5, 4, 5, 1)


def test_positions_win_over_instance_number_and_oblique_normal(tmp_path: Path) -> None:
    # Sagittal slices (normal along -x) whose InstanceNumber runs against their position.
    paths = []
    for t, x in enumerate([30.0, 10.0, 20.0, 0.0]):
        paths.append(
            write_dicom(
                tmp_path / f"s{t}.dcm",
                np.full((3, 3), int(x), dtype=np.uint16),
                modality="MR",
                series_uid="1.2.3.4",
                position=(x, -50.0, 60.0),
                orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
                instance=int(x // 10) + 1,
            )
        )
    values, meta = read_dicom_hu(paths, LIMITS)
    np.testing.assert_array_equal(values[:, 0, 0], [30, 20, 10, 0])  # ascending along the normal (-x)
    assert meta["spacing"] == pytest.approx([10.0, 0.5, 0.75])


def test_instance_number_fallback_without_positions(tmp_path: Path) -> None:
    hu = np.stack([np.full((3, 4), 10 * t, dtype=np.int16) for t in range(4)])
    paths = write_ct_series(tmp_path, hu, spacing=(3.0, 1.0, 1.0), with_positions=False, seed=3)
    values, meta = read_dicom_hu(sorted(paths), LIMITS)
    np.testing.assert_array_equal(values[:, 0, 0], [0, 10, 20, 30])
    assert meta["spacing"] == [3.0, 1.0, 1.0]  # from SliceThickness


def test_group_two_series_and_rejects(tmp_path: Path) -> None:
    a = write_ct_series(tmp_path, np.zeros((3, 2, 2), np.int16), series_uid="1.2.826.0.1.1")
    b = write_ct_series(tmp_path / "b", np.zeros((2, 2, 2), np.int16), series_uid="1.2.826.0.1.2")
    lone = write_dicom(tmp_path / "lone.dcm", _ramp(), modality="MR", series_uid="")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not dicom at all\n" * 20)
    (tmp_path / "cut.dcm").write_bytes(a[0].read_bytes()[:200])
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    series, rejects = group_dicom_series(files)
    assert sorted(map(sorted, series)) == sorted([sorted(a), sorted(b), [lone]])
    assert series == sorted(series, key=lambda s: str(s[0]))
    assert {Path(p).name for p, _ in rejects} == {"empty.dcm", "notes.txt", "cut.dcm"}
    assert all(reason for _, reason in rejects)


# ----------------------------------------------------------------------------------------- multi-frame
def test_multiframe_volume_and_ultrasound_clip(tmp_path: Path) -> None:
    stack = np.stack([_ramp() + t for t in range(4)])
    values, meta = read_dicom_hu([write_dicom(tmp_path / "mf.dcm", stack, modality="MR")], LIMITS)
    assert values.shape == (4, 6, 8) and meta["kind"] == "volume" and meta["n_frames"] == 4
    np.testing.assert_array_equal(values, stack)

    clip = np.stack([np.full((5, 7, 3), 40 * t, np.uint8) for t in range(3)])
    frames, meta = read_dicom([write_dicom(tmp_path / "us.dcm", clip, modality="US")], CFG)
    assert frames.shape == (3, 5, 7, 3) and meta["kind"] == "video" and meta["modality"] == "ultrasound"
    np.testing.assert_array_equal(frames[:, 0, 0, 0], [0, 40, 80])


# ------------------------------------------------------------------------------------------- windowing
def test_header_window_used_and_monochrome1_inverted(tmp_path: Path) -> None:
    stored = np.array([[0, 50, 100, 150, 1000]], dtype=np.uint16)
    mono2 = write_dicom(tmp_path / "m2.dcm", stored, modality="MR", window=(100.0, 100.0))
    mono1 = write_dicom(tmp_path / "m1.dcm", stored, modality="MR", window=(100.0, 100.0), photometric="MONOCHROME1")
    out2 = read_dicom([mono2], CFG)[0][0, 0, :, 0]
    # LINEAR window (PS3.3 C.11.2.1.2): <= 50 black, > 149 white, the centre mid-grey
    assert out2[0] == out2[1] == 0 and out2[3] == out2[4] == 255 and abs(int(out2[2]) - 128) <= 1
    np.testing.assert_array_equal(read_dicom([mono1], CFG)[0][0, 0, :, 0], 255 - out2)

    no_header = replace(CFG, windowing=WindowingConfig(use_header=False, percentiles=(0.0, 100.0)))
    np.testing.assert_array_equal(read_dicom([mono2], no_header)[0][0, 0, :, 0], window_to_uint8(stored[0], 0, 1000))


def test_header_voi_lut_sequence(tmp_path: Path) -> None:
    ds = make_dataset(_ramp(scale=5).astype(np.uint8), modality="CR")
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData: an inverting LUT
    ds.VOILUTSequence = [item]
    frames, meta = read_dicom([save(ds, tmp_path / "voi.dcm")], CFG)
    np.testing.assert_array_equal(frames[0, ..., 0], 255 - _ramp(scale=5))
    assert meta["modality"] == "xray"


# ---------------------------------------------------------------------------------------------- colour
def test_rgb_and_ybr_full(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    frames, meta = read_dicom([write_dicom(tmp_path / "rgb.dcm", rgb, modality="OT")], CFG)
    assert frames.shape == (1, 6, 8, 3) and meta["channels"] == 3 and meta["modality"] == "other"
    np.testing.assert_array_equal(frames[0], rgb)

    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    frames, _ = read_dicom([write_dicom(tmp_path / "ybr.dcm", ybr, modality="ES", photometric="YBR_FULL")], CFG)
    assert np.abs(frames[0].astype(int) - rgb).max() <= 3


def test_palette_colour(tmp_path: Path) -> None:
    index = _ramp(scale=3).astype(np.uint8)
    ds = make_dataset(index, modality="US", photometric="PALETTE COLOR")
    for colour, lut in (("Red", np.arange(256)), ("Green", 255 - np.arange(256)), ("Blue", np.zeros(256))):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", (lut * 257).astype("<u2").tobytes())
    frames, meta = read_dicom([save(ds, tmp_path / "pal.dcm")], CFG)
    assert frames.shape == (1, 6, 8, 3) and meta["channels"] == 3
    np.testing.assert_array_equal(frames[0], np.stack([index, 255 - index, np.zeros_like(index)], axis=-1))


# ------------------------------------------------------------------------------------------ compressed
@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k"])
def test_compressed_round_trip(tmp_path: Path, syntax: str) -> None:
    stored = (np.arange(64 * 64).reshape(64, 64) % 3000).astype(np.int16)  # J2K needs >= 64 px per side
    ds = make_dataset(stored, modality="CT", rescale=(1.0, -1024.0))
    ds.compress(syntax)
    values, meta = read_dicom_hu([save(ds, tmp_path / "c.dcm")], LIMITS)
    np.testing.assert_array_equal(values[0], stored - 1024.0)
    assert meta["header"]["TransferSyntaxUID"] == syntax


def test_codec_missing_names_transfer_syntax(tmp_path: Path) -> None:
    ds = make_dataset(np.zeros((4, 4, 3), np.uint8), modality="ES")
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" * 8])
    with pytest.raises(UnreadableInputError, match="MPEG-4") as err:
        read_dicom([save(ds, tmp_path / "clip.dcm")], CFG)
    assert err.value.path.endswith("clip.dcm")


# ---------------------------------------------------------------------------------------------- errors
def test_truncated_and_empty_files(tmp_path: Path) -> None:
    good = write_dicom(tmp_path / "good.dcm", _ramp(64, 64), modality="MR")
    data = good.read_bytes()
    (tmp_path / "cut_pixels.dcm").write_bytes(data[:-2000])
    (tmp_path / "cut_header.dcm").write_bytes(data[:150])
    (tmp_path / "empty.dcm").write_bytes(b"")
    for name in ("cut_pixels.dcm", "cut_header.dcm", "empty.dcm"):
        with pytest.raises(UnreadableInputError) as err:
            read_dicom([tmp_path / name], CFG)
        assert err.value.path.endswith(name) and err.value.reason
    with pytest.raises(UnreadableInputError, match="empty"):
        read_dicom_hu([tmp_path / "empty.dcm"], LIMITS)


def test_missing_pixel_data_and_inconsistent_shapes(tmp_path: Path) -> None:
    ds = make_dataset(_ramp(), modality="MR")
    del ds.PixelData
    with pytest.raises(UnreadableInputError, match="[Pp]ixel [Dd]ata"):
        read_dicom([save(ds, tmp_path / "nopix.dcm")], CFG)
    a = write_dicom(tmp_path / "a.dcm", _ramp(4, 4), modality="CT", series_uid="1.2.3", instance=1)
    b = write_dicom(tmp_path / "b.dcm", _ramp(4, 5), modality="CT", series_uid="1.2.3", instance=2)
    c = write_dicom(tmp_path / "c.dcm", _ramp(4, 4), modality="CT", series_uid="1.2.3", instance=3)
    frames, meta = read_dicom([a, b, c], CFG)
    assert frames.shape[:3] == (2, 4, 4) and meta["members"] == [str(a), str(c)]
    assert [(Path(p).name, "differs" in r) for p, r in meta["dropped"]] == [("b.dcm", True)]


# --------------------------------------------------------------------------------- series accounting
def test_a_truncated_slice_is_dropped_and_the_rest_of_the_series_kept(tmp_path: Path) -> None:
    hu = np.stack([np.full((8, 8), 10 * t, np.int16) for t in range(6)])
    paths = write_ct_series(tmp_path, hu)
    whole = paths[3].read_bytes()
    paths[3].write_bytes(whole[: len(whole) - 60])  # the pixel data cut short: header fine, pixels not
    hu_read, meta = read_dicom_hu(paths, LIMITS)
    assert hu_read.shape == (5, 8, 8) and meta["n_frames"] == 5 and meta["slice_gaps"] == 1
    np.testing.assert_array_equal(hu_read[:, 0, 0], [0, 10, 20, 40, 50])  # slice 3 is the gap
    assert meta["members"] == sorted(str(p) for p in paths if p != paths[3])
    assert [Path(p) for p, _ in meta["dropped"]] == [paths[3]] and "decoded" in meta["dropped"][0][1]


def test_a_series_with_more_broken_than_usable_files_fails_whole_with_the_first_reason(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, np.zeros((4, 8, 8), np.int16))
    for path in paths[:3]:
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UnreadableInputError, match="1 of 4 files of the series usable"):
        read_dicom(paths, CFG)


def test_duplicate_instances_are_dropped_not_stacked(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, np.stack([np.full((8, 8), t, np.int16) for t in range(3)]))
    copy = tmp_path / "copy_of_first.dcm"
    copy.write_bytes(paths[0].read_bytes())
    frames, meta = read_dicom([*paths, copy], CFG)
    assert len(frames) == 3 and meta["n_frames"] == 3 and len(meta["members"]) == 3
    # the first file by path is kept (here the copy), the other one is reported
    assert [(Path(p).name, "duplicate instance" in r) for p, r in meta["dropped"]] == [(paths[0].name, True)]


def test_a_truncated_copy_beside_its_original_loses_nothing(tmp_path: Path) -> None:
    original = write_dicom(tmp_path / "b_ct.dcm", _ramp(), modality="CT", series_uid="1.2.9", instance=1)
    whole = original.read_bytes()
    truncated = tmp_path / "a_ct_copy.dcm"  # sorts first, shares the SOPInstanceUID, cannot be decoded
    truncated.write_bytes(whole[: len(whole) - 30])
    frames, meta = read_dicom([original, truncated], CFG)
    assert len(frames) == 1 and meta["members"] == [str(original)]
    assert [p for p, _ in meta["dropped"]] == [str(truncated)]


def test_a_dataset_without_preamble_or_file_meta_is_read(tmp_path: Path) -> None:
    ds = make_dataset(_ramp(), modality="MR")
    ds.file_meta = FileMetaDataset()  # no file meta at all, as old archives and some scanners write them
    bare = tmp_path / "bare.dcm"
    ds.preamble = None
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    hu, meta = read_dicom_hu([bare], LIMITS)
    np.testing.assert_array_equal(hu[0], _ramp())
    assert meta["modality"] == "mri" and meta["dropped"] == []


def test_pydicoms_big_endian_file_without_meta_is_parsed_and_judged_on_its_content() -> None:
    path = _local_testdata("ExplVR_BigEndNoMeta.dcm")  # an RT Ion Plan: parsed, then refused for what it holds
    assert sniff_kind(path) == "dicom"
    with pytest.raises(UnreadableInputError, match="no image in this DICOM object .*RT Ion Plan"):
        read_dicom([path], CFG)


def test_too_large_refused_before_decoding(tmp_path: Path) -> None:
    ds = make_dataset(_ramp(), modality="CR")
    ds.Rows = ds.Columns = 60000  # the 96-byte pixel data could never be decoded at this size
    huge = save(ds, tmp_path / "huge.dcm")
    with pytest.raises(InputTooLargeError, match="60000"):
        read_dicom([huge], CFG)
    stack = write_dicom(tmp_path / "mf.dcm", np.zeros((5, 4, 4), np.uint8), modality="MR")
    with pytest.raises(InputTooLargeError, match="frames"):
        read_dicom_hu([stack], LimitsConfig(max_frames=4))
    with pytest.raises(InputTooLargeError, match="voxels"):
        read_dicom_hu([stack], LimitsConfig(max_voxels=79))


def test_burned_in_annotation_is_phi_risk(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "burn.dcm", _ramp(), modality="US", burned_in="YES")
    with pytest.raises(PHIRiskError, match="BurnedInAnnotation"):
        read_dicom([path], CFG)


# ------------------------------------------------------------------------------------------------ meta
def test_meta_is_allow_listed_and_json(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "x.dcm",
        _ramp(),
        modality="MG",
        body_part="BREAST",
        patient_id="MRN-42",
        study_uid="1.2.840.99.1",
        series_uid="1.2.840.99.2",
        InstitutionName="General Hospital",
        SeriesDescription="left breast, Dr Who",
        KVP=28.0,
    )
    _, meta = read_dicom([path], CFG)
    assert set(meta) == META_KEYS and json.loads(json.dumps(meta)) == meta
    assert meta["modality"] == "mammography" and meta["body_part"] == "breast"
    assert meta["ids"] == {"patient": "MRN-42", "study": "1.2.840.99.1", "series": "1.2.840.99.2"}
    header = meta["header"]
    assert set(header) <= set(HEADER_ALLOWLIST)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "SeriesDescription"):
        assert keyword not in header
    assert "MRN-42" not in json.dumps(header) and "Doe" not in json.dumps(header)
    assert header["Modality"] == "MG" and header["KVP"] == 28.0 and header["Rows"] == 6
    assert header["PixelSpacing"] == [0.5, 0.75] and header["SOPClassUID"]
    assert (meta["n_frames"], meta["height"], meta["width"], meta["channels"]) == (1, 6, 8, 1)


# ------------------------------------------------------------------------------------------ real files
def test_real_ct_and_mr_files() -> None:
    hu, meta = read_dicom_hu([_local_testdata("CT_small.dcm")], LIMITS)
    assert hu.shape == (1, 128, 128) and meta["modality"] == "ct"
    assert -1100 <= hu.min() < -500 and 500 < hu.max() <= 3100  # air to bone, in HU
    assert meta["spacing"] == pytest.approx([5.0, 0.661468, 0.661468])
    mr, meta = read_dicom([_local_testdata("MR_small.dcm")], CFG)
    assert mr.shape == (1, 64, 64, 1) and meta["modality"] == "mri" and mr.max() == 255


def test_real_jpeg_ls_and_jpeg_lossless_files() -> None:
    reference, _ = read_dicom_hu([_local_testdata("MR_small.dcm")], LIMITS)
    jls, meta = read_dicom_hu([_local_testdata("MR_small_jpeg_ls_lossless.dcm")], LIMITS)
    np.testing.assert_array_equal(jls, reference)
    assert meta["header"]["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.80"
    # JPEG Lossless, Process 14 SV1 (pydicom-data): a nuclear-medicine whole-body image
    nm, meta = read_dicom_hu([_local_testdata("JPEG-LL.dcm")], LIMITS)
    assert nm.shape == (1, 1024, 256) and meta["modality"] == "nm" and meta["body_part"] == "whole body"
    assert nm.min() >= 0 and 100 < nm.max() < 4096


def test_real_multiframe_jpeg_ls_matches_uncompressed() -> None:
    reference, _ = read_dicom_hu([_local_testdata("emri_small.dcm")], LIMITS)
    values, meta = read_dicom_hu([_local_testdata("emri_small_jpeg_ls_lossless.dcm")], LIMITS)
    assert values.shape == (10, 64, 64) and meta["kind"] == "volume"
    np.testing.assert_array_equal(values, reference)


def test_real_truncated_file() -> None:
    with pytest.raises(UnreadableInputError, match="MR_truncated"):
        read_dicom([_local_testdata("MR_truncated.dcm")], CFG)
    assert dcmread(_local_testdata("MR_truncated.dcm"), stop_before_pixels=True).Rows == 64


def test_real_deflated_and_malformed_files() -> None:
    frames, meta = read_dicom([_local_testdata("image_dfl.dcm")], CFG)  # Deflated Explicit VR Little Endian
    assert frames.shape == (1, 512, 512, 1) and frames.max() > frames.min()
    with pytest.warns(UserWarning, match="Invalid value"), pytest.raises(UnreadableInputError, match="malformed"):
        read_dicom([_local_testdata("badVR.dcm")], CFG)  # an IS value of '1A'
