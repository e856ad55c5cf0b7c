"""The sections that say where images come from: source folders and DICOMweb servers, ingest, the DICOM listener."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from m3ret.config.section import Section


class SourceConfig(Section):
    """One place to ingest from: a folder or file (`path`) or a DICOMweb server (`dicomweb`: its base URL, e.g.
    `http://pacs:8042/dicom-web`), exactly one. `modality` overrides what the files say (e.g. `endoscopy`).

    DICOMweb only: `since` (YYYYMMDD) keeps the series of studies from that date on, `modalities` (DICOM codes such
    as CT, MR) the series of those modalities; both narrow the QIDO-RS query. Credentials never go in the URL: the
    environment's M3RET_DICOMWEB_TOKEN, or M3RET_DICOMWEB_USER and M3RET_DICOMWEB_PASSWORD (`IngestConfig`).
    """

    path: str = ""
    dicomweb: str = ""
    dataset: str = ""
    modality: str = ""
    since: str = ""
    modalities: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_place(self) -> SourceConfig:
        if bool(self.path) == bool(self.dicomweb):
            raise ValueError("give exactly one of path (a folder or file) and dicomweb (a DICOMweb base URL)")
        if self.path and (self.since or self.modalities):
            raise ValueError("since and modalities narrow a DICOMweb source's query; a path source has neither")
        if self.dicomweb:
            url = urlsplit(self.dicomweb)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"dicomweb must be an http(s) URL with a host, got {self.dicomweb!r}")
            if url.username or url.password:
                raise ValueError("no credentials in the dicomweb URL: M3RET_DICOMWEB_USER / _PASSWORD hold them")
        if self.since:
            try:
                datetime.datetime.strptime(self.since, "%Y%m%d")
            except ValueError:
                raise ValueError(f"since must be a date YYYYMMDD, got {self.since!r}") from None
        bad = [m for m in self.modalities if not re.fullmatch(r"[A-Z0-9]{2,16}", m)]
        if bad:
            raise ValueError(f"modalities are DICOM Modality codes (CT, MR, US, ...), got {bad}")
        return self


class IngestConfig(Section):
    """Sources -> `out` (manifest) + `quarantine`; decoded facts and DICOMweb instances cached under `cache_dir`.

    `reidentify_table` (default: beside `out`, `data/reidentify.parquet`): item id -> StudyInstanceUID,
    SeriesInstanceUID and source of every DICOM item (`m3ret.data.reidentify`), written owner-only (0600). DICOMweb
    credentials come from the environment (M3RET_DICOMWEB_TOKEN: a bearer token; or M3RET_DICOMWEB_USER and
    M3RET_DICOMWEB_PASSWORD: basic auth) and, like the salt, never appear in a dump of the section.
    """

    sources: tuple[SourceConfig, ...] = ()
    out: str = "data/manifest.parquet"
    quarantine: str = "reports/quarantine.csv"
    cache_dir: str = "data/cache/ingest"
    reidentify_table: str = ""
    salt_file: str = "data/id_salt"
    # the salt itself, normally from the environment (M3RET_ID_SALT); when empty, salt_file's (created on first use)
    id_salt: str = Field("", repr=False, exclude=True)
    dicomweb_token: str = Field("", repr=False, exclude=True)
    dicomweb_user: str = Field("", repr=False, exclude=True)
    dicomweb_password: str = Field("", repr=False, exclude=True)
    workers: int = 2

    @model_validator(mode="before")
    @classmethod
    def _reidentify_beside_manifest(cls, data: Any) -> Any:
        # filled once, when the section is read: a copy with another `out` (a refresh's scan) keeps the table's path
        if isinstance(data, dict) and not data.get("reidentify_table"):
            out = Path(str(data.get("out") or cls.model_fields["out"].default))
            data = {**data, "reidentify_table": str(out.with_name("reidentify.parquet"))}
        return data

    @model_validator(mode="after")
    def _one_dicomweb_login(self) -> IngestConfig:
        if self.dicomweb_token and (self.dicomweb_user or self.dicomweb_password):
            raise ValueError("set M3RET_DICOMWEB_TOKEN or M3RET_DICOMWEB_USER/PASSWORD, not both")
        if bool(self.dicomweb_user) != bool(self.dicomweb_password):
            raise ValueError("M3RET_DICOMWEB_USER and M3RET_DICOMWEB_PASSWORD go together")
        return self


class ListenConfig(Section):
    """`m3ret listen`: a DICOM storage SCP (C-STORE, and C-ECHO to verify) on `host`:`port` that answers only
    associations addressed to `ae_title` and writes each received instance into `spool`, for a file source listing
    that folder to ingest. `host` 127.0.0.1 accepts this machine only; 0.0.0.0 a modality or PACS elsewhere."""

    spool: str = "data/spool"
    ae_title: str = "M3RET"
    port: int = 11112
    host: str = "127.0.0.1"

    @model_validator(mode="after")
    def _valid_ae_title(self) -> ListenConfig:
        if not re.fullmatch(r"[\x20-\x5b\x5d-\x7e]{1,16}", self.ae_title) or not self.ae_title.strip():
            raise ValueError(f"ae_title must be 1-16 printable ASCII characters, no backslash; got {self.ae_title!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must lie in 1..65535, got {self.port}")
        return self
