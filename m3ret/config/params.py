"""params.yaml as one `Params` object: the CLI loads it once and hands each library function its own section."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from m3ret.config.section import ConfigError, Section, from_dict, replace
from m3ret.config.sections import (
    DemoDataConfig,
    DriftConfig,
    EmbedConfig,
    EngineConfig,
    EvaluateConfig,
    IndexConfig,
    PreprocessConfig,
    PretrainConfig,
    ReadConfig,
    ReadoutConfig,
    ServeConfig,
    SplitConfig,
)
from m3ret.config.source_sections import IngestConfig, ListenConfig


class Params(BaseModel):
    """Every section of params.yaml; a missing section takes its defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    read: ReadConfig = Field(default_factory=ReadConfig)
    demo_data: DemoDataConfig = Field(default_factory=DemoDataConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    readout: ReadoutConfig = Field(default_factory=ReadoutConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    listen: ListenConfig = Field(default_factory=ListenConfig)

    @model_validator(mode="after")
    def _jpeg_draft_keeps_the_frame_size(self) -> Params:
        side, size = self.read.jpeg_draft_side, self.preprocess.size
        if 0 < side < size:
            raise ValueError(
                f"read.jpeg_draft_side {side} < preprocess.size {size}: JPEGs would be decoded smaller than the frames "
                f"stored from them; set it to 0 or at least {size} (4x, {4 * size}, keeps frames within a fraction "
                "of a grey level of a full decode)"
            )
        return self


SECTIONS: dict[str, type[Section]] = {name: info.annotation for name, info in Params.model_fields.items()}
# Settings that may come from the environment instead of params.yaml (secrets, and where a deployment's index is);
# a set variable wins over the file.
ENVIRONMENT: dict[str, tuple[str, str]] = {
    "M3RET_ID_SALT": ("ingest", "id_salt"),
    "M3RET_DICOMWEB_TOKEN": ("ingest", "dicomweb_token"),
    "M3RET_DICOMWEB_USER": ("ingest", "dicomweb_user"),
    "M3RET_DICOMWEB_PASSWORD": ("ingest", "dicomweb_password"),
    "M3RET_INDEX_URI": ("index", "uri"),
    "M3RET_MILVUS_TOKEN": ("index", "token"),
}


def load_params(path: str | Path = "params.yaml", environ: Mapping[str, str] | None = None) -> Params:
    """Read params.yaml, then the ENVIRONMENT variables that are set (`environ`, default os.environ); every
    top-level section must be known, missing ones take their defaults."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown} in {path}; valid: {sorted(SECTIONS)}")
    sections = {name: from_dict(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    environ = os.environ if environ is None else environ
    overrides: dict[str, dict[str, str]] = {}
    for variable, (name, key) in ENVIRONMENT.items():
        if environ.get(variable):
            overrides.setdefault(name, {})[key] = environ[variable]
    for name, changes in overrides.items():  # a section's variables at once: a user goes with its password
        sections[name] = replace(sections[name], **changes)
    return from_dict(Params, sections, Path(path).name)
