import argparse
import re
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import Tensor, nn

from m3ret.config import ModelConfig, to_dict
from m3ret.models.backbone_init import BackboneInitError, load_backbone_weights
from m3ret.models.encoder import build_encoder
from m3ret.train.checkpoint import save_encoder

torch.set_num_threads(1)


def _vit(seed: int, name: str = "vit_tiny_patch16_224", img_size: int = 32, patch_size: int = 8) -> nn.Module:
    """A backbone built exactly as `Encoder.vit` is."""
    torch.manual_seed(seed)
    return timm.create_model(
        name, pretrained=False, num_classes=0, global_pool="", fc_norm=False, img_size=img_size,
        patch_size=patch_size, dynamic_img_size=True,
    ).eval()  # fmt: skip


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(model: nn.Module, expected: dict[str, Tensor]) -> None:
    got = model.state_dict()
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


@pytest.fixture(scope="module")
def source() -> nn.Module:
    return _vit(seed=0)


@pytest.fixture
def target() -> nn.Module:
    return _vit(seed=1)


def test_plain_state_dict_round_trip(tmp_path: Path, source: nn.Module, target: nn.Module) -> None:
    path = tmp_path / "weights.safetensors"  # a torch file under a misleading suffix: detected by content
    torch.save(source.state_dict(), path)
    assert not torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)

    report = load_backbone_weights(target, path)

    assert report == {"loaded": sorted(source.state_dict()), "ignored": []}
    _assert_same_weights(target, _state(source))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(target.forward_features(x), source.forward_features(x), rtol=0, atol=0)


def test_safetensors_with_a_classifier_head_ignored(tmp_path: Path, source: nn.Module, target: nn.Module) -> None:
    path = tmp_path / "model.bin"
    head = {"head.weight": torch.randn(10, 192), "head.bias": torch.randn(10), "fc_norm.weight": torch.ones(192)}
    save_file({**_state(source), **head}, str(path))

    report = load_backbone_weights(target, path)

    assert report["ignored"] == ["fc_norm.weight", "head.bias", "head.weight"]
    assert report["loaded"] == sorted(source.state_dict())
    _assert_same_weights(target, _state(source))


def _dino_v1(teacher: dict[str, Tensor], student: dict[str, Tensor], head: dict[str, Tensor]) -> dict:
    """DINO's checkpoint.pth: DDP student, plain teacher, each a backbone plus a prototype head, and its args."""
    ddp_student = {f"module.backbone.{k}": v for k, v in student.items()} | {f"module.{k}": v for k, v in head.items()}
    return {
        "student": ddp_student,
        "teacher": {f"backbone.{k}": v for k, v in teacher.items()} | head,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 7,
        "args": argparse.Namespace(arch="vit_tiny", patch_size=8, out_dim=65536),
    }


def _dino_v2(teacher: dict[str, Tensor], student: dict[str, Tensor], head: dict[str, Tensor]) -> dict:
    """DINOv2's training checkpoint: one flat `model` dict with `teacher.` and `student.` halves."""
    model = {f"student.backbone.{k}": v for k, v in student.items()}
    model |= {f"teacher.backbone.{k}": v for k, v in teacher.items()}
    model |= {f"teacher.dino_{k}": v for k, v in head.items()}
    return {"model": model, "iteration": 1000}


@pytest.mark.parametrize("layout", [_dino_v1, _dino_v2], ids=["dino", "dinov2"])
def test_dino_checkpoint_loads_the_teacher_backbone(
    tmp_path: Path, source: nn.Module, target: nn.Module, layout
) -> None:
    teacher = _state(source)
    student = _state(_vit(seed=2))
    head = {"head.mlp.0.weight": torch.randn(64, 192), "head.last_layer.weight_g": torch.ones(128, 1)}
    path = tmp_path / "checkpoint.pth"
    torch.save(layout(teacher, student, head), path)

    report = load_backbone_weights(target, path)

    expected_ignored = (
        ["dino_head.last_layer.weight_g", "dino_head.mlp.0.weight"] if layout is _dino_v2 else sorted(head)
    )
    assert report["ignored"] == expected_ignored
    _assert_same_weights(target, teacher)


def test_mae_checkpoint_ignores_the_decoder(tmp_path: Path, source: nn.Module, target: nn.Module) -> None:
    pretext = {
        "mask_token": torch.zeros(1, 1, 192),
        "decoder_embed.weight": torch.randn(128, 192),
        "decoder_pos_embed": torch.zeros(1, 17, 128),
        "decoder_blocks.0.norm1.weight": torch.ones(128),
        "decoder_pred.weight": torch.randn(192, 128),
    }
    path = tmp_path / "mae-pretrain.pth"
    torch.save({"model": _state(source) | pretext, "epoch": 799, "args": argparse.Namespace(mask_ratio=0.75)}, path)

    report = load_backbone_weights(target, path)

    assert report["ignored"] == sorted(pretext)
    _assert_same_weights(target, _state(source))


def test_m3ret_encoder_export(tmp_path: Path) -> None:
    cfg = ModelConfig(img_size=32, patch_size=8)
    torch.manual_seed(3)
    trained = build_encoder(cfg).eval()
    path = tmp_path / "encoder.pt"
    save_encoder(path, trained, to_dict(cfg), objective="simdino", step=12, images_seen=3072)
    torch.manual_seed(4)
    fresh = build_encoder(cfg).eval()

    report = load_backbone_weights(fresh.vit, path)

    assert report == {"loaded": sorted(trained.vit.state_dict()), "ignored": []}
    _assert_same_weights(fresh.vit, _state(trained.vit))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)


