"""Enumerate the items of a configured source: a folder of mixed files, a single file, or a manifest folder.

A DICOM series spread over many files is one item; a MedMNIST npz is enumerated entry by entry at ingest.

A manifest folder (a labeled benchmark such as medbench, for the pipeline and for `m3ret evaluate --bench` alike)
holds `manifest.csv`, one row per file, every value read as text (`1` and `NA` stay the strings they are):
- required columns `path` (relative to the folder), `label`, `group_id` (patient, lesion or near-duplicate group),
  `role`: `query`, `gallery`, or empty (no benchmark role: the split stage assigns one);
- optional columns `dataset` (default: the source's dataset name) and `modality` (default: the source's, else what
  the files say); other columns are ignored.
A missing required column or an unparseable file fails the source (UnreadableInputError naming manifest.csv); a row
with another role, a missing file or a file of no known kind is rejected with its reason, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from m3ret.config import SourceConfig
from m3ret.data.dicom_reader import group_dicom_series
from m3ret.data.errors import InputError, UnreadableInputError
from m3ret.data.sniff import sniff_kind

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "group_id", "role")  # required; `dataset`, `modality` optional
BENCHMARK_ROLES = ("query", "gallery")
# the `source` of items read from files on disk
FILES = "files"
# documentation that travels with data sets; not images, so neither items nor quarantine entries
_DOC_SUFFIXES = {".md", ".txt", ".rst", ".html", ".pdf", ".json", ".yaml", ".yml", ".csv", ".dvc"}


@dataclass(frozen=True)
class ItemRef:
    """Where an item's pixels are and what the source says about it (labels, roles, raw group ids)."""

    reader: str  # dicom | nifti | video | image | npz (a whole MedMNIST file, expanded at ingest)
    paths: tuple[str, ...]  # a DICOM series: all its files; otherwise one file
    dataset: str
    modality: str = ""
    label: str = ""
    role: str = ""
    group: str = ""
    source: str = FILES  # where it came from: FILES, or the base URL of a DICOMweb server (m3ret.data.reidentify)


Reject = tuple[str, str]


def is_document(path: Path) -> bool:
    """Documentation that travels with data sets (README, licence, manifests): neither an item nor a reject."""
    return path.name.startswith(".") or path.suffix.lower() in _DOC_SUFFIXES or path.stem.upper() == "LICENSE"


def enumerate_source(source: SourceConfig) -> tuple[list[ItemRef], list[Reject]]:
    """Items of one source and the files rejected while enumerating (path, reason)."""
    root = Path(source.path)
    dataset = source.dataset or root.stem
    if not root.exists():
        raise FileNotFoundError(f"source {root} does not exist")
    if root.is_dir() and (root / MANIFEST_NAME).is_file():
        return _enumerate_manifest_folder(root, dataset, source.modality)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not is_document(p))
    refs: list[ItemRef] = []
    rejects: list[Reject] = []
    dicom_files: list[Path] = []
    for path in files:
        try:
            kind = sniff_kind(path)
        except InputError as err:
            rejects.append((str(path), err.reason))
            continue
        if kind == "dicom":
            dicom_files.append(path)
        else:
            refs.append(ItemRef(kind, (str(path),), dataset, source.modality))
    series, dicom_rejects = group_dicom_series(dicom_files)
    rejects += dicom_rejects
    refs += [ItemRef("dicom", tuple(str(p) for p in s), dataset, source.modality) for s in series]
    return refs, rejects


def _read_manifest(root: Path) -> pd.DataFrame:
    """`root`/manifest.csv as text (module docstring), with `dataset` and `modality` columns ("" where absent)."""
    manifest = root / MANIFEST_NAME
    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UnreadableInputError(manifest, f"cannot parse the manifest: {err}") from err
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        reason = f"missing required column(s) {missing}; found {list(table.columns)}; required {list(MANIFEST_COLUMNS)}"
        raise UnreadableInputError(manifest, reason)
    for optional in ("dataset", "modality"):
        if optional not in table.columns:
            table[optional] = ""
    return table


def _enumerate_manifest_folder(root: Path, dataset: str, modality: str) -> tuple[list[ItemRef], list[Reject]]:
    table = _read_manifest(root)
    refs: list[ItemRef] = []
    rejects: list[Reject] = []
    for row in table.itertuples(index=False):
        path = root / row.path
        if row.role and row.role not in BENCHMARK_ROLES:
            rejects.append((str(path), f"manifest role {row.role!r} is not one of {list(BENCHMARK_ROLES)} or empty"))
            continue
        if not path.is_file():
            rejects.append((str(path), "listed in manifest.csv but missing"))
            continue
        try:
            kind = sniff_kind(path)
        except InputError as err:
            rejects.append((str(path), err.reason))
            continue
        refs.append(
            ItemRef(
                reader=kind,
                paths=(str(path),),
                dataset=row.dataset or dataset,
                modality=modality or row.modality,
                label=row.label,
                role=row.role,
                group=row.group_id,
            )
        )
    return refs, rejects
