"""A DICOMweb source against a real Orthanc: the same items and frames as the same files on disk, a re-identification
table that maps each item to its study, a cache that fetches nothing twice, new studies picked up, a series that
cannot be retrieved quarantined, the listing's filters and login, and the sources stage's fingerprint."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from orthanc_server import Orthanc
from pacs_studies import PYDICOM_FILES, Study, pydicom_study, write_study

from m3ret.config import IngestConfig, Params, PreprocessConfig, ReadConfig, SourceConfig, load_params
from m3ret.data.dicomweb_source import connect, list_series
from m3ret.data.errors import SourceUnavailableError
from m3ret.data.frame_store import FrameStore
from m3ret.data.ingest import ingest
from m3ret.data.phi import salted_hash
from m3ret.data.preprocess import preprocess
from m3ret.data.reidentify import ReidentifyRecord, ReidentifyTable
from m3ret.stages import sources

pytestmark = pytest.mark.slow
SALT = b"dicomweb-tests-salt-0123456789abcdef"


def _cfg(root: Path, source: SourceConfig, cache: Path) -> IngestConfig:
    return IngestConfig(
        sources=(source,),
        out=str(root / "manifest.parquet"),
        quarantine=str(root / "quarantine.csv"),
        cache_dir=str(cache),
        workers=1,
    )


def _web(tmp: Path, pacs: Orthanc, run: str = "web", **filters) -> IngestConfig:
    return _cfg(tmp / run, SourceConfig(dicomweb=pacs.dicomweb, dataset="pacs", **filters), tmp / "cache")


def _cached(tmp: Path) -> dict[str, tuple[int, int]]:
    """Every cached instance file -> (inode, mtime): a fetched file is a new one."""
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp / "cache" / "dicomweb").rglob("*.dcm")}


@pytest.fixture()
def studies(tmp_path: Path, pacs: Orthanc) -> list[Study]:
    """Three planted CT studies and pydicom's CT and MR files, under tmp_path/source and uploaded to the PACS."""
    uploaded = [write_study(tmp_path / "source" / f"study{i}", seed=i) for i in range(3)]
    uploaded += [pydicom_study(tmp_path / "source" / "pydicom", name) for name in PYDICOM_FILES]
    pacs.upload(path for study in uploaded for path in study.paths)
    return uploaded


def _frames(manifest: pd.DataFrame, out: Path) -> dict[str, np.ndarray]:
    """series hash -> the item's preprocessed frames uint8 [T,S,S,3]."""
    table, rejects = preprocess(manifest, PreprocessConfig(out=str(out), size=32, workers=1), ReadConfig())
    assert rejects.empty, rejects.to_dict("records")
    store = FrameStore(out)
    series_of = dict(zip(manifest.item_id, manifest.series_hash, strict=True))
    return {series_of[i]: store.get(group.frame_id.to_numpy()) for i, group in table.groupby("item_id")}


def test_dicomweb_items_equal_the_same_files_on_disk(tmp_path: Path, pacs: Orthanc, studies: list[Study]) -> None:
    disk_cfg = _cfg(tmp_path / "disk", SourceConfig(path=str(tmp_path / "source"), dataset="pacs"), tmp_path / "c0")
    disk, disk_quarantine = ingest(disk_cfg, ReadConfig(), SALT)
    web_cfg = _web(tmp_path, pacs)
    web, web_quarantine = ingest(web_cfg, ReadConfig(), SALT)
    assert disk_quarantine.empty and web_quarantine.empty, web_quarantine.to_dict("records")
    assert len(web) == len(disk) == len(studies)
    facts = ["series_hash", "study_hash", "patient_hash", "kind", "modality", "n_frames", "height", "width", "header"]
    pd.testing.assert_frame_equal(
        web[facts].sort_values("series_hash", ignore_index=True),
        disk[facts].sort_values("series_hash", ignore_index=True),
    )
    web_frames, disk_frames = _frames(web, tmp_path / "web_frames"), _frames(disk, tmp_path / "disk_frames")
    assert web_frames.keys() == disk_frames.keys() == set(web.series_hash)
    for series, frames in web_frames.items():
        np.testing.assert_array_equal(frames, disk_frames[series])
    # the manifest's paths are the cache's files, named by salted hashes
    cache = tmp_path / "cache" / "dicomweb" / salted_hash(pacs.dicomweb, SALT)
    sop_names = {salted_hash(uid, SALT) for study in studies for uid in study.sop_uids}
    web_paths = [Path(p) for paths in web.paths for p in json.loads(paths)]
    assert {p.stem for p in web_paths} == sop_names and all(p.is_relative_to(cache) for p in web_paths)
    assert stat.S_IMODE((tmp_path / "cache" / "dicomweb").stat().st_mode) == 0o700


