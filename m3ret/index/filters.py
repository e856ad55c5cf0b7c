"""Typed search filters turned into Milvus boolean expressions.

Values are checked against a strict character set and quoted by the code, never pasted from user text: Milvus Lite
does not accept expression templates (`filter_params`), so validation is what keeps a filter a filter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

LEVELS = ("frame", "series")
# Identifiers, modality codes, dataset names, labels, hashes: letters, digits and a few separators.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:+/ \-]{1,128}$")


class FilterError(ValueError):
    """A filter value outside the allowed form (names the field and the value)."""


def _strings(field: str, values: Sequence[str]) -> list[str]:
    if isinstance(values, str):
        values = (values,)
    out = []
    for value in values:
        if not isinstance(value, str) or not _SAFE_VALUE.match(value):
            raise FilterError(f"{field} filter value {value!r} is not allowed (letters, digits, '_.:+/ -', <= 128)")
        out.append(value)
    return out


def _in(field: str, values: list[str], negate: bool = False) -> str:
    op = "not in" if negate else "in"
    return f"{field} {op} [{', '.join(json.dumps(v) for v in values)}]"


@dataclass(frozen=True)
class SearchFilter:
    """Restrict a search: each non-empty field keeps rows whose value is one of those given.

    `exclude_groups` drops rows of those patient/benchmark groups (the evaluation protocol excludes the query's own).
    """

    modality: tuple[str, ...] = ()
    dataset: tuple[str, ...] = ()
    level: str | None = None
    split: tuple[str, ...] = ()
    item_id: tuple[str, ...] = ()
    exclude_groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.level is not None and self.level not in LEVELS:
            raise FilterError(f"level filter {self.level!r}; valid: {list(LEVELS)}")

    def expression(self) -> str:
        """The Milvus boolean expression ("" when nothing is filtered)."""
        parts = [
            _in(name, _strings(name, getattr(self, name)))
            for name in ("modality", "dataset", "split", "item_id")
            if getattr(self, name)
        ]
        if self.level is not None:
            parts.append(_in("level", [self.level]))
        if self.exclude_groups:
            parts.append(_in("group_id", _strings("group", self.exclude_groups), negate=True))
        return " and ".join(parts)
