"""What a DICOM series tells about itself, de-identified: kind, modality, sizes, and allow-listed header fields."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

MODALITIES: dict[str, str] = {
    "CT": "ct",
    "MR": "mri",
    "CR": "xray",
    "DX": "xray",
    "DR": "xray",
    "RG": "xray",
    "MG": "mammography",
    "US": "ultrasound",
    "NM": "nm",
    "PT": "pet",
    "XA": "angiography",
    "RF": "angiography",
    "ES": "endoscopy",
    "SM": "pathology",
    "OP": "fundus",
    "OPT": "fundus",
}
# Elements larger than this (the pixel data) are read from the file only when used: one header parse per file.
# Multi-frame objects of these modalities are clips in time (cine), not stacks in space: never sorted by position.
VIDEO_MODALITIES = frozenset({"US", "XA", "RF", "ES"})

# Acquisition and pixel-format fields only. Never names, dates, ids, UIDs (beyond the two below), free text,
# institutions or device serials: meta["header"] is stored and shown.
HEADER_ALLOWLIST: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
    "SOPClassUID",
    "TransferSyntaxUID",
    "ImageType",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImageOrientationPatient",
    "PatientPosition",
    "ViewPosition",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "KVP",
    "XRayTubeCurrent",
    "ExposureTime",
    "Exposure",
    "ConvolutionKernel",
    "MagneticFieldStrength",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "ScanningSequence",
    "SequenceVariant",
    "MRAcquisitionType",
    "FrameTime",
    "CineRate",
    "LossyImageCompression",
)


def series_meta(
    ref: Dataset, n: int, rows: int, cols: int, channels: int, spacing: list[float] | None
) -> dict[str, Any]:
    modality = str(ref.get("Modality") or "").upper()
    kind = "image" if n == 1 else "video" if modality in VIDEO_MODALITIES else "volume"
    return {
        "kind": kind,
        "modality": MODALITIES.get(modality, "other"),
        "body_part": str(ref.get("BodyPartExamined") or "").lower(),
        "spacing": spacing,
        "n_frames": n,
        "height": rows,
        "width": cols,
        "channels": channels,
        "header": _header(ref),
        "ids": {
            "patient": str(ref.get("PatientID") or ""),
            "study": str(ref.get("StudyInstanceUID") or ""),
            "series": str(ref.get("SeriesInstanceUID") or ""),
        },
    }


def _header(ds: Dataset) -> dict[str, Any]:
    """HEADER_ALLOWLIST fields present in `ds` (TransferSyntaxUID from the file meta), as plain JSON types."""
    out: dict[str, Any] = {}
    for keyword in HEADER_ALLOWLIST:
        source = ds.file_meta if keyword == "TransferSyntaxUID" else ds
        value = _plain(source.get(keyword))
        if value not in (None, "", []):
            out[keyword] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):  # DSfloat is a float
        return float(value)
    if isinstance(value, int):  # IS is an int
        return int(value)
    if value is None or isinstance(value, bytes | Dataset):
        return None
    return str(value)
