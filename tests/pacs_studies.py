"""Studies for the test PACS: small CT series (tests/data/dicom_factory.py) whose patient name, patient id,
accession number and UIDs are planted, so the PHI tests can look for them in every output, plus pydicom's own CT and
MR files (real scanner output that ships with pydicom)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).parent / "data"))
from dicom_factory import write_ct_series  # noqa: E402

# pydicom's bundled files (never downloaded): a 128x128 CT slice and a 64x64 MR slice
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm")


@dataclass(frozen=True)
class Study:
    """One uploaded series: its files and every identifying value it carries."""

    study_uid: str
    series_uid: str
    sop_uids: tuple[str, ...]
    paths: tuple[Path, ...]
    identifiers: tuple[str, ...]  # patient name, patient id (and accession number)

    @property
    def planted(self) -> tuple[str, ...]:
        """Every value that identifies the study: what no output but the re-identification table may hold."""
        return (*self.identifiers, self.study_uid, self.series_uid, *self.sop_uids)


def _stripes(seed: int, slices: int, size: int) -> np.ndarray:
    """HU [slices,size,size]: stripes of a seed-given period and angle, so every study looks like itself."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    angle, period = rng.uniform(0, np.pi), rng.uniform(0.2, 1.2)
    volume = [
        np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * period + t) * 300 + rng.normal(0, 30, (size, size))
        for t in range(slices)
    ]
    return np.stack(volume).astype(np.int16)


def write_study(folder: Path, seed: int, slices: int = 3, size: int = 32, study_date: str = "20240105") -> Study:
    """A CT study of one series in `folder` for patient `seed`, with planted identifiers."""
    name, patient_id, accession = f"Planted^Patient{seed}", f"MRN-PLANTED-{seed:04d}", f"ACC-PLANTED-{seed:04d}"
    paths = write_ct_series(
        folder,
        _stripes(seed, slices, size),
        # square pixels: preprocess letterboxes a volume's slices with their pixel aspect but a single 2-D slice
        # without it, so only then does a query slice look like its own series' frame
        spacing=(2.5, 0.7, 0.7),
        seed=seed,
        patient_name=name,
        patient_id=patient_id,
        AccessionNumber=accession,
        StudyDate=study_date,
    )
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    sops = tuple(str(h.SOPInstanceUID) for h in headers)
    study, series = str(headers[0].StudyInstanceUID), str(headers[0].SeriesInstanceUID)
    return Study(study, series, sops, tuple(paths), (name, patient_id, accession))


def pydicom_study(folder: Path, name: str) -> Study:
    """One of pydicom's files copied into `folder`, with what identifies it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(Path(get_testdata_file(name)).read_bytes())
    ds = dcmread(path, stop_before_pixels=True)
    identifiers = (str(ds.PatientName), str(ds.PatientID))
    return Study(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), (str(ds.SOPInstanceUID),), (path,), identifiers)
