import pytest
import torch

from m3ret.config import AugmentConfig, MAEConfig, ModelConfig, PretrainConfig, SimDINOConfig
from m3ret.models.encoder import Encoder
from m3ret.models.mae import MAEObjective
from m3ret.models.objectives import OBJECTIVES, build_objective
from m3ret.models.simdino import SimDINOObjective

SIM = SimDINOConfig(n_local=2, local_size=16, head_hidden_dim=64, head_out_dim=32)
MAE = MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2)


def _cfg(objective: str, name: str = "vit_tiny_patch16_224", **kw: object) -> PretrainConfig:
    return PretrainConfig(
        objective=objective, model=ModelConfig(name=name, img_size=32, patch_size=8), mae=MAE, simdino=SIM, **kw
    )


def test_registry_and_unknown_name() -> None:
    assert {"mae": MAEObjective, "simdino": SimDINOObjective} == OBJECTIVES
    with pytest.raises(ValueError, match=r"'byol'.*\['mae', 'simdino'\]"):
        build_objective(_cfg("byol"))


@pytest.mark.parametrize("objective", ["mae", "simdino"])
@pytest.mark.parametrize(("name", "dim"), [("vit_tiny_patch16_224", 192), ("vit_small_patch16_224", 384)])
def test_forward_shapes(objective: str, name: str, dim: int) -> None:
    torch.manual_seed(0)
    obj = build_objective(_cfg(objective, name))
    assert isinstance(obj.encoder, Encoder) and obj.encoder.embed_dim == dim
    with torch.no_grad():
        loss, logs = obj(torch.rand(2, 3, 32, 32))
    assert loss.shape == () and torch.isfinite(loss)
    assert all(v.shape == () and torch.isfinite(v) for v in logs.values())
    assert obj.encoder.embed(torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)).shape == (2, dim)


def test_base_model_forward_shape() -> None:
    torch.manual_seed(0)
    obj = build_objective(_cfg("mae", "vit_base_patch16_224"))
    with torch.no_grad():
        loss, _ = obj(torch.rand(2, 3, 32, 32))
        assert obj.encoder(torch.randn(2, 3, 32, 32)).shape == (2, 768)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("objective", ["mae", "simdino"])
def test_training_lowers_the_loss(objective: str) -> None:
    torch.manual_seed(0)
    gentle = AugmentConfig(crop_scale=(0.8, 1.0), brightness=0.0, contrast=0.0, blur_prob=0.0)
    obj = build_objective(_cfg(objective, augment=gentle))
    # Two of ViT-Tiny's twelve blocks keep 20 optimiser steps quick on a CPU; the student is the encoder MAE trains
    # and the one SimDINO's teacher copies, so truncate both.
    for vit in {obj.encoder.vit, getattr(obj, "student", obj.encoder).vit}:
        vit.blocks = vit.blocks[:2]
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    losses = []
    for step in range(20):
        loss, _ = obj(images)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        obj.on_step_end(step / 20)
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05 * abs(sum(losses[:5]) / 5)
