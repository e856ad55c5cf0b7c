"""Typed sections of params.yaml, one model per section (`m3ret.config.section.Section`); where images come from
(sources, ingest, the DICOM listener) is in `m3ret.config.source_sections`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from m3ret.config.section import Section


# ---------------------------------------------------------------------------------------------- read
class WindowingConfig(Section):
    """How stored intensities become display grey levels.

    `use_header`: apply the DICOM header's VOI LUT or WindowCenter/Width when present.
    Otherwise CT uses `presets[ct_preset]` (centre, width in HU); other modalities use the
    `percentiles` range of the item's own intensities.
    """

    use_header: bool = True
    ct_preset: str = "soft_tissue"
    presets: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "soft_tissue": (40.0, 400.0),
            "lung": (-600.0, 1500.0),
            "bone": (400.0, 1800.0),
            "brain": (40.0, 80.0),
        }
    )
    percentiles: tuple[float, float] = (0.5, 99.5)

    @model_validator(mode="after")
    def _preset_exists(self) -> WindowingConfig:
        if self.ct_preset not in self.presets:
            raise ValueError(f"ct_preset={self.ct_preset!r}; valid: {sorted(self.presets)}")
        return self


class VideoSamplingConfig(Section):
    """`uniform`: `num_frames` evenly spaced over the clip; `fps`: a frame every 1/fps s, at most `max_frames`."""

    mode: Literal["uniform", "fps"] = "uniform"
    num_frames: int = 16
    fps: float = 1.0
    max_frames: int = 64


class LimitsConfig(Section):
    """Refuse items whose header declares more than this, before decoding anything."""

    max_file_mb: float = 4096.0
    max_side: int = 16384
    max_frames: int = 4096
    max_voxels: int = 1_500_000_000


class ReadConfig(Section):
    windowing: WindowingConfig = Field(default_factory=WindowingConfig)
    video: VideoSamplingConfig = Field(default_factory=VideoSamplingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    # JPEG images only: decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, a fraction of the work) as long as
    # both sides stay >= this many px; 0 decodes every pixel. At 4x `preprocess.size` the stored frames move by
    # 0.2-0.3 grey levels on average from a full decode's (benchmarks/jpeg_draft.py); at least preprocess.size.
    # Like every read setting it is part of the model version (changing it means re-embedding)
    jpeg_draft_side: int = Field(256, ge=0)


# -------------------------------------------------------------------------------------------- stages
class DemoDataConfig(Section):
    out: str = "data/demo"
    n_videos: int = 3
    video_frames: int = 24
    seed: int = 0


class PreprocessConfig(Section):
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


class SplitConfig(Section):
    """Group-disjoint fractions for items that carry no benchmark role; the rest is pretrain."""

    out: str = "data/splits.parquet"
    gallery_frac: float = 0.15
    query_frac: float = 0.05
    group_by: Literal["patient", "series"] = "patient"
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_fit(self) -> SplitConfig:
        if not (self.gallery_frac >= 0 and self.query_frac >= 0 and self.gallery_frac + self.query_frac < 1):
            raise ValueError("gallery_frac + query_frac must lie in [0, 1)")
        return self


# ------------------------------------------------------------------------------------- model/pretrain
class ModelConfig(Section):
    """A timm ViT (`name`) built at `img_size` with `patch_size`; `pooling` is `cls` or `mean` of patch tokens."""

    name: str = "vit_tiny_patch16_224"
    img_size: int = 64
    patch_size: int = 8
    pooling: Literal["cls", "mean"] = "mean"
    drop_path_rate: float = 0.0


class MAEConfig(Section):
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True


class SimDINOConfig(Section):
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


class AugmentConfig(Section):
    """Identical for every modality (M3Ret: no modality-specific parts)."""

    crop_scale: tuple[float, float] = (0.4, 1.0)
    hflip: float = 0.5
    vflip: float = 0.0
    brightness: float = 0.2
    contrast: float = 0.2
    blur_prob: float = 0.2


class OptimConfig(Section):
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.01
    clip_grad: float = 1.0


class PretrainConfig(Section):
    objective: str = "mae"
    model: ModelConfig = Field(default_factory=ModelConfig)
    # a local timm / safetensors / DINO-style / m3ret checkpoint to start the backbone from ("" = random init)
    init: str = ""
    mae: MAEConfig = Field(default_factory=MAEConfig)
    simdino: SimDINOConfig = Field(default_factory=SimDINOConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
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

    @model_validator(mode="after")
    def _one_eval_schedule(self) -> PretrainConfig:
        if self.eval_every and self.eval_every_epochs:
            raise ValueError("set eval_every (steps) or eval_every_epochs, not both")
        return self


# --------------------------------------------------------------------------------------------- engine
class EngineConfig(Section):
    """Where ingest, preprocess and embed do their per-item work (m3ret/engines); outputs are the same either way.

    `local`: this machine, as `ingest.workers` / `preprocess.workers` processes and one embed process; nothing else
    starts and ray is not imported. `ray`: a Ray cluster at `ray_address`: "" starts a Ray of `local_cpus` CPUs
    (0: all) for the run and stops it after, `auto` joins the cluster this node belongs to (`ray start` ran here),
    `ray://head:10001` a remote cluster through Ray Client (any `ray.init` address works). Decoding runs as Ray tasks
    of `items_per_task` items, each reserving `cpus_per_task` CPUs; embedding as `embed_actors` actors (0: as many
    as the cluster has GPUs, or CPUs when it has none, over `num_gpus_per_actor` / `cpus_per_task`), each loading the
    encoder once and holding `num_gpus_per_actor` GPUs (null: 1 when the cluster has GPUs, else 0). Finished parts
    are kept in `journal_dir` under the content hash of their inputs until the step completes, so a killed run
    started again redoes only what is missing. Every node must see the sources and these folders at the same paths
    (a shared filesystem) and have m3ret's dependencies installed; the m3ret code itself travels with the job.
    """

    kind: Literal["local", "ray"] = "local"
    ray_address: str = ""
    local_cpus: int = 0
    items_per_task: int = 4
    cpus_per_task: float = 1.0
    embed_actors: int = 0
    num_gpus_per_actor: float | None = None
    journal_dir: str = "data/cache/engine"

    @model_validator(mode="after")
    def _positive(self) -> EngineConfig:
        if self.items_per_task < 1 or self.cpus_per_task <= 0 or self.embed_actors < 0 or self.local_cpus < 0:
            raise ValueError("items_per_task >= 1, cpus_per_task > 0, embed_actors >= 0 and local_cpus >= 0")
        if self.num_gpus_per_actor is not None and self.num_gpus_per_actor < 0:
            raise ValueError("num_gpus_per_actor must be >= 0 (or null: 1 when the cluster has GPUs)")
        return self


# ---------------------------------------------------------------------------------------------- embed
class EmbedConfig(Section):
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
class ReadoutConfig(Section):
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

    @model_validator(mode="after")
    def _fit_without_queries(self) -> ReadoutConfig:
        if "query" in self.fit_splits:
            raise ValueError("fit_splits must not include 'query': queries are never seen before search")
        if self.whiten_shrinkage < 0 or self.whiten_dim < 0 or self.grid < 1:
            raise ValueError("whiten_shrinkage and whiten_dim must be >= 0 and grid >= 1")
        return self


# ---------------------------------------------------------------------------------------------- index
class IndexConfig(Section):
    """Milvus: `uri` is a Milvus Lite file (embedded, one process) or `http://host:19530` (server or cluster).

    Each model version gets its own collection `<collection_prefix>_<version>`; searches go through `alias`, which
    is switched to a new collection only after its evaluation gate passes; `retain` collections are kept.
    `token` may be left empty and given in the environment (M3RET_MILVUS_TOKEN) instead. `backend` names the
    implementation (`m3ret.index.vector_index.BACKENDS`).
    """

    backend: Literal["milvus"] = "milvus"
    uri: str = "data/milvus/m3ret.db"
    token: str = Field("", repr=False, exclude=True)
    alias: str = "m3ret_current"
    collection_prefix: str = "m3ret"
    index_type: Literal["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW"] = "HNSW"
    metric: Literal["IP", "COSINE", "L2"] = "IP"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    # 512, not 128: recall@10 0.956 -> 0.998 on Lite and 0.947 -> 0.999 on a server at 100k x 192, for 4-9% more
    # search latency (benchmarks/results/search/192d.md)
    hnsw_ef: int = 512
    ivf_nlist: int = 128
    ivf_nprobe: int = 16
    retain: int = 2
    insert_batch: int = 2000


# ------------------------------------------------------------------------------------------- evaluate
class EvaluateConfig(Section):
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
class DriftConfig(Section):
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
class ServeConfig(Section):
    """The retrieval service: upload limits (a request beyond them is refused with 413/400, never decoded)."""

    max_upload_mb: int = 512
    max_zip_members: int = 4096
    max_unzipped_mb: int = 2048
    max_zip_ratio: float = 100.0  # uncompressed / compressed beyond this is a zip bomb (DICOM compresses ~3-10x)
    max_k: int = 100
    thumbnail_size: int = 128
    # bearer tokens (hashes only): `m3ret-serving token create NAME`; every route but the health probes and the
    # page shell needs one, `/metrics` too unless `public_metrics`
    tokens_file: str = "data/serve/tokens.json"
    public_metrics: bool = False
    # load shedding: uploads in flight beyond this are answered 503 with Retry-After before they are read
    max_in_flight: int = Field(64, ge=1)
    max_batch_files: int = Field(16, ge=1)  # files in one POST /search (one ranked list each)
    # the encoder service's adaptive batching: frames per forward pass, and how long a request may wait for its
    # batch before the encoder refuses it (503 with Retry-After)
    encoder_max_batch_frames: int = Field(512, ge=1)
    encoder_max_latency_ms: int = Field(20_000, ge=1)
    # the encoder service's torch intra-op threads; 0 keeps torch's default (one per core). Fewer leave cores to
    # the retrieval worker's decoding and searching: more throughput under load, a slower single forward pass
    encoder_threads: int = Field(0, ge=0)
    # a hit's study link for `reidentify` tokens: {source} (DICOMweb base URL), {study_uid}, {series_uid}; default
    # the study's WADO-RS URL, e.g. OHIF: https://viewer.example.org/viewer?StudyInstanceUIDs={study_uid}
    viewer_url: str = "{source}/studies/{study_uid}"
