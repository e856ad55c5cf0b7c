"""A pipeline whose only source is a real Orthanc over DICOMweb: the refresh flow publishes the first model, then
picks up a study uploaded after it; a slice of a study finds its own study first; and the planted patient names,
ids and UIDs of every uploaded study appear in no output but the restricted re-identification table (and the cache
of the PACS's own instances)."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from orthanc_server import Orthanc
from pacs_studies import PYDICOM_FILES, Study, pydicom_study, write_study
from tiny_world import tiny_params

from flows.refresh_flow import refresh_flow
from m3ret.config import Params, load_params
from m3ret.data.dicomweb_source import CACHE_FOLDER
from m3ret.data.reidentify import ReidentifyTable
from m3ret.index.filters import SearchFilter
from m3ret.index.milvus_index import MilvusIndex
from m3ret.index.query import search_queries
from m3ret.index.schema import SCALAR_FIELDS
from m3ret.models.encoder import load_encoder
from m3ret.models.query import embed_file
from m3ret.stages import drift, embed, ingest, preprocess, sources, split

pytestmark = pytest.mark.slow
N_STUDIES = 8


@dataclass(frozen=True)
class PacsWorld:
    root: Path
    params: Params
    studies: list[Study]  # uploaded before the pipeline ran
    new: Study  # uploaded after the first refresh
    first: dict
    second: dict


@pytest.fixture(scope="module")
def pacs_world(tmp_path_factory: pytest.TempPathFactory, encoder_file: Path, orthanc: Orthanc) -> PacsWorld:
    orthanc.clear()
    uploads = tmp_path_factory.mktemp("pacs_uploads")  # the PACS's side: outside the world
    studies = [write_study(uploads / f"study{i}", seed=i) for i in range(N_STUDIES)]
    studies += [pydicom_study(uploads / "pydicom", name) for name in PYDICOM_FILES]
    orthanc.upload(path for study in studies for path in study.paths)
    root = tmp_path_factory.mktemp("pacs_world")
    raw = tiny_params()
    raw["ingest"]["sources"] = [{"dicomweb": orthanc.dicomweb, "dataset": "pacs"}]
    with contextlib.chdir(root):
        Path("params.yaml").write_text(yaml.safe_dump(raw))
        params = load_params("params.yaml")
        Path(params.embed.encoder).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(encoder_file, params.embed.encoder)
        for stage in (sources, ingest, preprocess, split, embed):
            stage.run(params)
        first = refresh_flow("params.yaml", "state")
        new = write_study(uploads / "new", seed=50, slices=4)
        orthanc.upload(new.paths)
        second = refresh_flow("params.yaml", "state")
        drift.run(params)
    return PacsWorld(root, params, studies, new, first, second)


def test_refresh_flow_publishes_then_picks_up_a_new_study(pacs_world: PacsWorld) -> None:
    first, second = pacs_world.first, pacs_world.second
    assert first["rebuild"]["published"] and first["refresh"]["added"] == {}
    assert first["refresh"]["skipped"] == len(pacs_world.studies)
    assert second["rebuild"] is None and second["refresh"]["quarantined"] == []
    assert second["refresh"]["skipped"] == len(pacs_world.studies) and len(second["refresh"]["added"]) == 1
    added = next(iter(second["refresh"]["added"]))
    with contextlib.chdir(pacs_world.root):
        record = ReidentifyTable.load(pacs_world.params.ingest.reidentify_table).lookup(added)
    assert (record.study_uid, record.series_uid) == (pacs_world.new.study_uid, pacs_world.new.series_uid)


def test_a_query_slice_finds_its_own_study_first(pacs_world: PacsWorld) -> None:
    params = pacs_world.params
    with contextlib.chdir(pacs_world.root):
        encoder = load_encoder(params.embed.model)
        table = ReidentifyTable.load(params.ingest.reidentify_table)
        index = MilvusIndex(params.index)
        try:
            for study in (pacs_world.new, pacs_world.studies[2], pacs_world.studies[-2]):
                query = embed_file(study.paths[len(study.paths) // 2], encoder, params.read, params.preprocess)
                [[top, *_]] = search_queries(index, [query], 3, SearchFilter(level="frame"))
                assert table.lookup(top.fields["item_id"]).study_uid == study.study_uid
        finally:
            index.close()


def _planted_in(path: Path, planted: list[str]) -> list[str]:
    """The planted values a file holds: in any cell of a parquet table (compressed on disk), else in its bytes."""
    data = pd.read_parquet(path).to_json().encode() if path.suffix == ".parquet" else path.read_bytes()
    return [value for value in planted if value.encode() in data]


def test_no_phi_from_the_pacs_outside_the_reidentify_table(pacs_world: PacsWorld) -> None:
    root, params = pacs_world.root, pacs_world.params
    planted = [value for study in (*pacs_world.studies, pacs_world.new) for value in study.planted]
    table = root / params.ingest.reidentify_table
    assert _planted_in(table, planted)  # the table does hold the UIDs: the test finds what it looks for
    cache = root / params.ingest.cache_dir / CACHE_FOLDER  # the PACS's instances, whole: the input itself
    files = [p for p in root.rglob("*") if p.is_file() and p != table and not p.is_relative_to(cache)]
    outputs = [p for p in files if p.suffix != ".db"]  # Milvus Lite's file: its rows are read below
    assert {"manifest.parquet", "frames.parquet", "frame_vectors.npy", "ledger.parquet"} <= {p.name for p in outputs}
    assert any(p.name == "metrics.json" for p in outputs) and any(p.name == "drift.json" for p in outputs)
    leaks = {str(p.relative_to(root)): found for p in outputs if (found := _planted_in(p, planted))}
    assert not leaks, f"identifiers from the PACS outside the re-identification table: {leaks}"
    with contextlib.chdir(root):
        index = MilvusIndex(params.index)
        try:
            rows = index.rows(index.current(), fields=SCALAR_FIELDS)
        finally:
            index.close()
    dump = rows.to_json()
    assert len(rows) > 0 and not [value for value in planted if value in dump]
