"""read_video: uniform and fps sampling checked by frame brightness, timestamps, containers, broken clips, limits."""

from __future__ import annotations

import json
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from m3ret.config import LimitsConfig, ReadConfig, VideoSamplingConfig
from m3ret.data.errors import InputTooLargeError, UnreadableInputError
from m3ret.data.video_reader import read_video

N_FRAMES, WIDTH, HEIGHT, FPS = 32, 64, 48, 8


def _brightness(k: int) -> int:
    """Frame k is uniformly this grey, 7 levels apart, so a decoded frame tells its own index."""
    return 8 + 7 * k


def _write_clip(path: Path, codec: str = "libx264", n_frames: int = N_FRAMES) -> Path:
    writer = imageio_ffmpeg.write_frames(str(path), (WIDTH, HEIGHT), fps=FPS, codec=codec, pix_fmt_in="gray")
    writer.send(None)
    for k in range(n_frames):
        writer.send(np.full((HEIGHT, WIDTH), _brightness(k), np.uint8).tobytes())
    writer.close()
    return path


def _decoded_indices(frames: np.ndarray) -> list[int]:
    return [round((m - 8) / 7) for m in frames.reshape(len(frames), -1).mean(axis=1)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_clip(tmp_path_factory.mktemp("video") / "clip.mp4")


def _cfg(**video: object) -> ReadConfig:
    return ReadConfig(video=VideoSamplingConfig(**video))


def test_uniform_takes_segment_centres(clip: Path) -> None:
    frames, meta = read_video(clip, _cfg(mode="uniform", num_frames=8))
    assert frames.shape == (8, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    expected = [2, 6, 10, 14, 18, 22, 26, 30]  # centres of 8 segments of 4 frames
    assert _decoded_indices(frames) == expected
    assert meta["timestamps"] == pytest.approx([k / FPS for k in expected])
    assert meta["fps"] == pytest.approx(FPS) and meta["duration"] == pytest.approx(N_FRAMES / FPS)
    assert meta["n_source_frames"] == N_FRAMES and meta["kind"] == "video" and meta["channels"] == 3
    assert meta["header"]["container"].startswith("mp4:")
    json.dumps(meta)


def test_uniform_on_a_short_clip_takes_every_frame(clip: Path) -> None:
    frames, meta = read_video(clip, _cfg(mode="uniform", num_frames=100))
    assert _decoded_indices(frames) == list(range(N_FRAMES))
    assert meta["n_frames"] == N_FRAMES


def test_fps_mode_samples_by_time(clip: Path) -> None:
    frames, meta = read_video(clip, _cfg(mode="fps", fps=2.0, max_frames=64))
    assert _decoded_indices(frames) == list(range(0, N_FRAMES, 4))
    assert meta["timestamps"] == pytest.approx([0.5 * i for i in range(8)])


def test_fps_mode_is_capped_at_max_frames(clip: Path) -> None:
    frames, meta = read_video(clip, _cfg(mode="fps", fps=1.0, max_frames=3))
    assert _decoded_indices(frames) == [0, 8, 16]
    assert meta["timestamps"] == pytest.approx([0.0, 1.0, 2.0])


def test_avi_clip(tmp_path: Path) -> None:
    path = _write_clip(tmp_path / "clip.avi", codec="mjpeg")
    frames, meta = read_video(path, _cfg(mode="uniform", num_frames=4))
    assert _decoded_indices(frames) == [4, 12, 20, 28]
    assert meta["header"]["container"] == "avi"


def test_garbage_after_ftyp_is_unreadable(clip: Path, tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(clip.read_bytes()[:12] + bytes(range(256)) * 8)
    with pytest.raises(UnreadableInputError) as info:
        read_video(path, ReadConfig())
    assert info.value.path == str(path)


def test_zero_frame_video_is_unreadable(tmp_path: Path) -> None:
    path = _write_clip(tmp_path / "empty.mp4", n_frames=0)
    with pytest.raises(UnreadableInputError):
        read_video(path, ReadConfig())


def test_limits_refuse_before_decoding_everything(clip: Path) -> None:
    small = ReadConfig(video=VideoSamplingConfig(num_frames=16), limits=LimitsConfig(max_voxels=10 * HEIGHT * WIDTH))
    with pytest.raises(InputTooLargeError, match="max_voxels"):
        read_video(clip, small)
    with pytest.raises(InputTooLargeError, match="max_side"):
        read_video(clip, ReadConfig(limits=LimitsConfig(max_side=32)))
    with pytest.raises(InputTooLargeError, match="max_frames"):
        read_video(clip, ReadConfig(limits=LimitsConfig(max_frames=4)))
