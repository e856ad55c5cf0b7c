import numpy as np
import pytest
import torch

from m3ret.config import ModelConfig
from m3ret.models.encoder import PIXEL_MEAN, PIXEL_STD, Encoder, build_encoder

TINY = ModelConfig(name="vit_tiny_patch16_224", img_size=32, patch_size=8, pooling="mean")


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    return build_encoder(TINY).eval()


def test_tokens_and_pooling_shapes(encoder: Encoder) -> None:
    x = torch.randn(2, 3, 32, 32)
    tokens = encoder.forward_tokens(x)
    assert encoder.embed_dim == 192
    assert tokens.shape == (2, 1 + 16, 192)
    pooled = encoder(x)
    assert pooled.shape == (2, 192)
    torch.testing.assert_close(pooled, tokens[:, 1:].mean(dim=1))


def test_cls_pooling_takes_the_class_token() -> None:
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(name="vit_tiny_patch16_224", img_size=32, patch_size=8, pooling="cls")).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(enc(x), enc.forward_tokens(x)[:, 0])


def test_smaller_inputs_run_with_resampled_positions(encoder: Encoder) -> None:
    assert encoder.forward_tokens(torch.randn(3, 3, 16, 16)).shape == (3, 1 + 4, 192)


def test_final_norm_is_applied(encoder: Encoder) -> None:
    tokens = encoder.forward_tokens(torch.randn(2, 3, 32, 32))
    # LayerNorm output (before its affine part, which is the identity at init): zero mean, unit variance per token.
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, 17), atol=1e-4, rtol=0)
    torch.testing.assert_close(tokens.var(-1, unbiased=False), torch.ones(2, 17), atol=1e-3, rtol=0)


def test_normalise_uint8_and_float_agree(encoder: Encoder) -> None:
    u8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    a = encoder.normalise(u8)
    b = encoder.normalise(u8.float() / 255)
    torch.testing.assert_close(a, b)
    expected = (u8[:, 0].float() / 255 - PIXEL_MEAN[0]) / PIXEL_STD[0]
    torch.testing.assert_close(a[:, 0], expected)


def test_embed_returns_unit_rows_from_channels_last_uint8(encoder: Encoder) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
    encoder.train()
    emb = encoder.embed(frames, batch_size=2)
    assert encoder.training  # the training flag is restored
    encoder.eval()
    assert emb.shape == (5, 192) and emb.dtype == torch.float32 and emb.device.type == "cpu"
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5))
    # Batching does not change the result; a tensor input gives the same as numpy.
    torch.testing.assert_close(emb, encoder.embed(torch.from_numpy(frames)), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(emb[0], emb[1])


def test_embed_at_model_size_matches_forward(encoder: Encoder) -> None:
    frames = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    expected = torch.nn.functional.normalize(encoder(encoder.normalise(frames.permute(0, 3, 1, 2))), dim=-1)
    torch.testing.assert_close(encoder.embed(frames), expected, atol=1e-5, rtol=1e-4)


def test_embed_rejects_wrong_layout(encoder: Encoder) -> None:
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        encoder.embed(np.zeros((2, 3, 32, 32), dtype=np.uint8))
    assert encoder.embed(np.zeros((0, 32, 32, 3), dtype=np.uint8)).shape == (0, 192)


def test_img_size_must_be_a_multiple_of_patch_size() -> None:
    with pytest.raises(ValueError, match="multiple"):
        build_encoder(ModelConfig(img_size=30, patch_size=8))
