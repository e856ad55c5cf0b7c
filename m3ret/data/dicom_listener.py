"""A DICOM receiver (`m3ret listen`): a storage SCP that writes what a modality or PACS sends into a spool folder,
which a file source lists, so ingest and the refresh flow pick the instances up like any file on disk.

pynetdicom does the networking: every storage SOP class in every transfer syntax (compressed instances are kept as
sent), plus Verification (C-ECHO); associations addressed to another AE title are rejected. Each instance becomes one
file, `<spool>/<salted hash of its SOPInstanceUID>.dcm` (no UID in a path; a resend replaces the same file): the
dataset as received, in the DICOM File Format, written to a hidden temp file and renamed, so ingest (which skips dot
files) never reads half a file. Only the header is judged here; pixel data is ingest's to decode, and a broken one is
quarantined there with its reason like any file on disk.

Failures are answered with a status and logged (the calling AE title and the reason, never a UID or a patient
field), never raised: a dataset that does not parse, names no SOPInstanceUID or another one than its request did,
0xC000 (cannot understand); a spool that cannot take the file (disk full, folder gone) 0xA700 (out of resources).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from m3ret.config import ListenConfig
from m3ret.data.phi import salted_hash

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
log = logging.getLogger(__name__)


def spool_name(sop_instance_uid: str, salt: bytes) -> str:
    """The spool file of an instance."""
    return f"{salted_hash(sop_instance_uid, salt)}.dcm"


def _on_store(event: Event, spool: Path, salt: bytes) -> int:
    """EVT_C_STORE: check the header, write the instance into the spool (module docstring); returns the status."""
    peer = event.assoc.requestor.ae_title
    try:
        ds = event.dataset
        for _element in ds:  # converts every element: a header pydicom cannot read fails here, not at ingest
            pass
        sop = str(ds.get("SOPInstanceUID") or "")
    except Exception as err:  # pydicom raises many types on a corrupt stream; all mean the same here
        log.warning("refused an instance from %s: the dataset does not parse (%s)", peer, type(err).__name__)
        return CANNOT_UNDERSTAND
    if not sop or sop != str(event.request.AffectedSOPInstanceUID):
        reason = "names no SOPInstanceUID" if not sop else "names another SOPInstanceUID than its request"
        log.warning("refused an instance from %s: the dataset %s", peer, reason)
        return CANNOT_UNDERSTAND
    target = spool / spool_name(sop, salt)
    tmp = spool / f".{target.name}.{threading.get_ident()}.tmp"
    try:
        tmp.write_bytes(event.encoded_dataset())
        tmp.replace(target)
    except OSError as err:
        log.error("refused an instance from %s: cannot write to the spool %s: %s", peer, spool, err.strerror)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return OUT_OF_RESOURCES
    log.info("stored %s from %s", target.name, peer)
    return SUCCESS


def _on_rejected(event: Event) -> None:
    log.warning("association from %s (%s) rejected", event.assoc.requestor.ae_title, event.assoc.requestor.address)


def receiver(ae_title: str) -> AE:
    """The application entity: storage SCP for every storage SOP class and transfer syntax, and Verification."""
    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    return ae


def start_listener(cfg: ListenConfig, salt: bytes) -> ThreadedAssociationServer:
    """Serve `cfg` in background threads (one per association) until `server.ae.shutdown()`. The spool
    is created owner-only (0700): it holds what the modality sent, patient fields and all."""
    spool = Path(cfg.spool)
    spool.mkdir(parents=True, exist_ok=True)
    spool.chmod(0o700)
    handlers = [(evt.EVT_C_STORE, _on_store, [spool, salt]), (evt.EVT_REJECTED, _on_rejected)]
    server = receiver(cfg.ae_title).start_server((cfg.host, cfg.port), block=False, evt_handlers=handlers)
    log.info("listening on %s:%d as %s, spool %s", cfg.host, cfg.port, cfg.ae_title, spool)
    return server
