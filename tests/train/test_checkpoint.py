import numpy as np
import pytest
import torch
from torch import nn

from m3ret.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    save_encoder,
)


def test_roundtrip_keeps_tensors_and_rng_states(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "step": 7, "rng": {"numpy": np.random.get_state()}}
    path = checkpoint_path(tmp_path, 7)
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert path.name == "ckpt-00000007.pt"
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["step"] == 7
    assert np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])


def test_failed_save_leaves_previous_file_intact_and_no_temp(tmp_path):
    path = tmp_path / "ckpt-00000001.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(1000)})
    before = path.read_bytes()
    # a lambda cannot be pickled: torch.save fails after it has started writing the archive
    with pytest.raises(Exception, match="pickle|lambda"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(1000), "bad": lambda: 0})
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_latest_and_prune_ignore_foreign_and_temp_files(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 40, 200):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    (tmp_path / ".ckpt-00000999.pt.abc.tmp").write_bytes(b"partial")
    (tmp_path / "encoder.pt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 200)
    prune_checkpoints(tmp_path, keep=2)
    assert list_checkpoints(tmp_path) == [checkpoint_path(tmp_path, 40), checkpoint_path(tmp_path, 200)]


def test_encoder_export(tmp_path):
    encoder = nn.Linear(3, 2)
    save_encoder(tmp_path / "encoder.pt", encoder, {"name": "vit"}, objective="mae", step=3)
    loaded = load_checkpoint(tmp_path / "encoder.pt")
    assert loaded["model"] == {"name": "vit"} and loaded["objective"] == "mae" and loaded["step"] == 3
    fresh = nn.Linear(3, 2)
    fresh.load_state_dict(loaded["state_dict"])
    assert torch.equal(fresh.weight, encoder.weight)