def test_reidentify_table_maps_each_item_to_its_study(tmp_path: Path, pacs: Orthanc, studies: list[Study]) -> None:
    disk_cfg = _cfg(tmp_path / "disk", SourceConfig(path=str(tmp_path / "source")), tmp_path / "c0")
    web_cfg = _web(tmp_path, pacs)
    for cfg, source in ((web_cfg, pacs.dicomweb), (disk_cfg, "files")):
        manifest, _ = ingest(cfg, ReadConfig(), SALT)
        path = Path(cfg.reidentify_table)
        assert path.parent == Path(cfg.out).parent and stat.S_IMODE(path.stat().st_mode) == 0o600
        table = ReidentifyTable.load(path)
        assert len(table) == len(manifest) == len(studies)
        item_of = dict(zip(manifest.series_hash, manifest.item_id, strict=True))
        for study in studies:
            record = table.lookup(item_of[salted_hash(study.series_uid, SALT)])
            assert record == ReidentifyRecord(study.study_uid, study.series_uid, source)
    assert table.lookup("0123456789abcdef") is None


def test_second_ingest_fetches_nothing_and_a_new_study_only_its_own(
    tmp_path: Path, pacs: Orthanc, studies: list[Study]
) -> None:
    cfg = _web(tmp_path, pacs)
    first, _ = ingest(cfg, ReadConfig(), SALT)
    cached = _cached(tmp_path)
    assert len(cached) == sum(len(s.paths) for s in studies)
    again, _ = ingest(cfg, ReadConfig(), SALT)
    assert _cached(tmp_path) == cached and again.item_id.tolist() == first.item_id.tolist()

    # one cached instance lost: only it is fetched again
    lost = Path(sorted(cached)[0])
    lost.unlink()
    ingest(cfg, ReadConfig(), SALT)
    refetched = _cached(tmp_path)
    assert refetched.keys() == cached.keys() and {p for p in cached if refetched[p] != cached[p]} == {str(lost)}

    new = write_study(tmp_path / "source" / "new", seed=9, slices=4)
    pacs.upload(new.paths)
    grown, _ = ingest(cfg, ReadConfig(), SALT)
    now = _cached(tmp_path)
    assert {p: v for p, v in now.items() if p in refetched} == refetched and len(now) == len(refetched) + 4
    added = grown[~grown.item_id.isin(first.item_id)]
    assert len(grown) == len(first) + 1 and added.series_hash.tolist() == [salted_hash(new.series_uid, SALT)]
    assert added.n_frames.tolist() == [4]


def test_series_that_cannot_be_retrieved_is_quarantined_and_the_run_goes_on(
    tmp_path: Path, pacs: Orthanc, studies: list[Study]
) -> None:
    broken = write_study(tmp_path / "source" / "broken", seed=7)
    pacs.upload(broken.paths)
    pacs.break_series(broken.series_uid)
    manifest, quarantine = ingest(_web(tmp_path, pacs), ReadConfig(), SALT)
    assert len(manifest) == len(studies)
    folder = tmp_path / "cache" / "dicomweb" / salted_hash(pacs.dicomweb, SALT) / salted_hash(broken.series_uid, SALT)
    assert quarantine.path.tolist() == [str(folder)]
    reason = quarantine.reason.iloc[0]
    assert reason.startswith("DICOMweb retrieval failed: HTTP") and not any(v in reason for v in broken.planted)


