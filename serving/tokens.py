"""Bearer tokens for the retrieval service: created once, stored only as hashes, revocable by name.

The store is one JSON file (`serve.tokens_file`, mode 0600): {name: {"sha256": hex digest, "created": ISO time,
"revoked": ISO time or null, "scopes": [...]}}. A token is shown once, when it is created; the service keeps only
digests and compares them in constant time. Scopes grant more than search: `reidentify` resolves a hit to its study
(StudyInstanceUID and a viewer link); every other token only ever sees salted hashes. The service re-reads the file
when it changes, so a revocation takes effect on the next request without a restart.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from serving.reloading_file import ReloadingFile

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
PREFIX = "m3r_"
REIDENTIFY = "reidentify"
SCOPES = (REIDENTIFY,)


class TokenError(ValueError):
    """A token operation that cannot be done (bad or taken name, unknown name)."""


class Verdict(Enum):
    VALID = "valid"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Access:
    """What a presented token is: its verdict and, when valid, its scopes."""

    verdict: Verdict
    scopes: frozenset[str] = frozenset()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class TokenStore:
    """The tokens file at `path` (created on the first `create`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: ReloadingFile[dict[str, dict]] = ReloadingFile(self.path, lambda p: json.loads(p.read_text()), {})

    def _load(self) -> dict[str, dict]:
        """The entries, re-read when the file changed (size or modification time) since the last read."""
        return self._file.value()

    def _save(self, entries: dict[str, dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(entries, fh, indent=2, sort_keys=True)
        tmp.replace(self.path)

    def create(self, name: str, scopes: tuple[str, ...] = ()) -> str:
        """A new random token for `name` with `scopes` (of SCOPES), returned once and stored as its hash. Names are
        never reused, so a revoked token keeps being told apart (403) from one that never existed (401)."""
        if not _NAME.match(name):
            raise TokenError(f"token name {name!r}: 1-64 letters, digits or . _ - @")
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise TokenError(f"unknown scope(s) {unknown}; known: {list(SCOPES)}")
        entries = dict(self._load())
        if name in entries:
            state = "was revoked" if entries[name]["revoked"] else "exists"
            raise TokenError(f"a token named {name!r} {state}; choose another name")
        token = PREFIX + secrets.token_urlsafe(32)
        entries[name] = {"sha256": _digest(token), "created": _now(), "revoked": None, "scopes": sorted(set(scopes))}
        self._save(entries)
        return token

    def revoke(self, name: str) -> None:
        entries = dict(self._load())
        if name not in entries:
            raise TokenError(f"no token named {name!r}; known: {sorted(entries)}")
        entries[name] = {**entries[name], "revoked": entries[name]["revoked"] or _now()}
        self._save(entries)

    def names(self) -> dict[str, bool]:
        """{name: still valid} of every token ever created."""
        return {name: not entry["revoked"] for name, entry in sorted(self._load().items())}

    def scopes(self, name: str) -> tuple[str, ...]:
        return tuple(self._load()[name].get("scopes", ()))

    def check(self, token: str) -> Access:
        """VALID (with the token's scopes), REVOKED (a token that was valid once), or UNKNOWN; every digest is
        compared in constant time."""
        digest = _digest(token)
        access = Access(Verdict.UNKNOWN)
        for entry in self._load().values():
            if hmac.compare_digest(entry["sha256"], digest):
                valid = not entry["revoked"]
                access = Access(Verdict.VALID, frozenset(entry.get("scopes", ()))) if valid else Access(Verdict.REVOKED)
        return access
