"""Typed sections of params.yaml: one dataclass per section; unknown keys are errors.

The CLI loads params.yaml once (`load_params`) and hands each library function its own section.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A broken configuration: fails at once, naming the key."""


# ---------------------------------------------------------------------------------------------- read
@dataclass(frozen=True)
class WindowingConfig:
    """How stored intensities become display grey levels.

    `use_header`: apply the DICOM header's VOI LUT or WindowCenter/Width when present.
    Otherwise CT uses `presets[ct_preset]` (centre, width in HU); other modalities use the
    `percentiles` range of the item's own intensities.
    """

    use_header: bool = True
    ct_preset: str = "soft_tissue"
    presets: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "soft_tissue": (40.0, 400.0),
            "lung": (-600.0, 1500.0),
            "bone": (400.0, 1800.0),
            "brain": (40.0, 80.0),
        }
    )
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.ct_preset not in self.presets:
            raise ConfigError(f"read.windowing.ct_preset={self.ct_preset!r}; valid: {sorted(self.presets)}")


@dataclass(frozen=True)
class VideoSamplingConfig:
    """`uniform`: `num_frames` evenly spaced over the clip; `fps`: a frame every 1/fps s, at most `max_frames`."""

    mode: Literal["uniform", "fps"] = "uniform"
    num_frames: int = 16
    fps: float = 1.0
    max_frames: int = 64


@dataclass(frozen=True)
class LimitsConfig:
    """Refuse items whose header declares more than this, before decoding anything."""

    max_file_mb: float = 4096.0
    max_side: int = 16384
    max_frames: int = 4096
    max_voxels: int = 1_500_000_000


@dataclass(frozen=True)
class ReadConfig:
    windowing: WindowingConfig = field(default_factory=WindowingConfig)
    video: VideoSamplingConfig = field(default_factory=VideoSamplingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


# -------------------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class DemoDataConfig:
    out: str = "data/demo"
    n_videos: int = 3
    video_frames: int = 24
    seed: int = 0


@dataclass(frozen=True)
class SourceConfig:
    """One place to ingest from. `modality` overrides what the files say (e.g. `endoscopy` for a video folder)."""

    path: str
    dataset: str = ""
    modality: str = ""


@dataclass(frozen=True)
class IngestConfig:
    sources: tuple[SourceConfig, ...] = ()
    out: str = "data/manifest.parquet"
    quarantine: str = "reports/quarantine.csv"
    cache_dir: str = "data/cache/ingest"
    salt_file: str = "data/id_salt"
    workers: int = 2


@dataclass(frozen=True)
class PreprocessConfig:
    """Items to model-ready frames: `size` px square letterboxed, sharded uint8 arrays.

    `channels`: `replicate` copies grey to 3 channels and keeps colour; `grey` also turns colour into luminance.
    Volumes are cut along `planes` every `slice_stride` slices, at most `max_slices_per_plane` per plane.
    """

    out: str = "data/frames"
    size: int = 64
    channels: Literal["replicate", "grey"] = "replicate"
    planes: tuple[Literal["axial", "coronal", "sagittal"], ...] = ("axial",)
    slice_stride: int = 1
    max_slices_per_plane: int = 64
    drop_blank_slices: bool = True
    shard_frames: int = 4096
    workers: int = 2


@dataclass(frozen=True)
class SplitConfig:
    """Group-disjoint fractions for items that carry no benchmark role; the rest is pretrain."""

    out: str = "data/splits.parquet"
    gallery_frac: float = 0.15
    query_frac: float = 0.05
    group_by: Literal["patient", "series"] = "patient"
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.gallery_frac >= 0 and self.query_frac >= 0 and self.gallery_frac + self.query_frac < 1):
            raise ConfigError("split.gallery_frac + split.query_frac must lie in [0, 1)")


# ------------------------------------------------------------------------------------- model/pretrain
@dataclass(frozen=True)
class ModelConfig:
    """A timm ViT (`name`) built at `img_size` with `patch_size`; `pooling` is `cls` or `mean` of patch tokens."""

    name: str = "vit_tiny_patch16_224"
    img_size: int = 64
    patch_size: int = 8
    pooling: Literal["cls", "mean"] = "mean"
    drop_path_rate: float = 0.0


@dataclass(frozen=True)
class MAEConfig:
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True


@dataclass(frozen=True)
class SimDINOConfig:
    n_local: int = 2
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.1, 0.4)
    local_size: int = 32
    head_hidden_dim: int = 512
    head_out_dim: int = 128
    eps: float = 0.5
    coding_weight: float = 1.0
    ema_start: float = 0.99
    ema_end: float = 1.0


