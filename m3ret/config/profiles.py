"""Named profiles (m3ret/profiles/NAME.yaml, partial params files) as `dvc exp run -S` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from m3ret.config.params import SECTIONS
from m3ret.config.section import ConfigError, from_dict

PROFILES_DIR = Path(__file__).parents[1] / "profiles"


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def profile_summary(name: str) -> str:
    """The first comment line of a profile: what it trains and its expected wall time."""
    first = (PROFILES_DIR / f"{name}.yaml").read_text().splitlines()[0]
    return first.removeprefix("#").strip()


def profile_overrides(name: str) -> list[str]:
    """A named profile (m3ret/profiles/NAME.yaml, a partial params file) as `section.key=value` overrides for
    `dvc exp run -S`. Every key is checked against its section, so a profile cannot set an unknown key."""
    if name not in profile_names():
        raise ConfigError(f"unknown profile {name!r}; valid: {profile_names()}")
    overlay = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text()) or {}
    for section, values in overlay.items():
        if section not in SECTIONS:
            raise ConfigError(f"profile {name}: unknown section {section!r}; valid: {sorted(SECTIONS)}")
        from_dict(SECTIONS[section], values, section)
    overrides: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        else:
            flow = yaml.safe_dump(node, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
            overrides.append(f"{path}={flow.replace(' ', '')}")

    walk(overlay, "")
    return overrides
