"""A stage's summary as `reports/<stage>.json`, the small record dvc tracks and people read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORTS_DIR = Path("reports")


def write_report(stage: str, summary: dict[str, Any]) -> Path:
    """`summary` as sorted, indented JSON in `reports/<stage>.json`; returns the path."""
    path = REPORTS_DIR / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path
