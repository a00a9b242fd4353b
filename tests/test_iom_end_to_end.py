"""End-to-end stage 2: the backbone trained with the IoM head, from images (both backends).

A small named backbone on synthetic identity folders: the frozen trunk must not move, the
trainable tail must (at its own learning rate), frozen batch norm must keep its statistics, the
teacher term must start at zero, and a shipped joint model must carry the backbone it was
trained with, which evaluation then uses.
"""

import keras
import numpy as np
import pytest

from arcface.config import validate_config
from iom.config import STAGE2_FIELDS, finalize_stage2
from tests.conftest import write_identity_folder

SIZE, DIM = 32, 16


def e2e_net(embd_shape=DIM, input_size=SIZE, dropout=0.0, name=None):
    from arcface.backbones.common import PixelNormalization, image_input

    inputs = image_input(input_size)
    x = PixelNormalization(name="pixels")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="first_conv")(x)
    x = keras.layers.BatchNormalization(name="first_bn")(x)
    x = keras.layers.ReLU(name="first_relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, use_bias=False, name="last_conv")(x)
    x = keras.layers.BatchNormalization(name="last_bn")(x)
    x = keras.layers.ReLU(name="last_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(embd_shape, name="embedding")(x)
    return keras.Model(inputs, x, name=name or "E2ENet")


@pytest.fixture
def stage1(tmp_path):
    """A registered 'E2ENet' with random weights saved, its stage-1 config, and face folders."""
    from arcface.backbones import register_backbone
    from arcface.backbones.registry import unregister_backbone

    register_backbone("E2ENet")(e2e_net)
    keras.utils.set_random_seed(1)
    weights = tmp_path / "stage1.weights.h5"
    e2e_net().save_weights(str(weights))
    cfg = tmp_path / "stage1.yaml"
    cfg.write_text(f"sub_name: e2e_stage1\nbackbone_type: E2ENet\nembd_shape: {DIM}\ninput_size: {SIZE}\n"
                   "batch_size: 8\n")
    faces = write_identity_folder(tmp_path / "faces", n_classes=24, per_class=6, size=SIZE)
    yield weights, cfg, faces
    unregister_backbone("E2ENet")


def stage2(tmp_path, stage1, **values):
    weights, cfg, faces = stage1
    base = {"sub_name": "e2e", "m": 8, "q": 4, "input_norm": "auto", "T": 0.3, "metric_loss_weight": 0,
            "distill_loss": 1, "classes_per_batch": 4, "samples_per_class": 3, "save_steps": 10, "seed": 0,
            "stage1_model": str(weights), "stage1_cfg_path": str(cfg), "train_dataset": str(faces),
            "cache_dir": str(tmp_path / "cache"), "validation_identities": 8, "train_backbone": "last_blocks",
            "trainable_from": "last_conv", "warmup_steps": 10, "end_to_end_steps": 20, "base_lr": 0.01,
            "backbone_lr_mult": 0.5, "if_not_better": "learned", "eval_batch_size": 16, "input_size": SIZE}
    return finalize_stage2(validate_config({**base, **values}, STAGE2_FIELDS, "e2e.yaml"))


def weights_of(path):
    model = e2e_net()
    model.load_weights(str(path))
    return {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}


def run(cfg, tmp_path):
    from iom.hashing.train import train_stage2

    return train_stage2(cfg, str(tmp_path / "ck"), str(tmp_path / "logs"), progress=False)


@pytest.mark.parametrize("mode", ["last_blocks", "all"])
def test_joint_training_moves_only_the_trainable_part_and_ships_its_backbone(tmp_path, stage1, mode):
    from iom.features import evaluation_source
    from iom.hashing.hasher import DeepIoMHasher

    cfg = stage2(tmp_path, stage1, train_backbone=mode)
    hasher, history = run(cfg, tmp_path)
    # the trunk and tail start as the frozen teacher: 1 - cos to its cached embeddings is ~0
    assert hasher.spec["training_report"]["end_to_end"]["teacher_at_start"] < 1e-5
    assert history["teacher"][-1] > 0
    folder = tmp_path / "ck" / "e2e"
    assert hasher.spec["stage1_weights"] == "backbone.weights.h5"
    assert hasher.spec["training_report"]["shipped"] == "end_to_end"
    before, after = weights_of(stage1[0]), weights_of(folder / "backbone.weights.h5")
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    trainable = {"last_conv/kernel", "embedding/kernel", "embedding/bias"}
    if mode == "all":
        trainable |= {"first_conv/kernel"}
    assert moved == trainable                                # batch norm frozen: statistics and affine kept
    # the saved hasher finds its backbone, and evaluation embeds with it
    loaded = DeepIoMHasher.load(str(folder))
    source = evaluation_source(cfg, loaded)
    assert source.weights == str(folder / "backbone.weights.h5")
    data = source.embed_folder(str(stage1[2]))
    model = e2e_net()
    model.load_weights(str(folder / "backbone.weights.h5"))
    from arcface.data.loader import decode_batch

    images = decode_batch([str(stage1[2] / "id_000" / "000.png")], SIZE).astype(np.float32)
    e = keras.ops.convert_to_numpy(model(images))
    np.testing.assert_allclose(data.embeddings[0], e[0] / np.linalg.norm(e[0]), atol=1e-5)


def test_a_zero_backbone_rate_leaves_the_backbone_as_it_was(tmp_path, stage1):
    from iom.hashing.hasher import DeepIoMHasher

    cfg = stage2(tmp_path, stage1, backbone_lr_mult=0.0)
    hasher, _ = run(cfg, tmp_path)
    before = weights_of(stage1[0])
    after = weights_of(tmp_path / "ck" / "e2e" / "backbone.weights.h5")
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # the head still trained in the joint phase, past its warm-up
    head_only = DeepIoMHasher.load(str(tmp_path / "ck" / "e2e" / "warmup"))

    def projection(h):
        return keras.ops.convert_to_numpy(h.network.get_layer("IoMProjection").kernel)

    assert not np.array_equal(projection(head_only), projection(hasher))


def test_a_wrecked_backbone_does_not_ship(tmp_path, stage1, capsys):
    """A backbone rate 1000 times the head's and no teacher term: the joint model loses to the
    head-only one on the validation identities, so the head-only model ships, without a backbone."""
    cfg = stage2(tmp_path, stage1, backbone_lr_mult=1000.0, teacher_loss=0.0, if_not_better="random",
                 end_to_end_steps=30)
    hasher, _ = run(cfg, tmp_path)
    report = hasher.spec["training_report"]
    assert not report["end_to_end"]["wins"]
    assert report["shipped"] != "end_to_end" and "stage1_weights" not in hasher.spec
    assert not (tmp_path / "ck" / "e2e" / "backbone.weights.h5").exists()
    assert "the jointly trained model does NOT beat" in capsys.readouterr().out


def test_scaled_optimizer_scales_only_the_named_variables():
    from iom.hashing.end_to_end import scaled_optimizer

    cfg = finalize_stage2(validate_config({"sub_name": "s", "m": 2, "q": 2, "optimizer": "sgd",
                                           "base_lr": 0.1}, STAGE2_FIELDS, "s.yaml"))
    a, b = keras.Variable(np.ones(3, np.float32), name="a"), keras.Variable(np.ones(3, np.float32), name="b")
    opt = scaled_optimizer(cfg, [b], 0.25)
    opt.build([a, b])
    grad = np.full(3, 2.0, np.float32)
    opt.apply([grad, grad], [a, b])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(a), 1 - 0.1 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(b), 1 - 0.025 * 2.0, rtol=1e-6)


def test_end_to_end_needs_images_and_a_known_cut(tmp_path, stage1):
    from arcface.errors import ConfigError

    with pytest.raises(ConfigError, match="train_embeddings"):
        stage2(tmp_path, stage1, train_dataset=None, train_embeddings=str(tmp_path / "x.npz"))
    with pytest.raises(ConfigError, match="no layer 'nowhere'"):
        run(stage2(tmp_path, stage1, trainable_from="nowhere"), tmp_path)


@pytest.mark.parametrize("name, first", [("IR_18", "stage4_block1_bn1"), ("MobileFaceNet_TF", "stage5_block1_expand_conv"),
                                         ("MobileFaceNet", "stage4_block1_expand_conv")])
def test_last_blocks_start_at_the_last_stage_of_our_backbones(name, first):
    from arcface.backbones import build_backbone
    from iom.hashing.end_to_end import last_stage_start, split_backbone

    backbone = build_backbone(name, embd_shape=32, input_size=112)
    assert last_stage_start(backbone) == first
    trunk, tail = split_backbone(backbone, first)
    x = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3)).astype(np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tail(trunk(x))), keras.ops.convert_to_numpy(backbone(x)),
                               rtol=1e-5, atol=1e-5)
