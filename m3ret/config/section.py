"""The base of every params.yaml section: a frozen pydantic model that refuses unknown keys, and the conversions.

YAML values are coerced where the meaning is clear (`"1e-3"` to a float, a list to a tuple, a number to a string
field), never `true`/`false` to a number. A broken configuration raises ConfigError naming the key's full dotted path
(and, for an unknown key, the valid ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

S = TypeVar("S", bound=BaseModel)


class ConfigError(ValueError):
    """A broken configuration: fails at once, naming the key."""


class Section(BaseModel):
    """A params.yaml section: frozen, unknown keys refused. User input is built with `from_dict` (errors as
    ConfigError); code may build one by keywords (errors as pydantic's ValidationError, also a ValueError)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads `true` as 1 for a number field; in a params file that is always a slip
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation in (int, float, float | None, int | None):
            raise ValueError("must be a number, not true/false")
        return value


def _dotted(where: str, loc: tuple[int | str, ...]) -> str:
    out = where
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(cls: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The section model found at `loc` below `cls` (list positions skipped: `sources[0]` is a SourceConfig)."""
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = cls.model_fields[part].annotation
        candidates = (annotation, *getattr(annotation, "__args__", ()))
        cls = next(c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel))
    return cls


def _describe(err: ValidationError, cls: type[BaseModel], where: str) -> str:
    """pydantic's errors as one line per problem, each naming the key's full dotted path; unknown keys with the
    valid ones beside them."""
    problems, unknown = [], {}
    for error in err.errors(include_url=False):
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{_dotted(where, loc)}: {message}" + (f" (got {error['input']!r})" if loc else ""))
    for parent, keys in unknown.items():
        valid = sorted(_model_at(cls, parent).model_fields)
        problems.insert(0, f"unknown key(s) {sorted(keys)} in {_dotted(where, parent)}; valid: {valid}")
    return "; ".join(problems)


def from_dict(cls: type[S], data: Mapping[str, Any] | None, where: str = "") -> S:
    """Section `cls` from a mapping (YAML), rejecting unknown keys and wrong types with the key's full name."""
    try:
        return cls.model_validate({} if data is None else data)
    except ValidationError as err:
        raise ConfigError(_describe(err, cls, where or cls.__name__)) from None


def to_dict(section: BaseModel) -> dict[str, Any]:
    """The plain-data form of a section (tuples as lists, secrets left out), e.g. to store inside a checkpoint."""
    return section.model_dump(mode="json")


def replace(section: S, **changes: Any) -> S:
    """A copy of `section` with `changes` applied and validated again (the frozen models' `dataclasses.replace`)."""
    return from_dict(type(section), {**dict(section), **changes}, type(section).__name__)
