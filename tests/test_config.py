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
    IngestConfig,
    PretrainConfig,
    ReadoutConfig,
    from_dict,
    load_params,
    profile_names,
    profile_overrides,
    profile_summary,
    replace,
    to_dict,
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
        ({"objective": "mae", "modle": {}}, r"unknown key\(s\) \['modle'\] in pretrain; valid: \['augment', "),
        ({"model": {"img_size": "big"}}, r"pretrain.model.img_size: Input should be a valid integer.*'big'"),
        ({"epochs": True}, r"pretrain.epochs: must be a number, not true/false"),
        ({"model": {"pooling": "max"}}, r"pretrain.model.pooling: Input should be 'cls' or 'mean' \(got 'max'\)"),
        ({"optim": {"betas": [0.9]}}, r"pretrain.optim.betas\[1\]: Field required"),
        ({"mae": {"mask_ratio": "x"}, "eval_every": 1, "eval_every_epochs": 1}, r"pretrain.mae.mask_ratio: .*"),
    ],
)
def test_bad_pretrain_values_name_the_key(section: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(PretrainConfig, section, "pretrain")


def test_yaml_values_are_coerced_where_the_meaning_is_clear() -> None:
    cfg = from_dict(PretrainConfig, {"optim": {"lr": "1e-3", "betas": [0.9, 0.99]}, "splits": ["pretrain"]})
    assert cfg.optim.lr == 0.001 and cfg.optim.betas == (0.9, 0.99) and cfg.splits == ("pretrain",)
    source = from_dict(IngestConfig, {"sources": [{"path": "scans", "dataset": 2024}]}, "ingest").sources[0]
    assert source.dataset == "2024"
    with pytest.raises(ConfigError, match=r"ingest.sources\[0\]; valid: \['dataset', 'modality', 'path'\]"):
        from_dict(IngestConfig, {"sources": [{"path": "scans", "datset": "x"}]}, "ingest")


def test_cross_field_rules_and_replace_validate_again() -> None:
    with pytest.raises(ConfigError, match="pretrain: set eval_every .* not both"):
        from_dict(PretrainConfig, {"eval_every": 5, "eval_every_epochs": 1.0}, "pretrain")
    base = from_dict(ReadoutConfig, {})
    assert replace(base, whiten=False).whiten is False and base.whiten is True
    with pytest.raises(ConfigError, match="fit_splits must not include 'query'"):
        replace(base, fit_splits=("gallery", "query"))


def test_secrets_come_from_the_environment_and_stay_out_of_dumps(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("index: {uri: data/x.db}\n")
    environ = {"M3RET_MILVUS_TOKEN": "root:Milvus", "M3RET_INDEX_URI": "http://127.0.0.1:19530", "M3RET_ID_SALT": "s"}
    params = load_params(tmp_path / "params.yaml", environ)
    assert (params.index.token, params.index.uri, params.ingest.id_salt) == (
        "root:Milvus",
        environ["M3RET_INDEX_URI"],
        "s",
    )
    assert "token" not in to_dict(params.index) and "id_salt" not in to_dict(params.ingest)
    assert "root:Milvus" not in repr(params)
    assert load_params(tmp_path / "params.yaml", {}).index.uri == "data/x.db"


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
