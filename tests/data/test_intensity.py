"""Windowing and percentile helpers: the in-place slab-wise window equals the plain formula."""

import numpy as np
import pytest

from m3ret.data import intensity
from m3ret.data.intensity import percentile_range, percentile_values, strided_sample, window_to_uint8


def _reference_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The formula before the in-place version, with nan_to_num(nan=low, posinf=high, neginf=low) first."""
    values = np.nan_to_num(values.astype(np.float32), nan=low, posinf=high, neginf=low)
    scaled = (values - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0).round().astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint16, np.int32])
def test_window_equals_formula(dtype, monkeypatch):
    monkeypatch.setattr(intensity, "_CHUNK_VALUES", 1000)  # several slabs, the last one short
    rng = np.random.default_rng(0)
    values = rng.uniform(-1500, 3000, (13, 17, 19)).astype(dtype)
    for low, high in ((-160.0, 240.0), (0.0, 1000.0), (-1350.5, 150.25)):
        np.testing.assert_array_equal(window_to_uint8(values, low, high), _reference_window(values, low, high))
    view = values[:, ::-1, ::2]  # non-contiguous, negative strides
    np.testing.assert_array_equal(window_to_uint8(view, -160.0, 240.0), _reference_window(view, -160.0, 240.0))


def test_window_non_finite_and_degenerate():
    values = np.array([[np.nan, np.inf, -np.inf, 5.0]], dtype=np.float32)
    np.testing.assert_array_equal(window_to_uint8(values, 0.0, 10.0), [[0, 255, 0, 128]])
    assert window_to_uint8(np.full((2, 3), 7.0), 7.0, 7.0).tolist() == [[0] * 3] * 2  # high <= low: width 1
    assert window_to_uint8(np.zeros((0, 4)), 0.0, 1.0).shape == (0, 4)
    assert window_to_uint8(np.float32(0.5), 0.0, 1.0) == 128


def test_percentiles_one_strided_sample():
    rng = np.random.default_rng(1)
    volume = rng.normal(100.0, 20.0, (40, 64, 64)).astype(np.float32)
    assert strided_sample(volume, 1000).size <= 1000
    assert strided_sample(volume[:, ::-1], 1000).size <= 1000  # a view is gathered, not copied whole
    found = percentile_values(volume, (1.0, 99.0, 0.5, 99.5), sample=50_000)
    exact = np.percentile(volume, (1.0, 99.0, 0.5, 99.5))
    np.testing.assert_allclose(found, exact, atol=1.0)  # within 0.05 standard deviations
    volume[0, 0, :10] = np.nan
    assert np.isfinite(percentile_range(volume, (0.5, 99.5))).all()
    assert percentile_values(np.full(10, np.nan), (1.0, 99.0)) is None
    assert percentile_range(np.full(10, np.nan), (1.0, 99.0)) == (0.0, 1.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32])
def test_integer_percentiles_from_histogram_equal_numpy(dtype):
    rng = np.random.default_rng(2)
    qs = (1.0, 99.0, 0.5, 99.5, 0.0, 100.0, 50.0)
    for n in (1, 2, 7, 1000, 250_000):
        info = np.iinfo(dtype)
        values = rng.integers(max(info.min, -3000), min(info.max, 60000), n, endpoint=True).astype(dtype)
        reference = np.percentile(strided_sample(values).astype(np.float64), qs)
        np.testing.assert_allclose(percentile_values(values, qs), reference, rtol=1e-12, atol=1e-9)
    wide = np.array([-(2**30), 0, 5, 2**30], dtype=np.int32)  # too wide for a histogram: np.percentile
    np.testing.assert_allclose(percentile_values(wide, qs), np.percentile(wide.astype(np.float32), qs))
