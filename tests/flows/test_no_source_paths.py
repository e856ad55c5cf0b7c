"""No identifying path beyond ingest's own records: a source whose folder and file names carry a patient's name and
record number leaves them in the manifest and quarantine (local, operator-facing) and nowhere else: not in the
embeddings, the Milvus rows, the evaluate and drift reports, nor a refresh's batch outputs."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pandas as pd
from tiny_world import build_world, publish, write_png

from m3ret.config import load_params
from m3ret.index.milvus_index import MilvusIndex
from m3ret.index.schema import SCALAR_FIELDS
from m3ret.stages import drift, evaluate, index
from m3ret.stages.refresh import refresh

PLANTED = ("Doe_Jane", "Doe^Jane", "MRN123456")
# ingest's own records, and the refresh's (its scan of the sources, its ledger, each batch's manifest rows and report,
# all local to the machine that reads the sources); nothing else may hold a path
ALLOWED = ("data/manifest.parquet", "reports/quarantine.csv", "reports/preprocess_quarantine.csv", "state/scan/",
           "state/ledger.parquet", "data/cache/ingest/")  # fmt: skip
BATCH_RECORDS = ("manifest.parquet", "report.json")


def _allowed(relative: Path) -> bool:
    batch_record = relative.parts[:2] == ("state", "batches") and relative.name in BATCH_RECORDS
    return (
        relative.parts[0] == "source" or str(relative).startswith(ALLOWED) or batch_record or relative.suffix == ".db"
    )


def _leaks(path: Path) -> list[str]:
    """The planted names found in a file: in every string cell of a parquet table, or in the bytes of any other."""
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
        text = " ".join(table[c].astype(str).str.cat(sep=" ") for c in table.columns if table[c].dtype == object)
        text += " ".join(map(str, table.columns))
        return [name for name in PLANTED if name in text]
    data = path.read_bytes()
    return [name for name in PLANTED if name.encode() in data]


def test_patient_names_in_paths_stay_in_ingest_records(tmp_path, encoder_file, monkeypatch) -> None:
    root = tmp_path / "world"
    root.mkdir()
    build_world(root, encoder_file, name="Doe_Jane_MRN123456/Doe^Jane_scan_{i:03d}.png")
    monkeypatch.chdir(root)
    params = load_params("params.yaml")
    assert _leaks(Path(params.ingest.out))  # the manifest does keep the path: the test plants what it looks for
    index.run(params)
    evaluate.run(params)
    drift.run(params)
    publish(params)
    write_png(Path("source") / "Doe_Jane_MRN123456" / "Doe^Jane_followup.png", seed=99)
    with contextlib.chdir(root):
        report = refresh(params, Path("state"))
    assert len(report.added) == 1

    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not _allowed(p.relative_to(root))]
    assert any(p.name == "frame_vectors.npy" for p in files) and any(p.suffix == ".html" for p in files)
    leaks = {str(p.relative_to(root)): found for p in files if (found := _leaks(p))}
    assert not leaks, f"planted names outside ingest's records: {leaks}"
    milvus = MilvusIndex(params.index)
    try:
        rows = milvus.rows(milvus.current(), fields=SCALAR_FIELDS)
    finally:
        milvus.close()
    assert len(rows) > 0 and not any(name in json.dumps(rows.to_dict("records")) for name in PLANTED)
