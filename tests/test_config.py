"""params.yaml sections: defaults load, unknown keys and wrong types fail at once naming the key, profiles are valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from m3ret.cli import main
from m3ret.config import (
    SECTIONS,
    ConfigError,
    PretrainConfig,
    from_dict,
    load_params,
    profile_names,
    profile_overrides,
    profile_summary,
)

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_load_and_cover_every_section() -> None:
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(SECTIONS)
    assert params.pretrain.splits == ("pretrain", "gallery") and "query" not in params.pretrain.splits


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"objective": "mae", "modle": {}}, r"unknown key\(s\) \['modle'\] in pretrain"),
        ({"model": {"img_size": "big"}}, r"pretrain.model.img_size must be int"),
        ({"epochs": True}, r"pretrain.epochs must be a number"),
        ({"model": {"pooling": "max"}}, r"pretrain.model.pooling='max'; valid: \['cls', 'mean'\]"),
        ({"optim": {"betas": [0.9]}}, r"pretrain.optim.betas must have 2 entries"),
    ],
)
def test_bad_pretrain_values_name_the_key(section: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(PretrainConfig, section, "pretrain")


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("ingets: {}\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("name", profile_names())
def test_profiles_apply_cleanly_to_the_default_params(name: str) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    parser = OverridesParser.create()  # the grammar `dvc exp run -S` parses overrides with
    for override in profile_overrides(name):
        parsed = parser.parse_override(override)
        *parents, leaf = parsed.key_or_group.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parsed.value()
    for section, cls in SECTIONS.items():
        from_dict(cls, raw[section], section)
    assert {"gpu-vit-small", "gpu-vit-base", "cpu-long", "cpu-60min"} <= set(profile_names())


def test_profile_help_lists_every_profile_with_its_expected_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    listing = capsys.readouterr().out.split("profiles (expected wall time):", 1)[1]
    for name in profile_names():
        line = next(row for row in listing.splitlines() if row.strip().startswith(name))
        assert re.search(r"\d+ (min|h)\b|not measured", profile_summary(name)) and profile_summary(name) in line


def test_unknown_profile_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid: .*cpu-long"):
        profile_overrides("nope")
