"""Errors raised at the input boundary: each names the file and the reason, and ingest quarantines it."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A bad input item. The run quarantines it with `reason` and goes on."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsupportedInputError(InputError):
    """The file is of no kind m3ret reads (decided by content, not extension)."""


class UnreadableInputError(InputError):
    """The file claims a known kind but cannot be decoded: corrupt, truncated, empty, or a codec is missing."""


class DuplicateInputError(InputError):
    """The same instance again (a copy inside one series): left out, not broken."""


class InputTooLargeError(InputError):
    """The header declares dimensions beyond the configured limits; nothing was decoded."""


class PHIRiskError(InputError):
    """The item carries protected health information that cannot be removed (e.g. burned-in annotations)."""


class SourceUnavailableError(ConnectionError):
    """A configured source cannot be listed (a DICOMweb server down, refusing the login, or answering an error).
    The run stops: going on without the source would read as all of its items deleted."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")
