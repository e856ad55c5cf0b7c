"""The ingest stage: `ingest.sources` -> `ingest.out` (manifest) + `ingest.quarantine`, summary in reports/."""

from __future__ import annotations

from typing import Any

from m3ret.config import ConfigError, Params
from m3ret.data.ingest import ingest, ingest_summary
from m3ret.data.phi import ingest_salt
from m3ret.engines import open_engine
from m3ret.stages.report import write_report


def run(params: Params) -> dict[str, Any]:
    """Scan every source on the `engine` section's engine; returns the summary (items, frames, quarantined counts)
    written to reports/ingest.json."""
    if not params.ingest.sources:
        raise ConfigError("ingest.sources is empty: list at least one folder, file or DICOMweb server")
    with open_engine(params.engine) as engine:
        manifest, quarantine = ingest(params.ingest, params.read, ingest_salt(params.ingest), engine.map_items)
    summary = ingest_summary(manifest, quarantine)
    write_report("ingest", summary)
    return summary
