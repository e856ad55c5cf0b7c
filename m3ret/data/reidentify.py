"""The re-identification table: which DICOM study and series an item id stands for, and where the item came from.

Everything else m3ret writes (manifest, frames, embeddings, index rows, reports) knows an item by its id and salted
hashes only; this table is the one way back to the original study, for whoever may open it (the service's viewer
links). Ingest writes it (`ingest.reidentify_table`) owner-only, mode 0600 from the moment the file exists (a temp
file opened 0600, then renamed), and dvc keeps it out of its cache and remotes. Only DICOM items have rows; `source`
is the DICOMweb base URL an item was fetched from, or `m3ret.data.sources.FILES` ("files") for a folder on disk (the
listener's spool among them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from m3ret.data.dicom_reader import dicom_uids
from m3ret.data.errors import InputError

COLUMNS = ("item_id", "study_instance_uid", "series_instance_uid", "source")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReidentifyRecord:
    """The original of one item: its StudyInstanceUID, SeriesInstanceUID and source (a DICOMweb base URL or "files")."""

    study_uid: str
    series_uid: str
    source: str


class ReidentifyTable:
    """item id -> ReidentifyRecord. Build it with `from_manifest`, read it with `load`."""

    def __init__(self, records: Mapping[str, ReidentifyRecord]) -> None:
        self._records = dict(records)

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, item_id: str) -> ReidentifyRecord | None:
        """The item's original, or None for an item that is not DICOM (or not in this table)."""
        return self._records.get(item_id)

    @classmethod
    def load(cls, path: str | Path) -> ReidentifyTable:
        """The table ingest wrote at `path`; FileNotFoundError when there is none."""
        table = pd.read_parquet(path, columns=list(COLUMNS))
        return cls(
            {
                row.item_id: ReidentifyRecord(row.study_instance_uid, row.series_instance_uid, row.source)
                for row in table.itertuples(index=False)
            }
        )

    @classmethod
    def from_manifest(cls, manifest: pd.DataFrame, sources: Mapping[str, str]) -> ReidentifyTable:
        """Rows for the manifest's DICOM items: the UIDs from the header of each item's first file, `sources` the
        item id -> source of each. An item whose file cannot be read again (gone since it was decoded) is left out
        and logged."""
        records = {}
        for row in manifest[manifest["reader"] == "dicom"].itertuples(index=False):
            try:
                study, series = dicom_uids(Path(row.path))
            except InputError as err:
                log.warning("re-identification: item %s left out: %s", row.item_id, err.reason)
                continue
            records[row.item_id] = ReidentifyRecord(study, series, sources[row.item_id])
        return cls(records)

    def write(self, path: str | Path) -> None:
        """Replace the table at `path`, readable by its owner only (module docstring)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(
            [(item_id, r.study_uid, r.series_uid, r.source) for item_id, r in sorted(self._records.items())],
            columns=list(COLUMNS),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)  # a stale temp file would keep its own mode: O_EXCL creates a new one
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(descriptor, 0o600)  # exactly 0600, whatever the umask
        with os.fdopen(descriptor, "wb") as handle:
            table.to_parquet(handle, index=False)
        tmp.replace(path)
