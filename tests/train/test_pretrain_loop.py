import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from m3ret.config import ConfigError, ModelConfig, PretrainConfig, replace
from m3ret.data.frame_store import FRAME_COLUMNS, FrameStore, ShardWriter, write_frames_table
from m3ret.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from m3ret.train.learning_curve import LEARNING_CURVE_PNG
from m3ret.train.pretrain_loop import StepBatchSampler, pretrain, select_frames

SIZE = 32
FRAMES_PER_ITEM = 4
SPLITS = ["pretrain"] * 4 + ["gallery", "query"]  # items 0..5; 20 trainable frames, 4 query frames


def make_data(root):
    """A 24-frame store (6 items x 4 frames, two shards) and its splits file."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(len(SPLITS) * FRAMES_PER_ITEM, SIZE, SIZE, 3), dtype=np.uint8)
    writer = ShardWriter(root / "frames", size=SIZE, shard_frames=16)
    locations = writer.append(frames)
    writer.close()
    items = [f"item{i}" for i in range(len(SPLITS)) for _ in range(FRAMES_PER_ITEM)]
    table = pd.DataFrame(
        {
            "frame_id": np.arange(len(frames)),
            "item_id": items,
            "plane": "axial",
            "volume_index": 0,
            "frame_index": np.tile(np.arange(FRAMES_PER_ITEM), len(SPLITS)),
            "timestamp": 0.0,
            "shard": [s for s, _ in locations],
            "row": [r for _, r in locations],
        }
    )[list(FRAME_COLUMNS)]
    write_frames_table(root / "frames", table, SIZE)
    pd.DataFrame({"item_id": [f"item{i}" for i in range(len(SPLITS))], "split": SPLITS}).to_parquet(
        root / "splits.parquet"
    )
    return root / "frames", root / "splits.parquet"


def tiny_cfg(tmp_path, name, **overrides):
    base = PretrainConfig(
        objective="mae",
        model=ModelConfig(name="vit_tiny_patch16_224", img_size=SIZE, patch_size=8),
        epochs=2.0,  # 20 frames / batch 4 = 5 steps per epoch -> 10 steps
        batch_size=4,
        workers=0,
        checkpoint_every=3,
        log_every=2,
        out=str(tmp_path / name / "model"),
        metrics_dir=str(tmp_path / name / "metrics"),
    )
    return replace(base, **overrides)


@pytest.fixture(autouse=True)
def one_thread():
    # tests share 2 cores with other jobs: one intra-op thread avoids OpenMP threads spinning against each other
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data(tmp_path, monkeypatch):
    # the run writes relative paths (metrics, checkpoints) only under tmp_path
    monkeypatch.chdir(tmp_path)
    return make_data(tmp_path)


def read_series(metrics_dir, name):
    return pd.read_csv(f"{metrics_dir}/plots/metrics/{name}.tsv", sep="\t")


def test_query_frames_are_never_sampled(data):
    frames_dir, splits_path = data
    store = FrameStore(frames_dir)
    chosen = select_frames(store, splits_path, ("pretrain", "gallery"))
    assert sorted(set(store.table["item_id"].iloc[chosen])) == [f"item{i}" for i in range(5)]
    for rank in (0, 1):
        sampler = StepBatchSampler(len(chosen), 4, rank, 2, seed=0, start=0, stop=12)
        seen = np.concatenate([chosen[b] for b in sampler])
        assert not store.table["item_id"].iloc[seen].eq("item5").any()
    with pytest.raises(ConfigError, match="query"):
        select_frames(store, splits_path, ("pretrain", "query"))


def test_sampler_covers_each_epoch_once_and_resumes_mid_epoch():
    full = list(StepBatchSampler(20, 4, 0, 1, seed=3, start=0, stop=10))
    assert len(full) == 10 and all(len(b) == 4 for b in full)
    assert sorted(sum(full[:5], [])) == list(range(20)) and sorted(sum(full[5:], [])) == list(range(20))
    assert full[:5] != full[5:]  # reshuffled per epoch
    assert list(StepBatchSampler(20, 4, 0, 1, seed=3, start=7, stop=10)) == full[7:]


def test_resume_matches_an_uninterrupted_run(data, tmp_path):
    frames_dir, splits_path = data
    calls = []

    def evaluate(encoder):
        # draws random numbers and runs the encoder: neither may change the training trajectory
        emb = encoder.embed(torch.randint(0, 256, (3, SIZE, SIZE, 3), dtype=torch.uint8).numpy())
        calls.append(emb)
        return {"mAP@10": float(len(calls)), "norm": float(emb.norm(dim=1).mean())}

    straight_cfg = tiny_cfg(tmp_path, "straight")
    straight = pretrain(straight_cfg, frames_dir, splits_path, evaluate=evaluate, eval_every=2, max_steps=7)

    # evaluated before the first step, at steps 2, 4, 6 and at the end (7), on L2-normalised embeddings, logged
    # against images_seen
    assert len(calls) == 5 and all(e.shape == (3, 192) for e in calls)
    assert straight["mAP@10"] == 5.0 and straight["norm"] == pytest.approx(1.0)
    assert straight["steps"] == 7 and straight["images_seen"] == 28 and np.isfinite(straight["loss"])
    evals = read_series(straight_cfg.metrics_dir, "eval/mAP@10")
    assert evals["step"].tolist() == [0, 2, 4, 6, 7] and evals["mAP@10"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert evals["images_seen"].tolist() == [0, 8, 16, 24, 28]
    assert read_series(straight_cfg.metrics_dir, "train/loss")["step"].tolist() == [2, 4, 6, 7]
    assert read_series(straight_cfg.metrics_dir, "train/lr")["step"].tolist() == [2, 4, 6, 7]

    # the same 7 steps in two runs (the first checkpoints at 3 and stops at 4), DataLoader workers on
    resumed_cfg = tiny_cfg(tmp_path, "resumed", workers=1)
    first = pretrain(resumed_cfg, frames_dir, splits_path, max_steps=4)
    assert first["steps"] == 4
    assert [p.name for p in list_checkpoints(resumed_cfg.out)] == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    second = pretrain(resumed_cfg, frames_dir, splits_path, max_steps=7)
    assert second["steps"] == 7 and second["images_seen"] == 28

    a = load_checkpoint(latest_checkpoint(straight_cfg.out))
    b = load_checkpoint(latest_checkpoint(resumed_cfg.out))
    assert a["step"] == b["step"] == 7 and a["total_steps"] == b["total_steps"] == 10
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
    if not torch.cuda.is_available():  # CUDA backward kernels (scatter-add) are not bit-reproducible; the CPU's are
        for name, tensor in a["model"].items():
            assert torch.equal(tensor, b["model"][name]), name
        for key, value in a["optimizer"]["state"].items():
            assert torch.equal(value["exp_avg_sq"], b["optimizer"]["state"][key]["exp_avg_sq"])
        assert second["loss"] == pytest.approx(straight["loss"])
    # the resumed metrics series continue where the checkpoint left off: one row per logged step
    assert read_series(resumed_cfg.metrics_dir, "train/loss")["step"].tolist() == [2, 4, 6, 7]

    encoder = load_checkpoint(tmp_path / "resumed" / "model" / "encoder.pt")
    assert encoder["model"]["img_size"] == SIZE and encoder["step"] == 7
    assert torch.equal(encoder["state_dict"]["vit.pos_embed"], a["model"]["encoder.vit.pos_embed"])


def test_finished_run_is_a_no_op(data, tmp_path):
    frames_dir, splits_path = data
    cfg = tiny_cfg(tmp_path, "run", epochs=0.4)  # 2 steps
    done = pretrain(cfg, frames_dir, splits_path)
    assert done["steps"] == 2
    again = pretrain(replace(cfg, log_every=1), frames_dir, splits_path)
    assert again["steps"] == 2 and again["loss"] == done["loss"]
    assert [p.name for p in list_checkpoints(cfg.out)] == ["ckpt-00000002.pt"]


def test_simdino_trains(data, tmp_path):
    frames_dir, splits_path = data
    cfg = tiny_cfg(tmp_path, "simdino", objective="simdino", epochs=0.4)
    cfg = replace(cfg, simdino=replace(cfg.simdino, local_size=16, n_local=1))
    result = pretrain(cfg, frames_dir, splits_path)
    assert result["steps"] == 2 and np.isfinite(result["loss"])
    assert (tmp_path / "simdino" / "model" / "encoder.pt").exists()


def test_checkpoints_of_another_run_are_not_resumed(data, tmp_path):
    frames_dir, splits = data
    cfg = tiny_cfg(tmp_path, "rerun")
    pretrain(cfg, frames_dir, splits, max_steps=4)
    assert load_checkpoint(latest_checkpoint(cfg.out))["step"] == 4
    # new settings (as when `dvc repro` reruns the stage after a params change): a fresh run, old checkpoints gone
    changed = replace(cfg, seed=1)
    pretrain(changed, frames_dir, splits, max_steps=2)
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(cfg.out)] == [2]
    # other training data (a gallery item moved to query) is another run too
    table = pd.read_parquet(splits)
    table.loc[table.split == "gallery", "split"] = "query"
    table.to_parquet(splits)
    pretrain(changed, frames_dir, splits, max_steps=1)
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(cfg.out)] == [1]


def test_init_starts_from_a_users_checkpoint_and_epochs_0_exports_it(data, tmp_path):
    from m3ret.models.backbone_init import BackboneInitError
    from m3ret.models.encoder import build_encoder, load_encoder

    frames_dir, splits_path = data
    torch.manual_seed(123)
    theirs = build_encoder(ModelConfig(name="vit_tiny_patch16_224", img_size=64, patch_size=8))  # another grid
    torch.save({"model": {f"module.backbone.{k}": v for k, v in theirs.vit.state_dict().items()}}, tmp_path / "u.pth")
    as_is = tiny_cfg(tmp_path, "as_is", objective="simdino", init=str(tmp_path / "u.pth"), epochs=0.0)
    pretrain(as_is, frames_dir, splits_path)
    exported = load_encoder(f"{as_is.out}/encoder.pt")
    torch.testing.assert_close(exported.vit.blocks[3].mlp.fc1.weight, theirs.vit.blocks[3].mlp.fc1.weight)
    assert exported.vit.pos_embed.shape[1] == 1 + (SIZE // 8) ** 2  # resampled to this model's grid

    trained = tiny_cfg(tmp_path, "trained", objective="simdino", init=str(tmp_path / "u.pth"), epochs=1.0)
    pretrain(trained, frames_dir, splits_path)
    after = load_encoder(f"{trained.out}/encoder.pt")
    moved = (after.vit.blocks[3].mlp.fc1.weight - theirs.vit.blocks[3].mlp.fc1.weight).abs().max()
    assert 0 < moved < 0.05  # continued from their weights, not from a fresh random init

    torch.save({"blocks.0.norm1.weight": torch.ones(192)}, tmp_path / "partial.pt")
    with pytest.raises(BackboneInitError, match="missing"):
        pretrain(tiny_cfg(tmp_path, "bad", init=str(tmp_path / "partial.pt")), frames_dir, splits_path)


def test_eval_every_epochs_gives_one_point_per_epoch(data, tmp_path):
    frames_dir, splits_path = data
    cfg = tiny_cfg(tmp_path, "per_epoch", epochs=3.0, eval_every_epochs=1.0)  # 5 steps per epoch
    scores = {"mAP@10": 0.5, "d1/mAP@10": 0.4, "d2/mAP@10": 0.6, "d2/P@1": 0.7}  # as benchmark_evaluator's keys
    pretrain(cfg, frames_dir, splits_path, evaluate=lambda encoder: scores)
    assert read_series(cfg.metrics_dir, "eval/mAP@10")["step"].tolist() == [0, 5, 10, 15]
    assert read_series(cfg.metrics_dir, "eval/d2/mAP@10")["mAP@10"].tolist() == [0.6] * 4
    # the learning curve is redrawn at each evaluation: the mean panel and one per dataset, 4.2 x 3.6 in at 120 dpi
    with Image.open(f"{cfg.metrics_dir}/{LEARNING_CURVE_PNG}") as image:
        assert image.format == "PNG" and image.size == (3 * 504, 432)
        assert np.asarray(image.convert("L")).std() > 0  # not a blank canvas
    with pytest.raises(ConfigError, match="not both"):
        tiny_cfg(tmp_path, "both", eval_every=2, eval_every_epochs=1.0)
