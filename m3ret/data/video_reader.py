"""Video clips (mp4/mov, AVI, Matroska/WebM) to sampled uint8 RGB frames, decoded by decord.

Two sampling modes (`read.video.mode`):

- `uniform`: the clip is cut into `num_frames` equal segments and the frame at the centre of each is taken
  (TSN-style sampling; every frame once when the clip is shorter).
- `fps`: one frame every `1 / fps` seconds from the start, at most `max_frames`; each sample time takes the
  last frame that started at or before it, so variable-frame-rate clips are sampled by time, not by index.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (load order, see below)

# isort: split
# decord2 dlopens every CUDA library of the nvidia-* wheels with RTLD_GLOBAL, libnvblas included. Loaded before torch,
# that nvblas takes over torch's BLAS calls and crashes them on a machine without a GPU; after torch it is inert.
import decord

from m3ret.config import ReadConfig, VideoSamplingConfig
from m3ret.data.errors import InputTooLargeError, UnreadableInputError

_DECORD_ERRORS = (decord.DECORDError, RuntimeError, AssertionError, IndexError, ValueError)


def read_video(path: Path, cfg: ReadConfig) -> tuple[np.ndarray, dict]:
    """Decode the sampled frames of a video: uint8 RGB `[T, H, W, 3]` and its meta dict.

    meta adds `timestamps` (seconds from the first frame, one per returned frame), `fps` (container average),
    `duration` (seconds) and `n_source_frames`. A clip with no decodable frame raises UnreadableInputError;
    one whose sampled frames would exceed `cfg.limits` raises InputTooLargeError after only the first sampled
    frame is decoded (decord exposes the frame size no other way).
    """
    path = Path(path)
    limits = cfg.limits
    if path.stat().st_size > limits.max_file_mb * 2**20:
        raise InputTooLargeError(path, f"file is {path.stat().st_size / 2**20:.0f} MB > {limits.max_file_mb} MB")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        n_source = len(reader)
        # (n, 2) start/end seconds of every frame, from the demuxer's index: nothing is decoded
        pts = np.asarray(reader.get_frame_timestamp(np.arange(n_source)), dtype=np.float64).reshape(-1, 2)
        avg_fps = float(reader.get_avg_fps())
    except _DECORD_ERRORS as err:
        raise UnreadableInputError(path, f"decord cannot open the video: {err}") from err
    if n_source == 0:
        raise UnreadableInputError(path, "video has no frames")

    starts = pts[:, 0] - pts[0, 0]
    duration = float(pts[-1, 1] - pts[0, 0])
    if not duration > 0:
        duration = n_source / avg_fps if avg_fps > 0 else 0.0
    indices = _sample_indices(starts, duration, cfg.video)
    if len(indices) > limits.max_frames:
        raise InputTooLargeError(path, f"{len(indices)} sampled frames > max_frames {limits.max_frames}")

    try:
        first = reader.get_batch(indices[:1].tolist()).asnumpy()
        height, width = int(first.shape[1]), int(first.shape[2])
        if max(height, width) > limits.max_side:
            raise InputTooLargeError(path, f"frames are {height}x{width} > max_side {limits.max_side}")
        if len(indices) * height * width > limits.max_voxels:
            raise InputTooLargeError(
                path, f"{len(indices)} frames of {height}x{width} > max_voxels {limits.max_voxels}"
            )
        frames = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        frames[:1] = first
        if len(indices) > 1:
            frames[1:] = reader.get_batch(indices[1:].tolist()).asnumpy()
    except _DECORD_ERRORS as err:
        raise UnreadableInputError(path, f"frames cannot be decoded: {err}") from err

    meta = {
        "kind": "video",
        "modality": "",
        "body_part": "",
        "spacing": None,
        "n_frames": int(frames.shape[0]),
        "height": height,
        "width": width,
        "channels": 3,
        "timestamps": [float(t) for t in starts[indices]],
        "fps": avg_fps,
        "duration": duration,
        "n_source_frames": int(n_source),
        "header": {"container": _container(path), "fps": avg_fps, "n_source_frames": int(n_source)},
        "ids": {"patient": "", "study": "", "series": ""},
    }
    return frames, meta


def _sample_indices(starts: np.ndarray, duration: float, video: VideoSamplingConfig) -> np.ndarray:
    """Source frame indices to decode, increasing and unique.

    `starts`: (n,) start time in seconds of each source frame, relative to the first.
    """
    n = len(starts)
    if video.mode == "uniform":
        if video.num_frames < 1:
            raise ValueError(f"read.video.num_frames must be >= 1, got {video.num_frames}")
        count = min(video.num_frames, n)
        # centre of each of `count` equal segments of [0, n)
        return np.floor((np.arange(count) + 0.5) * n / count).astype(np.int64)
    if video.mode == "fps":
        if not video.fps > 0 or video.max_frames < 1:
            raise ValueError(f"read.video.fps must be > 0 and max_frames >= 1, got {video.fps}, {video.max_frames}")
        n_samples = min(video.max_frames, max(1, math.ceil(duration * video.fps - 1e-9)))
        times = np.arange(n_samples) / video.fps
        indices = np.searchsorted(starts, times + 1e-6, side="right") - 1
        return np.unique(np.clip(indices, 0, n - 1))
    raise ValueError(f"read.video.mode={video.mode!r}; valid: ['fps', 'uniform']")


def _container(path: Path) -> str:
    """The container named by its magic bytes, with the ISO BMFF major brand (e.g. 'mp4:isom', 'mp4:qt  ')."""
    with path.open("rb") as fh:
        head = fh.read(12)
    if head[4:8] == b"ftyp":
        return "mp4:" + head[8:12].decode("latin-1")
    if head[:4] == b"RIFF":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    return "unknown"