@dataclass(frozen=True)
class AugmentConfig:
    """Identical for every modality (M3Ret: no modality-specific parts)."""

    crop_scale: tuple[float, float] = (0.4, 1.0)
    hflip: float = 0.5
    vflip: float = 0.0
    brightness: float = 0.2
    contrast: float = 0.2
    blur_prob: float = 0.2


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.01
    clip_grad: float = 1.0


@dataclass(frozen=True)
class PretrainConfig:
    objective: str = "mae"
    model: ModelConfig = field(default_factory=ModelConfig)
    # a local timm / safetensors / DINO-style / m3ret checkpoint to start the backbone from ("" = random init)
    init: str = ""
    mae: MAEConfig = field(default_factory=MAEConfig)
    simdino: SimDINOConfig = field(default_factory=SimDINOConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    splits: tuple[str, ...] = ("pretrain", "gallery")
    epochs: float = 2.0
    batch_size: int = 64
    workers: int = 1
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    out: str = "models/pretrain"
    metrics_dir: str = "reports/pretrain"
    # a labeled manifest folder (e.g. ../shared/data/medbench) evaluated every `eval_every` steps and at the end;
    # "" to skip. Its query images must never be a pretraining source.
    eval_bench: str = ""
    eval_every: int = 0
    eval_every_epochs: float = 0.0  # > 0: evaluate every this many epochs instead (a learning curve per epoch)
    eval_cache: str = "data/cache/bench"

    def __post_init__(self) -> None:
        if self.eval_every and self.eval_every_epochs:
            raise ConfigError("pretrain: set eval_every (steps) or eval_every_epochs, not both")


# ---------------------------------------------------------------------------------------------- embed
@dataclass(frozen=True)
class EmbedConfig:
    """Frame and item embeddings of every stored frame, with the encoder exported by pretraining.

    `encoder`: the `encoder.pt` written by `m3ret pretrain` (or any file `load_encoder` reads); `model`: the
    retrieval model this stage writes (the encoder plus the fitted `readout`), which search, serving and refresh
    load; `out`: folder of vectors + metadata tables.
    """

    encoder: str = "models/pretrain/encoder.pt"
    model: str = "models/retrieval.pt"
    out: str = "data/embeddings"
    batch_size: int = 256
    workers: int = 1  # DataLoader processes reading shards; 0 reads in the main process
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default


# -------------------------------------------------------------------------------------------- readout
@dataclass(frozen=True)
class ReadoutConfig:
    """The retrieval vector (m3ret/models/readout.py): `pooling` of the encoder's tokens, '+'-joined parts of
    cls | mean | grid (a `grid` x `grid` layout of patch-token means), then optional PCA whitening fitted at embed
    time on the frames of `fit_splits` (never labels), keeping `whiten_dim` components (0: all) with eigenvalue
    shrinkage `whiten_shrinkage`. Saved with the encoder (`embed.model`), so it is part of the model version.
    """

    pooling: str = "mean"
    grid: int = 2
    whiten: bool = True
    whiten_dim: int = 0
    whiten_shrinkage: float = 0.1
    fit_splits: tuple[str, ...] = ("pretrain", "gallery")

    def __post_init__(self) -> None:
        if "query" in self.fit_splits:
            raise ConfigError("readout.fit_splits must not include 'query': queries are never seen before search")
        if self.whiten_shrinkage < 0 or self.whiten_dim < 0 or self.grid < 1:
            raise ConfigError("readout: whiten_shrinkage and whiten_dim must be >= 0 and grid >= 1")


# ---------------------------------------------------------------------------------------------- index
@dataclass(frozen=True)
class IndexConfig:
    """Milvus: `uri` is a Milvus Lite file (embedded, one process) or `http://host:19530` (server or cluster).

    Each model version gets its own collection `<collection_prefix>_<version>`; searches go through `alias`, which
    is switched to a new collection only after its evaluation gate passes; `retain` collections are kept.
    `token` may be left empty and given in the environment (M3RET_MILVUS_TOKEN) instead.
    """

    uri: str = "data/milvus/m3ret.db"
    token: str = ""
    alias: str = "m3ret_current"
    collection_prefix: str = "m3ret"
    index_type: Literal["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW"] = "HNSW"
    metric: Literal["IP", "COSINE", "L2"] = "IP"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef: int = 128
    ivf_nlist: int = 128
    ivf_nprobe: int = 16
    retain: int = 2
    insert_batch: int = 2000


# ------------------------------------------------------------------------------------------- evaluate
@dataclass(frozen=True)
class EvaluateConfig:
    """Retrieval quality through the index, on the pipeline's own query/gallery splits and on `bench` folders.

    The gate: the candidate's mean mAP@10 must be >= `gate_min_ratio` x the current model's (recorded in
    `gate_file`); the first model always passes. `grid_queries` queries per dataset go into the picture.
    """

    bench: str = ""  # a labeled manifest folder or MedMNIST npz evaluated besides the pipeline's splits
    k: int = 10
    label_column: str = "modality"  # what counts as relevant for the pipeline's own splits (benchmarks: label)
    gate_min_ratio: float = 0.98
    gate_file: str = "models/index_gate.json"
    baselines: bool = True
    grid_queries: int = 3
    out: str = "reports/evaluate"
    cache: str = "data/cache/bench"


# ---------------------------------------------------------------------------------------------- drift
@dataclass(frozen=True)
class DriftConfig:
    """Evidently embedding drift between `reference` and `current` item embeddings, overall and per modality.

    `method` picks Evidently's test; both flag drift when score > `threshold` (`null`: Evidently's default for it):
    - `mmd` (default 0.015): unbiased squared maximum mean discrepancy MMD^2_u (Gretton et al. 2012) under an RBF
      kernel as wide as the median reference-current distance; 0 for the same distribution. Not a p-value.
      Measured on same-distribution 16-d unit vectors: no false alarm from 100 rows a side. MMD^2 shrinks as the
      dimension grows, so in 192-d it misses moderate shifts that `model` finds.
    - `model` (default 0.55): ROC AUC of Evidently's logistic-regression classifier trained on half the pooled rows
      to tell reference from current, scored on the other half; 0.5 for the same distribution. A fixed 0.55 is
      exceeded by chance often on small sides (a third of same-distribution scopes at 150 rows a side, 1 in 8 at
      400), so it suits large batches.
    A scope with fewer than `min_rows` rows on a side (at least 16: Evidently's report embeds both sides with a
    perplexity-30 t-SNE) is reported as "too few rows", not tested. At most `max_rows` rows per side and scope are
    sampled with `seed` (the report's t-SNE costs about 35 ms per row on one core).
    """

    method: Literal["model", "mmd"] = "mmd"
    threshold: float | None = None
    reference_splits: tuple[str, ...] = ("pretrain", "gallery")
    current_splits: tuple[str, ...] = ("query",)
    min_rows: int = 30
    max_rows: int = 1000
    seed: int = 0
    out: str = "reports/drift"


# ---------------------------------------------------------------------------------------------- serve
@dataclass(frozen=True)
class ServeConfig:
    """The retrieval service: upload limits (a request beyond them is refused with 413/400, never decoded)."""

    max_upload_mb: int = 512
    max_zip_members: int = 4096
    max_unzipped_mb: int = 2048
    max_zip_ratio: float = 100.0  # uncompressed / compressed beyond this is a zip bomb (DICOM compresses ~3-10x)
    max_k: int = 100
    thumbnail_size: int = 128


# ---------------------------------------------------------------------------------------------- load
SECTIONS: dict[str, type] = {
    "read": ReadConfig,
    "demo_data": DemoDataConfig,
    "ingest": IngestConfig,
    "preprocess": PreprocessConfig,
    "split": SplitConfig,
    "pretrain": PretrainConfig,
    "embed": EmbedConfig,
    "readout": ReadoutConfig,
    "index": IndexConfig,
    "evaluate": EvaluateConfig,
    "drift": DriftConfig,
    "serve": ServeConfig,
}


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}={value!r}; valid: {list(typing.get_args(tp))}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} entries, got {value!r}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {_coerce(kt, k, where): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types with the key's full name."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or cls.__name__}; valid: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def to_dict(section: Any) -> dict[str, Any]:
    """The plain-data form of a section (tuples as lists), e.g. to store inside a checkpoint."""
    return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(section))))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Params:
    read: ReadConfig
    demo_data: DemoDataConfig
    ingest: IngestConfig
    preprocess: PreprocessConfig
    split: SplitConfig
    pretrain: PretrainConfig
    embed: EmbedConfig
    readout: ReadoutConfig
    index: IndexConfig
    evaluate: EvaluateConfig
    drift: DriftConfig
    serve: ServeConfig


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml; every top-level section must be known, missing ones take their defaults."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown} in {path}; valid: {sorted(SECTIONS)}")
    return Params(**{name: from_dict(cls, raw.get(name), name) for name, cls in SECTIONS.items()})


# ------------------------------------------------------------------------------------------- profiles
PROFILES_DIR = Path(__file__).parent / "profiles"


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
