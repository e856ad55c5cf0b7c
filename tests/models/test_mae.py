import pytest
import torch

from m3ret.config import AugmentConfig, MAEConfig, ModelConfig
from m3ret.models.encoder import build_encoder
from m3ret.models.mae import MAEObjective, masked_mse, patchify, pixel_targets, random_masking

TINY = ModelConfig(name="vit_tiny_patch16_224", img_size=32, patch_size=8)
MAE = MAEConfig(mask_ratio=0.75, decoder_dim=32, decoder_depth=1, decoder_heads=2)


@pytest.fixture(scope="module")
def mae() -> MAEObjective:
    torch.manual_seed(0)
    return MAEObjective(build_encoder(TINY), MAE, AugmentConfig())


def test_random_masking_respects_ratio_per_sample() -> None:
    torch.manual_seed(0)
    keep, mask = random_masking(8, 64, 0.75, torch.device("cpu"))
    assert keep.shape == (8, 16) and mask.shape == (8, 64)
    assert torch.equal(mask.sum(dim=1), torch.full((8,), 48.0))
    # The kept indices are exactly the unmasked positions, and samples get different masks.
    assert torch.equal(mask.gather(1, keep), torch.zeros(8, 16))
    assert len({tuple(row.tolist()) for row in mask}) == 8


def test_patchify_is_row_major() -> None:
    # Patch (r, c) of a 4x4 grid filled with its index r * 4 + c.
    idx = torch.arange(16, dtype=torch.float32).view(4, 4)
    img = idx.repeat_interleave(8, 0).repeat_interleave(8, 1).expand(1, 3, 32, 32)
    patches = patchify(img, 8)
    assert patches.shape == (1, 16, 8 * 8 * 3)
    torch.testing.assert_close(patches[0], torch.arange(16.0)[:, None].expand(16, 192))


def test_norm_pix_targets_have_zero_mean_unit_variance() -> None:
    x = torch.rand(2, 3, 32, 32) * 3 + 1
    t = pixel_targets(x, 8, norm_pix=True)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(2, 16), atol=1e-3, rtol=0)
    torch.testing.assert_close(pixel_targets(x, 8, norm_pix=False), patchify(x, 8))


def test_masked_mse_counts_masked_patches_only() -> None:
    pred, target = torch.randn(3, 16, 12), torch.randn(3, 16, 12)
    mask = (torch.rand(3, 16) < 0.5).float()
    mask[:, 0] = 1.0
    m = mask.bool()
    expected = ((pred[m] - target[m]) ** 2).mean()
    torch.testing.assert_close(masked_mse(pred, target, mask), expected)
    # Changing visible patches' predictions changes nothing.
    pred2 = torch.where(m[..., None], pred, pred + 5.0)
    torch.testing.assert_close(masked_mse(pred2, target, mask), expected)


def test_forward_loss_equals_recomputation(mae: MAEObjective) -> None:
    images = torch.rand(4, 3, 32, 32)
    torch.manual_seed(3)
    loss, logs = mae(images)
    torch.manual_seed(3)
    x = mae.encoder.normalise(mae.augment(images))
    pred, mask = mae.predict(x)
    target = pixel_targets(x, 8, norm_pix=True)
    m = mask.bool()
    torch.testing.assert_close(loss, ((pred[m] - target[m]) ** 2).mean())
    assert pred.shape == (4, 16, 192) and logs["mask_ratio"].item() == 0.75
    torch.testing.assert_close(logs["loss"], loss.detach())


def test_encoder_sees_only_visible_patches(mae: MAEObjective) -> None:
    mae.eval()
    x = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([[0, 5, 10, 15], [3, 2, 1, 0]])
    encoded = mae.encode_visible(x, keep)
    assert encoded.shape == (2, 1 + 4, 192)
    # Overwrite every pixel of patch (row 2, col 2) = index 10, masked in sample 1 only.
    y = x.clone()
    y[:, :, 16:24, 16:24] = 9.0
    again = mae.encode_visible(y, keep)
    torch.testing.assert_close(again[1], encoded[1])
    assert not torch.allclose(again[0], encoded[0])
    mae.train()


def test_gradients_reach_encoder_and_decoder(mae: MAEObjective) -> None:
    mae.zero_grad()
    loss, _ = mae(torch.rand(2, 3, 32, 32))
    loss.backward()
    vit = mae.encoder.vit
    for p in [vit.patch_embed.proj.weight, vit.pos_embed, vit.cls_token, vit.blocks[0].attn.qkv.weight, mae.mask_token]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert not mae.decoder_pos_embed.requires_grad


def test_invalid_mask_ratio() -> None:
    with pytest.raises(ValueError, match="mask_ratio"):
        MAEObjective(build_encoder(TINY), MAEConfig(mask_ratio=1.0), AugmentConfig())