def test_listing_filters_by_study_date_and_modality(tmp_path: Path, pacs: Orthanc, studies: list[Study]) -> None:
    client = connect(pacs.dicomweb, IngestConfig())
    by_date = list_series(client, SourceConfig(dicomweb=pacs.dicomweb, since="20100101"))
    assert sorted(s.series_uid for s in by_date) == sorted(s.series_uid for s in studies[:3])
    by_modality = list_series(client, SourceConfig(dicomweb=pacs.dicomweb, modalities=("MR",)))
    assert [s.series_uid for s in by_modality] == [studies[-1].series_uid]
    manifest, _ = ingest(_web(tmp_path, pacs, since="20100101", modalities=("CT", "MR")), ReadConfig(), SALT)
    assert set(manifest.series_hash) == {salted_hash(s.series_uid, SALT) for s in studies[:3]}


def test_login_from_the_environment(tmp_path: Path, studies: list[Study]) -> None:
    guarded = Orthanc(tmp_path / "guarded", users={"reader": "pw-0123"}).start()
    try:
        guarded.upload(studies[0].paths)
        (tmp_path / "params.yaml").write_text(f"ingest: {{sources: [{{dicomweb: '{guarded.dicomweb}'}}]}}\n")
        environ = {"M3RET_DICOMWEB_USER": "reader", "M3RET_DICOMWEB_PASSWORD": "pw-0123"}
        cfg = load_params(tmp_path / "params.yaml", environ).ingest
        listing = list_series(connect(guarded.dicomweb, cfg), cfg.sources[0])
        assert [s.series_uid for s in listing] == [studies[0].series_uid]
        anonymous = load_params(tmp_path / "params.yaml", {}).ingest
        with pytest.raises(SourceUnavailableError, match="HTTP 401") as refused:
            ingest(_cfg(tmp_path / "anon", anonymous.sources[0], tmp_path / "cache"), ReadConfig(), SALT)
        assert guarded.dicomweb in str(refused.value) and "pw-0123" not in str(refused.value)
    finally:
        guarded.stop()
    bearer = connect(guarded.dicomweb, IngestConfig(dicomweb_token="tok-0123"))
    assert bearer._session.headers["Authorization"] == "Bearer tok-0123"


def test_unreachable_server_fails_the_source(tmp_path: Path) -> None:
    gone = "http://127.0.0.1:9/dicom-web"  # the discard port: nothing listens
    with pytest.raises(SourceUnavailableError, match="QIDO-RS series search failed: ConnectionError"):
        ingest(_cfg(tmp_path, SourceConfig(dicomweb=gone), tmp_path / "cache"), ReadConfig(), SALT)


def test_sources_fingerprint_follows_the_pacs(
    tmp_path: Path, pacs: Orthanc, studies: list[Study], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "folder"
    shutil.copytree(tmp_path / "source" / "study0", folder)
    params = Params(ingest=IngestConfig(sources=(SourceConfig(path=str(folder)), SourceConfig(dicomweb=pacs.dicomweb))))
    first = sources.run(params)
    assert (first["files"], first["dicomweb_series"], first["dicomweb_instances"]) == (3, len(studies), 11)
    assert sources.run(params) == first
    pacs.upload(write_study(tmp_path / "new", seed=11).paths)
    grown = sources.run(params)
    assert grown["digest"] != first["digest"] and grown["dicomweb_series"] == len(studies) + 1
    text = (tmp_path / "data" / "sources.json").read_text()
    assert not any(value in text for study in studies for value in study.planted)
