"""The evaluation gate: a new model version is published only if its retrieval quality holds up.

The gate file records the published model (collection, version, mean mAP@10); the next candidate is compared with
it. The first model has nothing to be compared with and passes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class GateDecision:
    """passed: publish or not; candidate / previous: mean mAP@10 of the candidate and of the published model (None
    before the first publish); min_ratio: the required candidate / previous ratio; reason: one line for logs."""

    passed: bool
    candidate: float
    previous: float | None
    min_ratio: float
    reason: str


def _read_gate(gate_file: Path) -> dict | None:
    if not gate_file.is_file():
        return None
    try:
        record = json.loads(gate_file.read_text())
        float(record["mean_map"])
    except (ValueError, KeyError, TypeError) as err:
        # A broken record must stop the publish, not pass it as if no model had ever been published.
        raise ValueError(f"{gate_file}: unreadable gate record ({err!r}); fix or remove it") from err
    return record


def decide_gate(candidate_map: float, gate_file: Path, min_ratio: float) -> GateDecision:
    """Pass when no model was published yet (no `gate_file`), else when candidate >= min_ratio x published mAP@10.

    Raises ValueError naming the file when it exists but cannot be read.
    """
    gate_file = Path(gate_file)
    record = _read_gate(gate_file)
    if record is None:
        return GateDecision(True, candidate_map, None, min_ratio, f"first model (no {gate_file}): passes")
    previous = float(record["mean_map"])
    needed = min_ratio * previous
    passed = candidate_map >= needed
    verdict = "passes" if passed else "fails"
    reason = (
        f"mean mAP@10 {candidate_map:.4f} vs {needed:.4f} needed ({min_ratio} x {previous:.4f} of "
        f"{record.get('model_version', '?')} in {record.get('collection', '?')}): {verdict}"
    )
    return GateDecision(passed, candidate_map, previous, min_ratio, reason)


def record_published(gate_file: Path, collection: str, model_version: str, mean_map: float) -> None:
    """Record the model just published, atomically (temporary file + os.replace), so a crash mid-write never leaves
    a half-written record and the next decision compares with this model."""
    gate_file = Path(gate_file)
    gate_file.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "collection": collection,
        "model_version": model_version,
        "mean_map": float(mean_map),
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = gate_file.with_name(f"{gate_file.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, gate_file)
