"""The sources stage: a fingerprint of every file under `ingest.sources`, and of every DICOMweb source's listing, so
dvc reruns ingest when one changes.

dvc cannot list a params value's paths as dependencies, so this stage runs on every `dvc repro`
(`always_changed`) and writes `data/sources.json`; ingest depends on that file, and dvc reruns ingest (and what
follows) only when its content changed: a file added, removed, resized or rewritten (modification time), in any
configured folder, inside the repository or not, or a series added to, removed from or grown on a DICOMweb server
(its QIDO-RS listing: series UIDs and instance counts). It holds counts and digests only, never a path or a UID.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from m3ret.config import Params
from m3ret.data.dicomweb_source import connect, list_series, listing_fingerprint

OUT = Path("data/sources.json")


def fingerprint(paths: list[Path]) -> dict[str, Any]:
    """{"files": n, "bytes": total, "digest": sha256 over every file's (path, size, mtime_ns), sorted}: what dvc
    compares between runs. A missing source raises FileNotFoundError naming it."""
    digest = hashlib.sha256()
    files = total = 0
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"source {root} does not exist")
        for path in sorted([root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())):
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            files, total = files + 1, total + stat.st_size
    return {"files": files, "bytes": total, "digest": digest.hexdigest()}


def run(params: Params) -> dict[str, Any]:
    """Fingerprint the configured sources into OUT; returns it. A DICOMweb server that does not answer its listing
    raises SourceUnavailableError."""
    sources = params.ingest.sources
    summary = fingerprint([Path(source.path) for source in sources if source.path])
    listings = [
        listing_fingerprint(list_series(connect(source.dicomweb, params.ingest), source))
        for source in sources
        if source.dicomweb
    ]
    if listings:
        summary["dicomweb_series"] = sum(listing["series"] for listing in listings)
        summary["dicomweb_instances"] = sum(listing["instances"] for listing in listings)
        combined = [summary["digest"], *(listing["digest"] for listing in listings)]
        summary["digest"] = hashlib.sha256("\n".join(combined).encode()).hexdigest()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
