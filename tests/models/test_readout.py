"""The retrieval readout: pooling parts, PCA whitening, and its round trip through the encoder file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m3ret.config import ModelConfig, ReadoutConfig, to_dict
from m3ret.models.encoder import build_encoder, load_encoder
from m3ret.models.readout import Readout, fit_and_project, fit_whitening, pooling_parts, whiten_on
from m3ret.train.checkpoint import save_encoder


def _tokens(batch: int = 3, side: int = 4, dim: int = 2) -> torch.Tensor:
    """[B, 1 + side^2, dim]: a class token of 100s, patch (r, c) holding (r, c) in channels 0 and 1."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    patches = torch.stack([rows.flatten(), cols.flatten()], -1).float()[None].repeat(batch, 1, 1)
    return torch.cat([torch.full((batch, 1, dim), 100.0), patches], 1)


def test_grid_pooling_keeps_the_layout_and_mean_discards_it():
    readout = Readout("grid", 2, embed_dim=2, num_prefix_tokens=1, has_class_token=True)
    pooled = readout.pool(_tokens())
    assert pooled.shape == (3, 8) and readout.pooled_dim == 8
    # channel-major: channel 0 (row index) over the 2x2 cells, then channel 1 (column index)
    cells = torch.tensor([0.5, 0.5, 2.5, 2.5, 0.5, 2.5, 0.5, 2.5])
    torch.testing.assert_close(pooled[0], cells / cells.norm())
    mean = Readout("mean", 2, 2, 1, True).pool(_tokens())
    torch.testing.assert_close(mean[0], torch.tensor([1.0, 1.0]) / 2**0.5)


def test_concatenated_parts_weigh_the_same():
    readout = Readout("cls+mean+grid", 2, embed_dim=2, num_prefix_tokens=1, has_class_token=True)
    pooled = readout.pool(_tokens())
    assert pooled.shape == (3, 2 + 2 + 8)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3))
    # each part has norm 1/sqrt(3) whatever its length
    for part in (pooled[:, :2], pooled[:, 2:4], pooled[:, 4:]):
        torch.testing.assert_close(part.norm(dim=-1), torch.full((3,), 3**-0.5))


def test_bad_pooling_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['max'\]; valid: \['cls', 'grid', 'mean'\]"):
        pooling_parts("mean+max")
    with pytest.raises(ValueError, match="no class token"):
        Readout("cls", 2, 4, 0, has_class_token=False)


def test_whitening_decorrelates_and_equalises_the_fitted_vectors():
    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=gen) * torch.tensor([10.0, 5, 2, 1, 0.5, 0.1])
    x = torch.randn(4000, 6, generator=gen) @ mixing + 3.0
    mean, proj = fit_whitening(x, shrinkage=0.0)
    y = (x - mean) @ proj
    torch.testing.assert_close(torch.cov(y.T), torch.eye(6), atol=1e-3, rtol=0)
    # keeping 3 components keeps the 3 largest directions
    _, proj3 = fit_whitening(x, dim=3, shrinkage=0.0)
    assert proj3.shape == (6, 3)
    torch.testing.assert_close(torch.cov(((x - mean) @ proj3).T), torch.eye(3), atol=1e-3, rtol=0)
    # shrinkage damps the weakest direction (variance < 1 after whitening)
    _, shrunk = fit_whitening(x, shrinkage=0.5)
    assert torch.cov(((x - mean) @ shrunk).T).diagonal()[-1] < 0.1
    with pytest.raises(ValueError, match="at least 2 vectors"):
        fit_whitening(x[:1])


def test_fit_uses_only_the_fit_rows():
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    rows = torch.zeros(20, dtype=torch.bool)
    rows[:10] = True
    readout = Readout("mean", 2, 4, 0, False)
    out = fit_and_project(readout, ReadoutConfig(whiten_shrinkage=0.0), x, rows)
    torch.testing.assert_close(readout.whiten_mean, x[:10].mean(0))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(20))
    torch.testing.assert_close(whiten_on(x, rows, ReadoutConfig(whiten_shrinkage=0.0)), out)
    unfitted = Readout("mean", 2, 4, 0, False)
    torch.testing.assert_close(
        fit_and_project(unfitted, ReadoutConfig(whiten=False), x, None), x / x.norm(dim=-1, keepdim=True)
    )
    assert not unfitted.whitened


def test_a_fitted_readout_travels_in_the_encoder_file(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(name="vit_tiny_patch16_224", img_size=32, patch_size=8))
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    readout = encoder.set_readout("mean+grid", 2)
    readout.fit(encoder.pooled(frames), dim=16, shrinkage=0.1)
    expected = encoder.embed(frames)
    assert expected.shape == (12, 16)
    save_encoder(tmp_path / "retrieval.pt", encoder, to_dict(encoder.cfg), readout=readout.state())
    loaded = load_encoder(tmp_path / "retrieval.pt")
    assert loaded.readout.pooling == "mean+grid" and loaded.readout.dim == 16
    torch.testing.assert_close(loaded.embed(frames), expected)
    # a file without a readout (as pretraining writes it) embeds with the training pooling, unwhitened
    save_encoder(tmp_path / "encoder.pt", encoder, to_dict(encoder.cfg))
    plain = load_encoder(tmp_path / "encoder.pt")
    assert plain.readout.pooling == "mean" and not plain.readout.whitened and plain.embed(frames).shape == (12, 192)
