"""read_image: grey/RGB/palette/16-bit handling per format, first TIFF page, EXIF, limits, broken files."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from m3ret.config import LimitsConfig, ReadConfig
from m3ret.data.errors import InputTooLargeError, UnreadableInputError
from m3ret.data.image_reader import read_image
from m3ret.data.resize import letterbox

CFG = ReadConfig()
RNG = np.random.default_rng(0)


def _save(tmp_path: Path, image: Image.Image, name: str, **kwargs: object) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with_declared_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose IHDR claims width x height 8-bit grey: the pixel data is nowhere near that."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_8bit_grey_png_is_kept_as_is(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (12, 20), dtype=np.uint8)
    frames, meta = read_image(_save(tmp_path, Image.fromarray(pixels), "grey.png"), CFG)
    assert frames.shape == (1, 12, 20, 1) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[0, :, :, 0], pixels)
    assert meta["kind"] == "image" and meta["channels"] == 1 and meta["header"]["mode"] == "L"
    json.dumps(meta)


def test_16bit_png_is_scaled_by_percentiles(tmp_path: Path) -> None:
    pixels = np.linspace(1000, 41000, 200 * 10).astype(np.uint16).reshape(200, 10)
    path = _save(tmp_path, Image.fromarray(pixels), "wide.png")
    frames, meta = read_image(path, CFG)
    assert meta["header"]["mode"].startswith("I")
    low, high = np.percentile(pixels.astype(np.float32), CFG.windowing.percentiles)
    assert meta["header"]["window"] == pytest.approx([low, high])
    assert frames[0, 0, 0, 0] == 0 and frames[0, -1, -1, 0] == 255
    middle = pixels[100, 0]
    assert abs(int(frames[0, 100, 0, 0]) - (middle - low) / (high - low) * 255) <= 1
    assert np.all(np.diff(frames[0, :, 0, 0].astype(int)) >= 0)  # monotonic


def test_rgb_jpeg(tmp_path: Path) -> None:
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[..., 0], pixels[..., 2] = 200, 50
    frames, meta = read_image(_save(tmp_path, Image.fromarray(pixels), "photo.jpg", quality=95), CFG)
    assert frames.shape == (1, 16, 24, 3) and meta["header"]["format"] == "JPEG"
    assert np.abs(frames[0].astype(int) - pixels).max() <= 4


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    frames, _ = read_image(_save(tmp_path, Image.fromarray(pixels, "RGBA"), "rgba.png"), CFG)
    np.testing.assert_array_equal(frames[0], pixels[..., :3])


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png_becomes_rgb(tmp_path: Path, transparency: bool) -> None:
    image = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    kwargs = {"transparency": 1} if transparency else {}
    frames, meta = read_image(_save(tmp_path, image, "palette.png", **kwargs), CFG)
    assert meta["header"]["mode"] == "P" and frames.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(frames[0, 0], [[255, 0, 0], [0, 255, 0]])
    np.testing.assert_array_equal(frames[0, 1, 0], [0, 0, 255])


def test_bilevel_image_becomes_0_and_255(tmp_path: Path) -> None:
    image = Image.fromarray(np.eye(8, dtype=bool))
    frames, _ = read_image(_save(tmp_path, image, "mask.png"), CFG)
    assert set(np.unique(frames)) == {0, 255} and frames[0, 3, 3, 0] == 255


def test_multipage_tiff_gives_first_page(tmp_path: Path) -> None:
    pages = [Image.fromarray(np.full((6, 7), v, np.uint8)) for v in (30, 200)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    frames, meta = read_image(path, CFG)
    assert meta["header"]["n_pages"] == 2 and meta["header"]["format"] == "TIFF"
    assert frames.shape == (1, 6, 7, 1) and np.all(frames == 30)


def test_float_tiff_is_scaled(tmp_path: Path) -> None:
    values = np.linspace(-3.0, 5.0, 64, dtype=np.float32).reshape(8, 8)
    values[0, 0] = np.nan
    frames, meta = read_image(_save(tmp_path, Image.fromarray(values, "F"), "float.tif"), CFG)
    assert meta["header"]["mode"] == "F" and frames.shape == (1, 8, 8, 1)
    assert frames[0, -1, -1, 0] == 255 and frames[0, 0, 1, 0] == 0


def test_bmp(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (5, 9, 3), dtype=np.uint8)
    frames, meta = read_image(_save(tmp_path, Image.fromarray(pixels), "image.bmp"), CFG)
    np.testing.assert_array_equal(frames[0], pixels)
    assert meta["header"]["format"] == "BMP"


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.fromarray(np.zeros((4, 8, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    frames, meta = read_image(_save(tmp_path, image, "camera.jpg", exif=exif), CFG)
    assert frames.shape == (1, 8, 4, 3) and meta["height"] == 8


def test_truncated_png_is_unreadable(tmp_path: Path) -> None:
    path = _save(tmp_path, Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)), "noise.png")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnreadableInputError) as info:
        read_image(path, CFG)
    assert info.value.path == str(path)


def test_declared_huge_png_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputTooLargeError):
        read_image(_png_with_declared_size(tmp_path / "bomb.png", 100_000, 100_000), CFG)
    # under Pillow's own bomb guard, over our max_side: refused by the header check
    with pytest.raises(InputTooLargeError, match="max_side"):
        read_image(_png_with_declared_size(tmp_path / "long.png", 20_000, 10), CFG)
    with pytest.raises(InputTooLargeError, match="max_voxels"):
        tiny_limit = ReadConfig(limits=LimitsConfig(max_voxels=10))
        read_image(_png_with_declared_size(tmp_path / "wide.png", 1000, 1000), tiny_limit)


def test_not_an_image_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(UnreadableInputError):
        read_image(path, CFG)


def test_skimage_retina_png(tmp_path: Path) -> None:
    retina = skimage.data.retina()
    frames, meta = read_image(_save(tmp_path, Image.fromarray(retina), "retina.png", compress_level=1), CFG)
    assert frames.shape == (1, *retina.shape) and meta["channels"] == 3
    np.testing.assert_array_equal(frames[0], retina)


def test_jpeg_draft_decodes_a_large_jpeg_at_reduced_scale(tmp_path: Path) -> None:
    """`jpeg_draft_side` (default 256): libjpeg decodes at the smallest 1/2..1/8 scale that keeps both sides >= it;
    the frame preprocessing stores from it is the full decode's within a grey level. PNGs and small JPEGs are
    untouched."""
    retina = skimage.data.retina()  # 1411 x 1411 RGB
    path = _save(tmp_path, Image.fromarray(retina), "fundus.jpg", quality=92)
    full, full_meta = read_image(path, ReadConfig(jpeg_draft_side=0))
    draft, meta = read_image(path, CFG)
    assert draft.shape == (1, 353, 353, 3) and meta["height"] == meta["width"] == 353  # 1/4: 1411 // 256 = 5
    assert meta["header"]["shape"] == [1411, 1411] and meta["header"]["decoded_shape"] == [353, 353]
    assert "decoded_shape" not in full_meta["header"]
    stored_full, stored_draft = letterbox(full[0], 64), letterbox(draft[0], 64)
    assert np.abs(stored_full.astype(int) - stored_draft.astype(int)).mean() < 1.0

    small = _save(tmp_path, Image.fromarray(retina[:300, :300]), "small.jpg", quality=92)
    assert read_image(small, ReadConfig(jpeg_draft_side=256))[0].shape == (1, 300, 300, 3)  # 300 // 256 = 1
    png = _save(tmp_path, Image.fromarray(retina), "fundus.png", compress_level=1)
    np.testing.assert_array_equal(read_image(png, ReadConfig(jpeg_draft_side=256))[0][0], retina)
