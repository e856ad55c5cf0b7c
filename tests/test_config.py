"""params.yaml sections: defaults load, unknown keys and wrong types fail at once naming the key, profiles are valid."""

from __future__ import annotations

import json
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
    ListenConfig,
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
    valid = r"\['dataset', 'dicomweb', 'modalities', 'modality', 'path', 'since'\]"
    with pytest.raises(ConfigError, match=r"ingest.sources\[0\]; valid: " + valid):
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


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ({"dataset": "x"}, "exactly one of path .* and dicomweb"),
        ({"path": "scans", "dicomweb": "http://pacs/dicom-web"}, "exactly one of path"),
        ({"path": "scans", "since": "20240101"}, "a path source has neither"),
        ({"dicomweb": "pacs:8042/dicom-web"}, "an http\\(s\\) URL with a host"),
        ({"dicomweb": "http://doctor:secret@pacs/dicom-web"}, "no credentials in the dicomweb URL"),
        ({"dicomweb": "http://pacs/dicom-web", "since": "2024-01-01"}, "since must be a date YYYYMMDD"),
        ({"dicomweb": "http://pacs/dicom-web", "modalities": ["ct"]}, r"DICOM Modality codes .*\['ct'\]"),
    ],
)
def test_a_source_is_a_path_or_a_dicomweb_server(source: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=r"ingest.sources\[0\]: .*" + match):
        from_dict(IngestConfig, {"sources": [source]}, "ingest")


def test_dicomweb_source_with_its_filters() -> None:
    raw = {"dicomweb": "http://127.0.0.1:8042/dicom-web", "since": 20240101, "modalities": ["CT", "MR"]}
    source = from_dict(IngestConfig, {"sources": [raw]}, "ingest").sources[0]
    assert (source.path, source.since, source.modalities) == ("", "20240101", ("CT", "MR"))


def test_dicomweb_login_comes_from_the_environment_and_stays_out_of_dumps(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("ingest: {sources: [{dicomweb: 'http://pacs/dicom-web'}]}\n")
    basic = {"M3RET_DICOMWEB_USER": "reader", "M3RET_DICOMWEB_PASSWORD": "pw-Secret-1"}
    ingest = load_params(tmp_path / "params.yaml", basic).ingest
    assert (ingest.dicomweb_user, ingest.dicomweb_password, ingest.dicomweb_token) == ("reader", "pw-Secret-1", "")
    token = load_params(tmp_path / "params.yaml", {"M3RET_DICOMWEB_TOKEN": "tok-Secret-2"}).ingest
    for section in (ingest, token):
        dump = json.dumps(to_dict(section)) + repr(section)
        assert "Secret" not in dump and "reader" not in dump
    with pytest.raises(ConfigError, match="go together"):
        load_params(tmp_path / "params.yaml", {"M3RET_DICOMWEB_USER": "reader"})
    with pytest.raises(ConfigError, match="not both"):
        load_params(tmp_path / "params.yaml", {**basic, "M3RET_DICOMWEB_TOKEN": "t"})


def test_reidentify_table_sits_beside_the_manifest_unless_given() -> None:
    assert from_dict(IngestConfig, {}).reidentify_table == "data/reidentify.parquet"
    cfg = from_dict(IngestConfig, {"out": "/x/m.parquet"})
    assert cfg.reidentify_table == "/x/reidentify.parquet"
    # a copy writing its manifest elsewhere (a refresh's scan) keeps the table where the pipeline reads it
    assert replace(cfg, out="/scan/m.parquet").reidentify_table == "/x/reidentify.parquet"
    assert from_dict(IngestConfig, {"reidentify_table": "/secure/r.parquet"}).reidentify_table == "/secure/r.parquet"


def test_listen_section_checks_its_ae_title_and_port() -> None:
    assert from_dict(ListenConfig, {}).ae_title == "M3RET"
    with pytest.raises(ConfigError, match="listen: ae_title must be 1-16"):
        from_dict(ListenConfig, {"ae_title": "A" * 17}, "listen")
    with pytest.raises(ConfigError, match="listen: port must lie"):
        from_dict(ListenConfig, {"port": 0}, "listen")


def test_jpeg_draft_side_may_not_undercut_the_frame_size(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("read: {jpeg_draft_side: 100}\npreprocess: {size: 128}\n")
    with pytest.raises(ConfigError, match=r"read.jpeg_draft_side 100 < preprocess.size 128.*at least 128"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("read: {jpeg_draft_side: 0}\npreprocess: {size: 128}\n")
    assert load_params(tmp_path / "params.yaml").read.jpeg_draft_side == 0


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
