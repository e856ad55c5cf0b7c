"""Hits back to their studies, for tokens with the `reidentify` scope only: StudyInstanceUID, SeriesInstanceUID and
a viewer link, from ingest's re-identification table (`ingest.reidentify_table`, mode 0600; never in the index).

The link is `serve.viewer_url` with `{source}` (the DICOMweb base URL the item came from), `{study_uid}` and
`{series_uid}` filled in: by default the study's DICOMweb (WADO-RS) URL, which any DICOMweb viewer opens; an OHIF
viewer is e.g. `https://viewer.example.org/viewer?StudyInstanceUIDs={study_uid}`. An item ingested from files on disk
has no DICOMweb source: it gets its UIDs and no link when the template needs `{source}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m3ret.data.reidentify import ReidentifyTable
from m3ret.data.sources import FILES
from serving.reloading_file import ReloadingFile


class StudyLinks:
    """item id -> {study_instance_uid, series_instance_uid, viewer_url} or None (not DICOM, or not in the table);
    the table is re-read when ingest rewrites it."""

    def __init__(self, table_path: str | Path, viewer_url: str) -> None:
        self.viewer_url = viewer_url
        self._table: ReloadingFile[ReidentifyTable | None] = ReloadingFile(Path(table_path), ReidentifyTable.load, None)

    def resolve(self, item_id: str) -> dict[str, Any] | None:
        table = self._table.value()
        record = table.lookup(item_id) if table is not None else None
        if record is None:
            return None
        linkable = record.source != FILES or "{source}" not in self.viewer_url
        link = self.viewer_url.format(source=record.source, study_uid=record.study_uid, series_uid=record.series_uid)
        return {
            "study_instance_uid": record.study_uid,
            "series_instance_uid": record.series_uid,
            "viewer_url": link if linkable else None,
        }
