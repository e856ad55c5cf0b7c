"""A tiny pipeline world for the flows tests: a PNG source folder, params.yaml under one root, the pipeline's stages
run by library calls, and the model's collection in a Milvus Lite file."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from m3ret.config import ModelConfig, Params, load_params, to_dict
from m3ret.index.milvus_index import MilvusIndex
from m3ret.models.embedding_set import EmbeddingSet
from m3ret.models.encoder import build_encoder
from m3ret.stages import embed, ingest, preprocess, split
from m3ret.stages.index import build_collection
from m3ret.train.checkpoint import save_encoder

SALT = b"flows-tests-salt-0123456789abcdef"
SIZE = 32
# enough reference items (pretrain + gallery splits) for a drift test: Evidently needs at least 16 rows a side
N_IMAGES = 24


def write_encoder(path: Path, size: int = SIZE) -> Path:
    """A random ViT-Ti (`size` px, patch 8, seed 0) exported as pretraining would; never trained, never downloaded.
    Seeded without touching the global generator: otherwise its weights (and a drift verdict) would depend on which
    tests drew random numbers first."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = build_encoder(ModelConfig(name="vit_tiny_patch16_224", img_size=size, patch_size=8))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_encoder(path, encoder, to_dict(encoder.cfg))
    return path


def write_png(path: Path, seed: int) -> Path:
    """A 40x40 greyscale picture of its own: stripes of a seed-given period and angle over seeded noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:40, 0:40]
    angle = rng.uniform(0, np.pi)
    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(0.2, 1.2))
    pixels = 127 + 90 * stripes + rng.normal(0, 20, size=stripes.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def tiny_params() -> dict:
    """params.yaml content sized for seconds on a loaded CPU; paths are relative to the world's folder (the working
    directory of whatever runs in it), so a built world can be copied whole."""
    return {
        "ingest": {
            "sources": [{"path": "source", "dataset": "tiny", "modality": "xray"}],
            "out": "data/manifest.parquet",
            "quarantine": "reports/quarantine.csv",
            "cache_dir": "data/cache/ingest",
            "salt_file": "data/id_salt",
            "id_salt": SALT.decode(),
            "workers": 1,
        },
        "preprocess": {"out": "data/frames", "size": SIZE, "workers": 1},
        "split": {"out": "data/splits.parquet", "gallery_frac": 0.3, "query_frac": 0.2},
        "pretrain": {
            "objective": "mae",
            "model": {"name": "vit_tiny_patch16_224", "img_size": SIZE, "patch_size": 8},
            "epochs": 1,
            "batch_size": 4,
            "workers": 0,
            "log_every": 1,
            "checkpoint_every": 100,
        },
        "embed": {"workers": 0},
        "index": {"index_type": "FLAT", "insert_batch": 50},
        "evaluate": {"baselines": False},
        "drift": {"min_rows": 16, "max_rows": 200},
    }


def build_world(root: Path, encoder_file: Path, n_images: int = N_IMAGES, name: str = "img{i:03d}.png") -> Path:
    """In `root`: a source folder of `n_images` PNGs (paths below it: `name` formatted with i), params.yaml, and the
    pipeline's stages up to the embed stage run by library calls (nothing in Milvus yet: see `publish`). Returns the
    params file."""
    with contextlib.chdir(root):
        for i in range(n_images):
            write_png(Path("source") / name.format(i=i), seed=i)
        Path("params.yaml").write_text(yaml.safe_dump(tiny_params()))
        params = load_params("params.yaml")
        Path(params.embed.encoder).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(encoder_file, params.embed.encoder)
        for stage in (ingest, preprocess, split, embed):
            stage.run(params)
    return root / "params.yaml"


def publish(params: Params) -> str:
    """Build the embed stage output's collection in the world's Milvus Lite file and publish it (run in the world)."""
    index = MilvusIndex(params.index)
    try:
        name = build_collection(index, EmbeddingSet.load(params.embed.out))
        index.publish(name)
        return name
    finally:
        index.close()
