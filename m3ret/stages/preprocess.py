"""The preprocess stage: the manifest's items -> model-ready frames in `preprocess.out`; failures quarantined."""

from __future__ import annotations

from typing import Any

import pandas as pd

from m3ret.config import Params
from m3ret.data.preprocess import preprocess
from m3ret.engines import open_engine
from m3ret.stages.report import REPORTS_DIR, write_report

QUARANTINE = REPORTS_DIR / "preprocess_quarantine.csv"


def run(params: Params) -> dict[str, Any]:
    """Decode every item on the `engine` section's engine; returns the summary written to reports/preprocess.json
    (failures: QUARANTINE)."""
    manifest = pd.read_parquet(params.ingest.out)
    with open_engine(params.engine) as engine:
        frames, quarantine = preprocess(manifest, params.preprocess, params.read, engine.map_items)
    QUARANTINE.parent.mkdir(parents=True, exist_ok=True)
    quarantine.to_csv(QUARANTINE, index=False)
    summary = {"items": int(frames.item_id.nunique()), "frames": len(frames), "quarantined": len(quarantine)}
    write_report("preprocess", summary)
    return summary
