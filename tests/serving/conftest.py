"""A real retrieval service on a tiny real index: the pipeline's own functions build it, `bentoml serve` serves it.

Session-scoped (`built`): ingest -> preprocess -> splits -> a random-init ViT-Ti (img 32, patch 8) -> embed -> Milvus
Lite collection published under the alias -> encoder imported into a temporary BentoML home. `serve` starts
`bentoml serve` on a copy of that on a free port (`served`: the default settings; a test may start one with tighter
ones), stopped (its whole process group) when it is done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from dicom_factory import write_ct_series  # noqa: E402
from mixed_source import write_mp4  # noqa: E402

from m3ret.config import (  # noqa: E402
    EmbedConfig,
    IndexConfig,
    IngestConfig,
    ModelConfig,
    PreprocessConfig,
    ReadConfig,
    ReadoutConfig,
    SourceConfig,
    SplitConfig,
    to_dict,
)
from m3ret.data.ingest import ingest  # noqa: E402
from m3ret.data.preprocess import preprocess  # noqa: E402
from m3ret.data.splits import make_splits  # noqa: E402
from m3ret.index.milvus_index import MilvusIndex  # noqa: E402
from m3ret.models.embedding_set import EmbeddingSet  # noqa: E402
from m3ret.models.encoder import build_encoder  # noqa: E402
from m3ret.stages.embed import embed_store  # noqa: E402
from m3ret.stages.index import build_collection  # noqa: E402
from m3ret.train.checkpoint import save_encoder  # noqa: E402
from serving.tokens import TokenStore  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SALT = b"serving-test-salt-0123456789"
MAX_UPLOAD_MB = 2
MAX_K = 20
SIZE = 32
# Gallery photos: distinct, smooth patterns so a random-init ViT still tells them apart.
PATTERNS = ("checker", "hstripes", "vstripes", "disc", "ramp", "diagonal")


def _pattern(name: str, n: int = 48) -> np.ndarray:
    """uint8 [n, n, 3] test image."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    grey = {
        "checker": ((x // 8 + y // 8) % 2) * 220 + 20,
        "hstripes": (y // 6 % 2) * 200 + 30,
        "vstripes": (x // 6 % 2) * 200 + 30,
        "disc": np.where((x - n / 2) ** 2 + (y - n / 2) ** 2 < (n / 3) ** 2, 230, 25),
        "ramp": x / n * 255,
        "diagonal": ((x + y) // 8 % 2) * 180 + 40,
    }[name]
    tint = np.array([1.0, 0.8, 0.6], dtype=np.float32)
    return np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)


@dataclass
class Served:
    """The running service and the files a test sends to it."""

    url: str
    root: Path
    queries: dict[str, Path]
    dim: int
    n_series: int
    max_k: int
    max_upload_mb: int
    log: Path
    token: str  # a valid bearer token (`revoked` was valid once)
    revoked: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_sources(src: Path) -> None:
    for name in PATTERNS:
        (src / "photos").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_pattern(name)).save(src / "photos" / f"{name}.png")
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:6, 0:32, 0:32]
    hu = np.where((x - 16) ** 2 + (y - 16) ** 2 < (6 + 2 * z) ** 2, 300, -900).astype(np.int16)
    write_ct_series(src / "ct" / "series", hu, patient_id="PAT-7", window=(40.0, 400.0))
    volume = (rng.random((24, 24, 10)) * 40 + np.linspace(0, 200, 24)[:, None, None]).astype(np.float32)
    (src / "mri").mkdir(parents=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), src / "mri" / "brain.nii.gz")
    ramp = np.linspace(10, 245, 12).astype(np.uint8)
    clip = np.broadcast_to(ramp[:, None, None, None], (12, 48, 64, 3)).copy()
    clip[:, 12:36, 16:48, 0] = 255 - clip[:, 12:36, 16:48, 0]
    (src / "endo").mkdir(parents=True)
    write_mp4(src / "endo" / "clip.mp4", clip)


def _write_queries(src: Path, out: Path) -> dict[str, Path]:
    """Query files: near-copies of gallery items and the bad inputs the service must refuse."""
    out.mkdir(parents=True)
    q: dict[str, Path] = {}
    checker = Image.open(src / "photos" / "checker.png")
    q["jpeg_copy"] = out / "checker_copy.jpg"
    checker.convert("RGB").save(q["jpeg_copy"], quality=90)
    noisy = np.asarray(Image.open(src / "photos" / "disc.png")).astype(np.int16)
    noisy += np.random.default_rng(1).integers(-6, 7, size=noisy.shape)
    q["png_noisy"] = out / "disc_noisy.png"
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(q["png_noisy"])
    series = sorted((src / "ct" / "series").glob("*.dcm"))
    q["dicom_file"] = out / "slice.dcm"
    shutil.copyfile(series[0], q["dicom_file"])
    q["dicom_zip"] = out / "series.zip"
    shutil.make_archive(str(q["dicom_zip"].with_suffix("")), "zip", src / "ct" / "series")
    q["nifti"] = src / "mri" / "brain.nii.gz"
    q["video"] = src / "endo" / "clip.mp4"
    return q


def _gallery_sources(src: Path) -> tuple[SourceConfig, ...]:
    return (
        SourceConfig(path=str(src / "photos"), dataset="photos", modality="photo"),
        SourceConfig(path=str(src / "ct"), dataset="ct"),
        SourceConfig(path=str(src / "mri"), dataset="mri", modality="mr"),
        SourceConfig(path=str(src / "endo"), dataset="endo", modality="endoscopy"),
    )


