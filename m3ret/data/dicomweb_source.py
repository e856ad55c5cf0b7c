"""A DICOMweb server (a PACS) as an ingest source: QIDO-RS lists its series, WADO-RS fetches their instances into a
local cache, and the cached files are enumerated like a folder of DICOM files, so they go through the same reader,
PHI handling and quarantine as files on disk.

The cache, `<cache_dir>/dicomweb/<h(base URL)>/<h(SeriesInstanceUID)>/<h(SOPInstanceUID)>.dcm` (h: the salted hash
of `m3ret.data.phi`), holds each instance once, so nothing is fetched twice: a series whose listed instance count
matches its cached files costs no request beyond the listing; otherwise its instances are listed, cached ones the
server no longer has are removed and only the missing ones fetched (a new series in one WADO-RS request). File names
are hashes, so the manifest's and quarantine's paths carry no UID; the files are the server's instances whole (the
input, like a source folder on disk), under a folder only its owner may enter (0700).

A series that cannot be retrieved (an HTTP error for it, an instance pydicom cannot write) is quarantined with the
reason and its cache folder as the path (the reason names the HTTP status, never the request's URL, which holds
UIDs), and the run goes on. A server that cannot be listed or is lost half-way fails the source
(SourceUnavailableError): going on without it would read as every one of its series deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from m3ret.config import IngestConfig, SourceConfig
from m3ret.data.dicom_reader import group_dicom_series
from m3ret.data.errors import SourceUnavailableError
from m3ret.data.phi import salted_hash
from m3ret.data.sources import ItemRef, Reject

CACHE_FOLDER = "dicomweb"
# instances as the server stores them (any transfer syntax): no transcoding on the way
AS_STORED = (("application/dicom", "*"),)
_STUDY, _SERIES, _SOP, _COUNT = "0020000D", "0020000E", "00080018", "00201209"
# a dotted UID (five or more components) inside an error message: the URLs of QIDO and WADO requests hold them
_UID = re.compile(r"\d+(?:\.\d+){4,}")


@dataclass(frozen=True)
class SeriesListing:
    """One series as QIDO-RS lists it; `instances` is None when the server leaves NumberOfSeriesRelatedInstances out."""

    study_uid: str
    series_uid: str
    instances: int | None


def connect(url: str, cfg: IngestConfig) -> DICOMwebClient:
    """A client of the server at `url`, logged in as the environment says (`IngestConfig`): bearer token or basic."""
    # dicomweb-client logs the study and series UIDs of every request at INFO
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
    session = requests.Session()
    if cfg.dicomweb_user:
        session.auth = (cfg.dicomweb_user, cfg.dicomweb_password)
    headers = {"Authorization": f"Bearer {cfg.dicomweb_token}"} if cfg.dicomweb_token else None
    return DICOMwebClient(url, session=session, headers=headers)


def describe(err: Exception, *uids: str) -> str:
    """An error as a quarantine reason without UIDs: the HTTP status, else the error with UIDs cut out."""
    response = getattr(err, "response", None)
    if isinstance(err, requests.HTTPError) and response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    message = str(err)
    for uid in filter(None, uids):
        message = message.replace(uid, "<uid>")
    return f"{type(err).__name__}: {_UID.sub('<uid>', message)}"


def _value(entry: dict[str, Any], tag: str) -> str:
    values = entry.get(tag, {}).get("Value") or [""]
    return str(values[0])


def list_series(client: DICOMwebClient, source: SourceConfig) -> list[SeriesListing]:
    """The source's series (QIDO-RS, every page) narrowed by `since` and `modalities`, sorted by series UID.
    SourceUnavailableError when the server does not answer the search."""
    base = {"StudyDate": f"{source.since}-"} if source.since else {}
    queries = [{**base, "Modality": modality} for modality in source.modalities] or [base]
    found: dict[str, SeriesListing] = {}
    try:
        for query in queries:
            entries = client.search_for_series(
                search_filters=query, fields=["NumberOfSeriesRelatedInstances"], get_remaining=True
            )
            for entry in entries:
                count = _value(entry, _COUNT)
                listing = SeriesListing(_value(entry, _STUDY), _value(entry, _SERIES), int(count) if count else None)
                if listing.series_uid:
                    found[listing.series_uid] = listing
    except (requests.RequestException, ValueError) as err:  # no answer, an error status, or no JSON
        raise SourceUnavailableError(source.dicomweb, f"QIDO-RS series search failed: {describe(err)}") from err
    return [found[uid] for uid in sorted(found)]


def listing_fingerprint(listing: list[SeriesListing]) -> dict[str, Any]:
    """{"series", "instances", "digest" over every (series UID, instance count)}: what the sources stage compares."""
    digest = hashlib.sha256()
    for series in listing:
        digest.update(f"{series.series_uid}\0{series.instances}\n".encode())
    return {
        "series": len(listing),
        "instances": sum(s.instances or 0 for s in listing),
        "digest": digest.hexdigest(),
    }


def cache_root(cache_dir: str | Path, url: str, salt: bytes) -> Path:
    """Where the instances of the server at `url` are cached (module docstring)."""
    return Path(cache_dir) / CACHE_FOLDER / salted_hash(url, salt)


def _write(ds: Dataset, folder: Path, salt: bytes) -> None:
    """One retrieved instance into the cache: a hidden temp file renamed, so a file in the cache is always whole."""
    sop = str(ds.get("SOPInstanceUID") or "")
    if not sop:
        raise ValueError("the server sent an instance without a SOPInstanceUID")
    name = salted_hash(sop, salt)
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    try:
        ds.save_as(tmp, enforce_file_format=True)
        tmp.replace(folder / f"{name}.dcm")
    finally:
        tmp.unlink(missing_ok=True)


def fetch_series(client: DICOMwebClient, series: SeriesListing, folder: Path, salt: bytes) -> None:
    """Bring `folder` (the series' cache folder) up to date with the server (module docstring); raises what the
    client raises (requests errors, pydicom's on a part it cannot parse)."""
    folder.mkdir(parents=True, exist_ok=True)
    cached = {p.stem: p for p in folder.glob("*.dcm")}
    if series.instances is not None and len(cached) == series.instances:
        return
    listed = client.search_for_instances(
        series.study_uid, series.series_uid, fields=["SOPInstanceUID"], get_remaining=True
    )
    wanted = {salted_hash(sop, salt): sop for sop in (_value(entry, _SOP) for entry in listed) if sop}
    for name in cached.keys() - wanted.keys():
        cached[name].unlink()
    missing = sorted(wanted.keys() - cached.keys())
    if not missing:
        return
    if len(missing) == len(wanted):
        instances = client.iter_series(series.study_uid, series.series_uid, media_types=AS_STORED)
    else:
        instances = (
            client.retrieve_instance(series.study_uid, series.series_uid, wanted[name], media_types=AS_STORED)
            for name in missing
        )
    for ds in instances:
        _write(ds, folder, salt)


def enumerate_dicomweb(source: SourceConfig, cfg: IngestConfig, salt: bytes) -> tuple[list[ItemRef], list[Reject]]:
    """The source's series fetched into the cache under `cfg.cache_dir`, then enumerated as DICOM files on disk
    (`group_dicom_series`): (items, rejects as (path, reason)). SourceUnavailableError when the server is lost."""
    client = connect(source.dicomweb, cfg)
    root = cache_root(cfg.cache_dir, source.dicomweb, salt)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.parent.chmod(0o700)  # the cached instances carry everything the PACS holds about the patient
    files: list[Path] = []
    rejects: list[Reject] = []
    for series in list_series(client, source):
        folder = root / salted_hash(series.series_uid, salt)
        try:
            fetch_series(client, series, folder, salt)
        except (requests.ConnectionError, requests.Timeout) as err:
            reason = f"the server was lost while retrieving: {describe(err, series.study_uid, series.series_uid)}"
            raise SourceUnavailableError(source.dicomweb, reason) from err
        except Exception as err:  # an error status for this series, or an instance pydicom cannot read or write
            reason = f"DICOMweb retrieval failed: {describe(err, series.study_uid, series.series_uid)}"
            rejects.append((str(folder), reason))
            continue
        files += sorted(folder.glob("*.dcm"))
    series_files, dicom_rejects = group_dicom_series(files)
    dataset = source.dataset or urlsplit(source.dicomweb).hostname or "dicomweb"
    refs = [
        ItemRef("dicom", tuple(str(p) for p in paths), dataset, source.modality, source=source.dicomweb)
        for paths in series_files
    ]
    return refs, rejects + dicom_rejects
