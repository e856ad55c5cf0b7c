"""The split stage: group-disjoint pretrain / gallery / query splits of the manifest into `split.out`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from m3ret.config import Params
from m3ret.data.splits import make_splits, split_summary, write_splits
from m3ret.stages.report import write_report


def run(params: Params) -> dict[str, Any]:
    """Split the manifest; returns the summary (items and groups per split) written to reports/split.json."""
    manifest = pd.read_parquet(params.ingest.out)
    splits = make_splits(manifest, params.split)
    write_splits(splits, params.split.out)
    summary = split_summary(splits, manifest)
    write_report("split", summary)
    return summary
