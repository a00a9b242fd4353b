"""Training end to end on a tiny network: the loss falls, checkpoints resume exactly."""

import json

import keras
import numpy as np
import pytest

from arcface.checkpoint import CheckpointManager
from arcface.config import finalize_stage1, validate_config
from arcface.errors import CheckpointError, ConfigError
from arcface.train import build_lr_schedule, make_plan, train


def tiny_cfg(folder, **over):
    raw = dict(batch_size=8, input_size=32, embd_shape=16, sub_name="tiny", backbone_type="TinyNet",
               head_type="CosHead", margin=0.2, logist_scale=16, train_dataset=str(folder),
               epochs=30, max_steps=12, base_lr=0.1, lr_schedule="constant", save_steps=3,
               random_flip=True, seed=3, workers=2)
    raw.update(over)
    return finalize_stage1(validate_config(raw))


def train_weights(root, cfg):
    path = CheckpointManager(root / cfg["sub_name"]).latest()
    model_file = f"{path}/train.weights.h5"
    import h5py  # ships with keras

    out = {}
    with h5py.File(model_file, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, np.array(obj))
                     if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("flip", [False, True])
def test_resume_equals_uninterrupted_run(tmp_path, identity_folder, tiny_backbone, flip):
    cfg = tiny_cfg(identity_folder, random_flip=flip)
    straight = tmp_path / "straight"
    train(cfg, checkpoint_root=str(straight), log_root=str(tmp_path / "logs1"), verbose=0)

    resumed = tmp_path / "resumed"
    first = train(cfg, checkpoint_root=str(resumed), log_root=str(tmp_path / "logs2"),
                  stop_after_chunks=2, verbose=0)
    assert first["end_step"] == 6
    assert CheckpointManager(resumed / "tiny").steps() == [3, 6]
    second = train(cfg, checkpoint_root=str(resumed), log_root=str(tmp_path / "logs2"), verbose=0)
    assert second["start_step"] == 6 and second["end_step"] == 12

    a, b = train_weights(straight, cfg), train_weights(resumed, cfg)
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
    # the optimizer state resumed too: same momenta and iteration count
    opt_a = np.load(CheckpointManager(straight / "tiny").latest() + "/optimizer.npz")
    opt_b = np.load(CheckpointManager(resumed / "tiny").latest() + "/optimizer.npz")
    # variable paths carry auto-generated instance names (sgd_1, conv2d_4): compare values
    assert len(opt_a["__names__"]) == len(opt_b["__names__"])
    for k in opt_a.files:
        if k != "__names__":
            np.testing.assert_allclose(opt_a[k], opt_b[k], rtol=1e-4, atol=1e-5)
    # nothing left to do: a third call is a no-op
    third = train(cfg, checkpoint_root=str(resumed), log_root=str(tmp_path / "logs2"), verbose=0)
    assert third["end_step"] == 12 and "loss" not in third


def test_loss_falls_and_logs_are_written(tmp_path, identity_folder, tiny_backbone):
    cfg = tiny_cfg(identity_folder, max_steps=60, save_steps=20, base_lr=0.2, random_flip=False)
    out = train(cfg, checkpoint_root=str(tmp_path / "ck"), log_root=str(tmp_path / "logs"), verbose=0)
    assert out["loss"][-1] < 0.7 * out["loss"][0], out["loss"]
    lines = [json.loads(s) for s in open(tmp_path / "logs" / "tiny" / "metrics.jsonl")]
    assert [r["step"] for r in lines] == list(range(10, 61, 10))
    assert all("train/loss" in r and "train/learning_rate" in r for r in lines)


def test_verification_callback_keeps_best(tmp_path, identity_folder, tiny_backbone):
    from tests.conftest import write_pairs_set

    pairs_dir = write_pairs_set(identity_folder, tmp_path / "pairs_set")
    cfg = tiny_cfg(identity_folder, max_steps=6, test_dataset=str(pairs_dir), eval_steps=3)
    out = train(cfg, checkpoint_root=str(tmp_path / "ck"), log_root=str(tmp_path / "logs"), verbose=0)
    steps = [h["step"] for h in out["verification"]]
    assert steps == [3, 6]
    best = CheckpointManager(tmp_path / "ck" / "tiny").best_path
    state = json.load(open(f"{best}/state.json"))
    assert state["best_accuracy"] == pytest.approx(max(h["val/mean_accuracy"] for h in out["verification"]))


def test_plan_checks_counts_and_rounds_to_chunks(identity_folder, tiny_backbone):
    from arcface.data.loader import open_image_source

    source = open_image_source(identity_folder)  # 6 classes x 8 images
    plan = make_plan(tiny_cfg(identity_folder, max_steps=10, save_steps=4), source)
    assert (plan.steps_per_epoch, plan.total_steps, plan.num_chunks) == (6, 12, 3)
    with pytest.raises(ConfigError, match="num_classes"):
        make_plan(tiny_cfg(identity_folder, num_classes=7), source)
    with pytest.raises(ConfigError, match="num_samples"):
        make_plan(tiny_cfg(identity_folder, num_samples=47), source)
    with pytest.raises(ConfigError, match="batch_size"):
        make_plan(tiny_cfg(identity_folder, batch_size=64), source)


def test_lr_schedules():
    cfg = finalize_stage1(validate_config(dict(batch_size=8, sub_name="s", backbone_type="TinyNet",
                                               base_lr=0.1, lr_schedule="piecewise", lr_steps=[10, 20],
                                               lr_decay=0.1, warmup_steps=5)))
    sched = build_lr_schedule(cfg, 30)
    lr = [float(sched(s)) for s in (0, 4, 5, 9, 10, 19, 20, 29)]
    np.testing.assert_allclose(lr, [0.02, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)
    cos = build_lr_schedule(cfg.replace(lr_schedule="cosine", warmup_steps=0), 100)
    assert float(cos(0)) == pytest.approx(0.1) and float(cos(50)) == pytest.approx(0.05, rel=1e-4)
    assert float(cos(100)) == pytest.approx(0.0, abs=1e-7)


def test_corrupt_checkpoint_is_refused(tmp_path, identity_folder, tiny_backbone):
    cfg = tiny_cfg(identity_folder, max_steps=3)
    train(cfg, checkpoint_root=str(tmp_path / "ck"), log_root=str(tmp_path / "logs"), verbose=0)
    latest = CheckpointManager(tmp_path / "ck" / "tiny").latest()
    np.savez(f"{latest}/optimizer.npz", __names__=np.array(["x"]), v00000=np.zeros(3))
    with pytest.raises(CheckpointError, match="optimizer variables"):
        train(cfg.replace(max_steps=6), checkpoint_root=str(tmp_path / "ck"),
              log_root=str(tmp_path / "logs"), verbose=0)


def test_mode_is_validated(identity_folder, tiny_backbone):
    with pytest.raises(ConfigError, match="mode"):
        train(tiny_cfg(identity_folder), mode="graph")
    assert keras.config.dtype_policy().name == "float32"


def test_eager_mode_trains_like_compiled(tmp_path, identity_folder, tiny_backbone):
    cfg = tiny_cfg(identity_folder, max_steps=3, random_flip=False)
    train(cfg, mode="fit", checkpoint_root=str(tmp_path / "a"), log_root=str(tmp_path / "la"), verbose=0)
    train(cfg, mode="eager_tf", checkpoint_root=str(tmp_path / "b"), log_root=str(tmp_path / "lb"), verbose=0)
    a, b = train_weights(tmp_path / "a", cfg), train_weights(tmp_path / "b", cfg)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-3, atol=1e-4, err_msg=key)
