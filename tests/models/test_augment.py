import pytest
import torch

from m3ret.config import AugmentConfig, replace
from m3ret.models.augment import BatchAugment

PLAIN = AugmentConfig(crop_scale=(1.0, 1.0), hflip=0.0, vflip=0.0, brightness=0.0, contrast=0.0, blur_prob=0.0)


def _images(b: int = 6, size: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_shape_and_range() -> None:
    aug = BatchAugment(AugmentConfig(blur_prob=0.5, vflip=0.5), out_size=16, scale=(0.1, 0.4))
    out = aug(_images())
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_same_seed_same_output_and_samples_differ() -> None:
    aug = BatchAugment(AugmentConfig(blur_prob=0.5), out_size=24)
    x = _images(1).expand(4, -1, -1, -1)
    a = aug(x, generator=torch.Generator().manual_seed(7))
    b = aug(x, generator=torch.Generator().manual_seed(7))
    c = aug(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Parameters are per sample: copies of one image come out different.
    assert not torch.allclose(a[0], a[1])


def test_full_crop_without_jitter_is_identity() -> None:
    x = _images()
    torch.testing.assert_close(BatchAugment(PLAIN, out_size=32)(x), x, atol=1e-5, rtol=0)


def test_flips() -> None:
    x = _images()
    hflip = BatchAugment(replace(PLAIN, hflip=1.0), out_size=32)(x)
    vflip = BatchAugment(replace(PLAIN, vflip=1.0), out_size=32)(x)
    torch.testing.assert_close(hflip, x.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(vflip, x.flip(-2), atol=1e-5, rtol=0)


def test_crop_covers_the_requested_area_and_aspect() -> None:
    # Channel 0 is a horizontal ramp, channel 1 a vertical one: the value span of a crop along each axis is the
    # crop's width / height as a fraction of the image side.
    ramp = torch.linspace(0, 1, 64)
    x = torch.stack([ramp.expand(64, 64), ramp[:, None].expand(64, 64), torch.zeros(64, 64)]).expand(32, -1, -1, -1)
    cfg = replace(PLAIN, crop_scale=(0.25, 0.25))
    out = BatchAugment(cfg, out_size=64)(x, generator=torch.Generator().manual_seed(0))
    span_w = out[:, 0].amax(dim=(1, 2)) - out[:, 0].amin(dim=(1, 2))
    span_h = out[:, 1].amax(dim=(1, 2)) - out[:, 1].amin(dim=(1, 2))
    torch.testing.assert_close(span_w * span_h, torch.full((32,), 0.25), atol=0.02, rtol=0)
    aspect = span_w / span_h
    assert aspect.min() >= 3 / 4 - 0.03 and aspect.max() <= 4 / 3 + 0.03
    assert aspect.max() - aspect.min() > 0.2  # aspect is drawn per sample


def test_blur_smooths_and_keeps_constants() -> None:
    cfg = replace(PLAIN, blur_prob=1.0)
    aug = BatchAugment(cfg, out_size=224)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert aug(x).std() < x.std()
    const = torch.full((2, 3, 224, 224), 0.3)
    torch.testing.assert_close(aug(const), const)


def test_jitter_changes_intensity_within_range() -> None:
    cfg = replace(PLAIN, brightness=0.5, contrast=0.5)
    x = torch.full((16, 3, 8, 8), 0.5)
    out = BatchAugment(cfg, out_size=8)(x)
    # A constant image keeps its contrast but its brightness varies within 0.5 * (1 +- 0.5).
    per_sample = out.mean(dim=(1, 2, 3))
    assert per_sample.std() > 0.01
    assert per_sample.min() >= 0.25 - 1e-6 and per_sample.max() <= 0.75 + 1e-6


def test_invalid_scale() -> None:
    with pytest.raises(ValueError, match="crop scale"):
        BatchAugment(AugmentConfig(), out_size=8, scale=(0.5, 0.2))
