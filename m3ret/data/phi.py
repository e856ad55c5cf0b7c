"""Identifiers out, salted hashes in: the only place raw patient/study/series ids are touched.

Readers return raw ids in `meta["ids"]`; `anonymise` replaces them with keyed hashes (HMAC-SHA256 with a secret salt,
so an id cannot be confirmed by hashing a guess) and refuses any meta that still carries a PHI field.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

from m3ret.config import IngestConfig

# Header keywords that identify a person or carry free text; never allowed in any output, at any depth.
PHI_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientMotherBirthName",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "InstitutionName",
        "InstitutionAddress",
        "AccessionNumber",
        "StudyID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "StudyDescription",
        "SeriesDescription",
        "ImageComments",
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
        "StudyTime",
    }
)


class PHILeakError(RuntimeError):
    """A reader handed over a PHI field; a programming error, never an input error."""


def load_or_create_salt(path: Path) -> bytes:
    """The deployment's secret salt: read from `path`, or created there (32 random bytes, hex) on first use."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32) + "\n")
        path.chmod(0o600)
    salt = path.read_text().strip()
    if len(salt) < 16:
        raise ValueError(f"{path}: the id salt must be at least 16 characters")
    return salt.encode()


def ingest_salt(cfg: IngestConfig) -> bytes:
    """The salt of `cfg`: `id_salt` when given (the environment's M3RET_ID_SALT), else `salt_file`'s."""
    return cfg.id_salt.encode() if cfg.id_salt else load_or_create_salt(Path(cfg.salt_file))


def salted_hash(value: str, salt: bytes) -> str:
    """HMAC-SHA256 of an identifier, 24 hex chars; "" stays "" (no identifier)."""
    if not value:
        return ""
    return hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:24]


def _check_no_phi(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in PHI_KEYWORDS:
                raise PHILeakError(f"{where}.{key} is a PHI field")
            _check_no_phi(inner, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, inner in enumerate(value):
            _check_no_phi(inner, f"{where}[{i}]")


def anonymise(meta: dict[str, Any], salt: bytes) -> dict[str, Any]:
    """meta with `ids` replaced by `patient_hash`, `study_hash`, `series_hash`; raises PHILeakError on a PHI field."""
    out = {k: v for k, v in meta.items() if k != "ids"}
    _check_no_phi(out, "meta")
    ids = meta.get("ids") or {}
    for name in ("patient", "study", "series"):
        out[f"{name}_hash"] = salted_hash(str(ids.get(name, "") or ""), salt)
    return out
