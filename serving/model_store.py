"""The pipeline's encoder checkpoint in the BentoML model store, with what it needs to embed a query like the index.

The model's version in the store is the pipeline's `model_version` (checkpoint bytes + read/preprocess settings), so
importing the same encoder twice is one model, and the service can tell whether the index alias holds its vectors.
The read and preprocess sections travel in the model's metadata: a query must be decoded, windowed and letterboxed
exactly as the indexed frames were, whatever params.yaml says where the service runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from m3ret.config import Params, PreprocessConfig, ReadConfig, from_dict, to_dict
from m3ret.models.encoder import Encoder, load_encoder
from m3ret.models.model_version import model_version
from m3ret.train.checkpoint import ENCODER_FILE


def import_encoder(encoder_path: Path, params: Params, name: str = "m3ret-encoder") -> str:
    """Save `encoder_path` (an `encoder.pt`) as model `name:<model_version>`; returns the tag. Idempotent."""
    version = model_version(encoder_path, params.preprocess, params.read)
    tag = f"{name}:{version}"
    try:
        return str(bentoml.models.get(tag).tag)
    except NotFound:
        pass
    metadata = {
        "model_version": version,
        "read": to_dict(params.read),
        "preprocess": to_dict(params.preprocess),
    }
    with bentoml.models.create(tag, labels={"project": "m3ret"}, metadata=metadata) as model:
        shutil.copyfile(encoder_path, model.path_of(ENCODER_FILE))
    return str(model.tag)


def imported_settings(tag: str) -> tuple[ReadConfig, PreprocessConfig, str]:
    """(the read section, the preprocess section, the model version) an imported model's queries need."""
    meta = bentoml.models.get(tag).info.metadata
    read = from_dict(ReadConfig, meta["read"], "read")
    preprocess = from_dict(PreprocessConfig, meta["preprocess"], "preprocess")
    return read, preprocess, str(meta["model_version"])


def load_imported_encoder(tag: str) -> Encoder:
    """The imported retrieval model (encoder + fitted readout) in eval mode on CPU."""
    return load_encoder(bentoml.models.get(tag).path_of(ENCODER_FILE))
