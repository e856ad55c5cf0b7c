"""`m3ret listen` as a process, fed by pynetdicom's storage SCU: good instances stored in the spool (one file per
SOPInstanceUID), a dataset cut short refused, one with broken pixel data taken and quarantined at ingest, a full
spool answered with out-of-resources, a caller addressing another AE title rejected; the listener survives it all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pynetdicom._config
import pytest
import yaml
from dicom_factory import make_dataset, save
from orthanc_server import free_port
from pacs_studies import pydicom_study, write_study
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from m3ret.config import IngestConfig, ReadConfig, SourceConfig
from m3ret.data.dicom_listener import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, spool_name
from m3ret.data.ingest import ingest
from m3ret.data.reidentify import ReidentifyTable

pytestmark = pytest.mark.slow
SALT = "listener-tests-salt-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


def _scu() -> AE:
    ae = AE(ae_title="TESTSCU")
    for context in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(context, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    return ae


@pytest.fixture()
def listener(tmp_path: Path):
    """`m3ret listen` on a free port in tmp_path (spool: tmp_path/spool), stopped with SIGTERM at the end."""
    port = free_port()
    params = {"ingest": {"id_salt": SALT}, "listen": {"spool": "unused"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "m3ret.cli", "listen", "--port", str(port), "--ae-title", "M3RET"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    log = open(tmp_path / "listener.log", "wb")  # noqa: SIM115 - the process writes it until stopped
    process = subprocess.Popen(
        ["nice", *command, "--spool", str(tmp_path / "spool")], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 60
    while True:
        assoc = _scu().associate("127.0.0.1", port, ae_title="M3RET")
        if assoc.is_established:
            assoc.release()
            break
        assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "listener.log").read_text()
        time.sleep(0.3)
    yield port, tmp_path / "spool", process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _cut_short(path: Path, keep: int) -> Path:
    """The file with its dataset cut `keep` bytes after the file meta: the header ends before the instance's UIDs."""
    _meta, offset = split_dataset(path)
    path.write_bytes(path.read_bytes()[: offset + keep])
    return path


def test_listener_stores_good_instances_refuses_bad_ones_and_ingest_reads_the_spool(
    tmp_path: Path, listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, spool, process = listener
    ct = write_study(tmp_path / "send" / "ct", seed=3)
    mr = pydicom_study(tmp_path / "send" / "mr", "MR_small.dcm")
    broken = make_dataset(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32), patient_name="Broken^Pixels")
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 2]
    broken_path = save(broken, tmp_path / "send" / "broken_pixels.dcm")
    short = _cut_short(save(make_dataset(np.zeros((8, 8), np.uint16)), tmp_path / "send" / "short.dcm"), keep=40)

    assoc = _scu().associate("127.0.0.1", port, ae_title="M3RET")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == SUCCESS
    statuses = [assoc.send_c_store(dcmread(p)).Status for p in (*ct.paths, *mr.paths, broken_path)]
    assert statuses == [SUCCESS] * 5
    with monkeypatch.context() as patch:  # send the file's bytes as they are, not a dataset pydicom parsed
        patch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
        assert assoc.send_c_store(short).Status == CANNOT_UNDERSTAND
    # the spool cannot take a file (a regular file where the folder was): out of resources, nothing crashes
    spool.rename(tmp_path / "spool.away")
    spool.write_bytes(b"")
    assert assoc.send_c_store(dcmread(ct.paths[0])).Status == OUT_OF_RESOURCES
    spool.unlink()
    (tmp_path / "spool.away").rename(spool)
    assoc.release()

    wrong = _scu().associate("127.0.0.1", port, ae_title="SOMEONE")
    assert wrong.is_rejected
    again = _scu().associate("127.0.0.1", port, ae_title="M3RET")
    assert again.is_established and again.send_c_echo().Status == SUCCESS
    again.release()
    assert process.poll() is None

    sops = [*ct.sop_uids, *mr.sop_uids, str(broken.SOPInstanceUID)]
    assert sorted(p.name for p in spool.iterdir()) == sorted(spool_name(sop, SALT.encode()) for sop in sops)

    cfg = IngestConfig(
        sources=(SourceConfig(path=str(spool), dataset="spool"),),
        out=str(tmp_path / "ingest" / "manifest.parquet"),
        quarantine=str(tmp_path / "ingest" / "quarantine.csv"),
        cache_dir=str(tmp_path / "ingest" / "cache"),
        workers=1,
    )
    manifest, quarantine = ingest(cfg, ReadConfig(), SALT.encode())
    table = ReidentifyTable.load(cfg.reidentify_table)
    studies = sorted(table.lookup(i).study_uid for i in manifest.item_id)
    assert studies == sorted([ct.study_uid, mr.study_uid]) and manifest.n_frames.tolist().count(3) == 1
    assert {table.lookup(i).source for i in manifest.item_id} == {"files"}
    assert quarantine.path.tolist() == [str(spool / spool_name(str(broken.SOPInstanceUID), SALT.encode()))]
    assert "pixel data" in quarantine.reason.iloc[0]

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "listener stopped" in (tmp_path / "listener.log").read_text()