def _build_index(
    root: Path, sources: tuple[SourceConfig, ...], prep_cfg: PreprocessConfig, index_cfg: IndexConfig
) -> int:
    """The pipeline's stages on `sources` with the encoder at root/encoder.pt (retrieval model: root/retrieval.pt;
    re-identification table: root/reidentify.parquet); returns the number of items."""
    read_cfg = ReadConfig()
    ingest_cfg = IngestConfig(
        sources=sources,
        out=str(root / "manifest.parquet"),
        quarantine=str(root / "quarantine.csv"),
        cache_dir=str(root / "cache"),
        salt_file=str(root / "salt"),
        workers=1,
    )
    manifest, quarantine = ingest(ingest_cfg, read_cfg, SALT)
    assert len(quarantine) == 0, quarantine.to_dict("records")
    preprocess(manifest, prep_cfg, read_cfg)
    splits = make_splits(manifest, SplitConfig())
    embed_cfg = EmbedConfig(
        encoder=str(root / "encoder.pt"),
        model=str(root / "retrieval.pt"),
        out=str(root / "embeddings"),
        batch_size=64,
        workers=0,
    )
    embed_store(embed_cfg, ReadoutConfig(), Path(prep_cfg.out), manifest, splits, prep_cfg, read_cfg)
    index = MilvusIndex(index_cfg)
    try:
        index.publish(build_collection(index, EmbeddingSet.load(embed_cfg.out)))
    finally:
        index.close()  # releases the Milvus Lite file: the service's process must be the only one holding it
    return len(manifest)


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENTOML_", "M3RET_"))}
    env.update(
        BENTOML_HOME=str(root / "bentoml"),
        BENTOML_DO_NOT_TRACK="True",
        M3RET_PARAMS=str(root / "params.yaml"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
    )
    return env


def _start_import(root: Path, env: dict[str, str]) -> subprocess.Popen:
    """`import_encoder` of the retrieval model (encoder + fitted readout) in a child process (the BentoML home is
    fixed before BentoML reads its configuration)."""
    code = (
        "import sys; from pathlib import Path; from m3ret.config import load_params;"
        "from serving.model_store import import_encoder;"
        "print(import_encoder(Path(sys.argv[1]), load_params(sys.argv[2])))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(root / "retrieval.pt"), str(root / "params.yaml")],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _imported_tag(proc: subprocess.Popen) -> str:
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    return out.strip().splitlines()[-1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"service not ready after {timeout} s:\n{log.read_text()[-4000:]}")


@dataclass
class Built:
    """The index, the imported encoder and the query files, shared by every service a test session starts."""

    root: Path
    params: dict
    env: dict[str, str]
    queries: dict[str, Path]
    dim: int
    n_items: int
    token: str
    revoked: str


def build(root: Path, sources: tuple[SourceConfig, ...], queries: dict[str, Path]) -> Built:
    """A random-init ViT-Ti's index of `sources` in `root`, its encoder imported, params and tokens written."""
    encoder = build_encoder(ModelConfig(name="vit_tiny_patch16_224", img_size=32, patch_size=8))
    save_encoder(root / "encoder.pt", encoder, to_dict(encoder.cfg))
    prep_cfg = PreprocessConfig(out=str(root / "frames"), size=SIZE, workers=1, max_slices_per_plane=8)
    index_cfg = IndexConfig(
        uri=str(root / "milvus" / "m3ret.db"), index_type="FLAT", alias="m3ret_test", collection_prefix="m3ret_test"
    )
    params = {
        "ingest": {"reidentify_table": str(root / "reidentify.parquet")},
        "preprocess": to_dict(prep_cfg),
        "index": to_dict(index_cfg),
        "serve": {
            "max_upload_mb": MAX_UPLOAD_MB,
            "max_k": MAX_K,
            "thumbnail_size": 64,
            "tokens_file": str(root / "tokens.json"),
        },
    }
    tokens = TokenStore(root / "tokens.json")
    token, revoked = tokens.create("tests"), tokens.create("former")
    tokens.revoke("former")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = _env(root)
    n_items = _build_index(root, sources, prep_cfg, index_cfg)
    env["M3RET_MODEL_TAG"] = _imported_tag(_start_import(root, env))
    return Built(root, params, env, queries, encoder.embed_dim, n_items, token, revoked)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("serving")
    src = root / "src"
    _write_sources(src)
    return build(root, _gallery_sources(src), _write_queries(src, root / "queries"))


@contextlib.contextmanager
def serve(built: Built, name: str, **serve_settings) -> Iterator[Served]:
    """`bentoml serve` of the built index with `serve_settings` over the session's serve section, in a folder of its
    own (a copy of the Milvus Lite file, which admits one process, and of the BentoML home: metrics are per home)."""
    folder = built.root / name
    shutil.copytree(built.root / "milvus", folder / "milvus")
    shutil.copytree(built.root / "bentoml", folder / "bentoml")
    params = {**built.params, "serve": {**built.params["serve"], **serve_settings}}
    params["index"] = {**params["index"], "uri": str(folder / "milvus" / "m3ret.db")}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**built.env, "BENTOML_HOME": str(folder / "bentoml"), "M3RET_PARAMS": str(folder / "params.yaml")}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "bentoml.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(BIN / "bentoml"), "serve", "serving.service:Retrieval", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(url, proc, log)
        yield Served(
            url,
            built.root,
            built.queries,
            built.dim,
            built.n_items,
            MAX_K,
            MAX_UPLOAD_MB,
            log,
            built.token,
            built.revoked,
        )
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def served(built: Built) -> Iterator[Served]:
    with serve(built, "service") as service:
        yield service


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, then SIGKILL to whatever of it is left (workers, Milvus Lite)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