def test_other_img_size_resamples_position_embedding(tmp_path: Path, target: nn.Module) -> None:
    big = _vit(seed=5, img_size=64)  # grid 8x8: pos_embed [1, 1 + 64, 192]; the target has grid 4x4
    path = tmp_path / "big.pth"
    torch.save({"state_dict": big.state_dict()}, path)

    load_backbone_weights(target, path)

    assert target.pos_embed.shape == (1, 1 + 16, 192)
    expected = resample_abs_pos_embed(big.pos_embed.detach(), new_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(target.pos_embed.detach(), expected)
    torch.testing.assert_close(target.pos_embed[:, 0], big.pos_embed[:, 0], rtol=0, atol=0)  # class token's own
    torch.testing.assert_close(target.blocks[3].mlp.fc1.weight, big.blocks[3].mlp.fc1.weight, rtol=0, atol=0)
    # The big model run at 32 px resamples its positions on the fly the same way, so both give the same tokens.
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(target.forward_features(x), big.forward_features(x), rtol=1e-5, atol=1e-5)


def test_other_patch_size_resamples_patch_embedding(tmp_path: Path, target: nn.Module) -> None:
    coarse = _vit(seed=6, patch_size=16)  # kernel [192, 3, 16, 16], grid 2x2
    path = tmp_path / "p16.pth"
    torch.save(coarse.state_dict(), path)

    load_backbone_weights(target, path)

    w = coarse.patch_embed.proj.weight.detach()
    torch.testing.assert_close(target.patch_embed.proj.weight.detach(), resample_patch_embed(w, [8, 8]))
    pos = resample_abs_pos_embed(coarse.pos_embed.detach(), new_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(target.pos_embed.detach(), pos)
    with torch.inference_mode():
        tokens = target.forward_features(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 1 + 16, 192) and torch.isfinite(tokens).all()


def test_other_embed_dim_names_mismatched_keys_and_loads_nothing(tmp_path: Path, target: nn.Module) -> None:
    path = tmp_path / "vit_small.pth"
    torch.save(_vit(seed=7, name="vit_small_patch16_224").state_dict(), path)
    before = _state(target)

    with pytest.raises(BackboneInitError) as info:
        load_backbone_weights(target, path)

    message = str(info.value)
    assert str(path) in message and info.value.path == path
    n = len(before)  # every tensor of the tiny backbone has embed_dim in its shape
    assert f"{n} mismatched key(s)" in message and f"({n - 10} more)" in message
    assert "blocks.0.attn.qkv.bias (1152,) vs backbone (576,)" in message
    assert "missing" not in message and "unexpected" not in message
    _assert_same_weights(target, before)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path, source: nn.Module, target: nn.Module) -> None:
    state = _state(source)
    del state["norm.bias"], state["blocks.11.attn.proj.weight"]
    state["blocks.12.norm1.weight"] = torch.ones(192)  # a deeper model
    state["reg_token"] = torch.zeros(1, 4, 192)  # registers this backbone lacks: not a head, so not ignorable
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    before = _state(target)

    with pytest.raises(BackboneInitError, match="does not fit the backbone") as info:
        load_backbone_weights(target, path)

    message = str(info.value)
    assert "2 missing key(s): blocks.11.attn.proj.weight, norm.bias" in message
    assert "2 unexpected key(s): blocks.12.norm1.weight, reg_token" in message
    _assert_same_weights(target, before)


class _Arbitrary:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "refused it"),
        (b"\x00not a checkpoint at all" * 50, "refused it"),
        (b"\x05\x00\x00\x00\x00\x00\x00\x00{trunc", "unreadable safetensors file"),
        ("unsafe", "not an allowed global"),
        ("tensor", "holds a Tensor, not a state_dict"),
        ("no_tensors", re.escape("no tensors found; top-level keys: ['epoch', 'model']")),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes | str, reason: str, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.pt"
    if content == "unsafe":
        torch.save({"state_dict": {"norm.weight": torch.ones(192)}, "hook": _Arbitrary()}, path)
    elif content == "tensor":
        torch.save(torch.ones(3), path)
    elif content == "no_tensors":
        torch.save({"model": {"name": "vit_tiny"}, "epoch": 1}, path)
    else:
        path.write_bytes(content)

    with pytest.raises(BackboneInitError, match=reason) as info:
        load_backbone_weights(_vit(seed=0), path)

    assert isinstance(info.value, ValueError) and str(info.value).startswith(f"{path}: ")
    assert "this must never run" not in capsys.readouterr().out


def test_nonexistent_file(tmp_path: Path, target: nn.Module) -> None:
    with pytest.raises(BackboneInitError, match="no such file"):
        load_backbone_weights(target, tmp_path / "absent.safetensors")


def test_safetensors_file_without_the_package(tmp_path: Path, source: nn.Module, monkeypatch) -> None:
    path = tmp_path / "w.safetensors"
    save_file(_state(source), str(path))
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # an uninstalled package cannot be produced for real

    with pytest.raises(BackboneInitError, match="install safetensors"):
        load_backbone_weights(_vit(seed=1), path)
