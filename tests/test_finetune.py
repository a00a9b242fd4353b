"""Fine-tuning: ``pretrained`` initialises the backbone (head fresh), ``freeze_bn`` keeps
BatchNorm as loaded, resuming wins over ``pretrained``, and a bad file fails before any step."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from arcface import pretrained as shipped
from arcface.checkpoint import CheckpointManager
from arcface.errors import CheckpointError, ConfigError
from arcface.models import build_backbone_from_config
from arcface.train import prepare_training, train
from tests.test_train import tiny_cfg, train_weights

NUM_CLASSES = 6  # conftest's identity folder: 6 identities x 8 images


@pytest.fixture
def tiny_mfn():
    """Registers 'TinyMFN' (MobileFaceNet, scale 1, one block per stage: 23 BN layers)."""
    from arcface.backbones import build_backbone, register_backbone
    from arcface.backbones.registry import unregister_backbone

    @register_backbone("TinyMFN")
    def tiny(embd_shape=16, input_size=32, dropout=0.0, name=None):
        return build_backbone("MobileFaceNet", embd_shape=embd_shape, input_size=input_size,
                              dropout=dropout, name=name, scale=1, blocks=(1, 1, 1, 1))

    yield "TinyMFN"
    unregister_backbone("TinyMFN")


def bn_layers(model) -> list:
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        stack.extend(getattr(layer, "layers", None) or [])
    return found


def write_source(path, cfg, seed: int) -> list[np.ndarray]:
    """A backbone of ``cfg`` with random weights and BatchNorm folded the way imported models
    have it (gamma 1, beta = the conv bias, moving mean 0, variance 1 - eps); saved to
    ``path``. Returns its weights in ``backbone.weights`` order."""
    rng = np.random.default_rng(seed)
    backbone = build_backbone_from_config(cfg)
    bn_vars = {}
    for layer in bn_layers(backbone):
        eps = layer.epsilon
        bn_vars[id(layer.gamma)] = lambda v: np.ones(v.shape)
        bn_vars[id(layer.beta)] = lambda v: rng.normal(0, 0.1, v.shape)
        bn_vars[id(layer.moving_mean)] = lambda v: np.zeros(v.shape)
        bn_vars[id(layer.moving_variance)] = lambda v, eps=eps: np.full(v.shape, 1 - eps)
    for v in backbone.weights:
        fill = bn_vars.get(id(v), lambda v: rng.normal(0, 0.2, v.shape))
        v.assign(fill(v).astype(v.dtype))
    backbone.save_weights(str(path))
    return [np.array(v.numpy()) for v in backbone.weights]


def weights_of(model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.weights]


def head_weights(model) -> list[np.ndarray]:
    return weights_of(model.get_layer("cosine_head"))


# --------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("kind", ["file", "checkpoint_folder", "shipped_name"])
def test_pretrained_backbone_loaded_exactly_and_head_fresh(tmp_path, monkeypatch, identity_folder,
                                                           tiny_backbone, kind):
    cfg = tiny_cfg(identity_folder)
    if kind == "file":
        value = expected = str(tmp_path / "src.weights.h5")
    elif kind == "checkpoint_folder":
        value = str(tmp_path / "ckpt_src")
        expected = str(tmp_path / "ckpt_src" / "backbone.weights.h5")
    else:
        value = "tiny_shipped"
        expected = str(tmp_path / "models" / value / "backbone.weights.h5")
        (tmp_path / "models" / value).mkdir(parents=True)
        (tmp_path / "models" / value / "config.yaml").write_text(yaml.safe_dump(dict(cfg)))
        monkeypatch.setattr(shipped, "MODELS_DIR", str(tmp_path / "models"))
    Path(expected).parent.mkdir(parents=True, exist_ok=True)
    source = write_source(expected, cfg, seed=1)

    root = tmp_path / "ck"
    tuned = prepare_training(cfg.replace(pretrained=value), NUM_CLASSES, 12, str(root))
    assert tuned.start_step == 0 and tuned.pretrained == expected
    loaded = weights_of(tuned.backbone)
    assert len(loaded) == len(source) > 0
    for got, want in zip(loaded, source):
        np.testing.assert_array_equal(got, want)

    scratch = prepare_training(cfg, NUM_CLASSES, 12, str(root))
    assert scratch.pretrained is None
    # the backbone did change (a fresh one differs from the source) ...
    assert any(not np.array_equal(a, b) for a, b in zip(weights_of(scratch.backbone), source))
    # ... and the head is the same fresh initialisation as without `pretrained`
    fresh, head = head_weights(scratch.model), head_weights(tuned.model)
    assert len(head) == len(fresh) > 0
    for got, want in zip(head, fresh):
        np.testing.assert_array_equal(got, want)
    assert not root.exists()  # preparing writes nothing


# --------------------------------------------------------------------------- freeze_bn


def test_freeze_bn_keeps_batch_norm_and_trains_the_rest(tmp_path, identity_folder, tiny_mfn):
    cfg = tiny_cfg(identity_folder, backbone_type="TinyMFN", max_steps=2, save_steps=2,
                   random_flip=False, pretrained=str(tmp_path / "src.weights.h5"), freeze_bn=True)
    source = write_source(cfg["pretrained"], cfg, seed=2)

    # frozen BN runs in inference mode: training=True gives the inference output
    x = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype("uint8")
    for freeze in (True, False):
        setup = prepare_training(cfg.replace(freeze_bn=freeze), NUM_CLASSES, 2, str(tmp_path / "x"))
        bns = bn_layers(setup.backbone)
        assert len(bns) == 23
        train_out = np.asarray(setup.backbone(x, training=True))
        infer_out = np.asarray(setup.backbone(x, training=False))
        if freeze:
            assert not any(v.trainable for bn in bns for v in bn.weights)
            np.testing.assert_allclose(train_out, infer_out, rtol=1e-5, atol=1e-5)
        else:  # the control: batch statistics replace the folded ones
            assert all(bn.gamma.trainable and bn.beta.trainable for bn in bns)
            assert not np.allclose(train_out, infer_out, rtol=1e-3, atol=1e-3)

    out = train(cfg, checkpoint_root=str(tmp_path / "ck"), log_root=str(tmp_path / "logs"), verbose=0)
    assert out["end_step"] == 2
    trained = build_backbone_from_config(cfg)
    trained.load_weights(CheckpointManager(tmp_path / "ck" / cfg["sub_name"]).latest()
                         + "/backbone.weights.h5")
    bn_ids = {id(v) for bn in bn_layers(trained) for v in bn.weights}
    assert len(bn_ids) == 4 * 23
    changed = 0
    for var, before in zip(trained.weights, source):
        after = np.array(var.numpy())
        if id(var) in bn_ids:  # gamma, beta, moving mean and variance exactly as loaded
            np.testing.assert_array_equal(after, before, err_msg=var.path)
        else:  # every convolution / dense weight was trained
            assert not np.array_equal(after, before), var.path
            changed += 1
    assert changed == len(source) - len(bn_ids) > 0


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_resumed_finetuning_equals_uninterrupted_and_ignores_pretrained(
        tmp_path, identity_folder, tiny_backbone, capsys, freeze_bn):
    src = tmp_path / "src.weights.h5"
    cfg = tiny_cfg(identity_folder, max_steps=6, save_steps=2, pretrained=str(src), freeze_bn=freeze_bn)
    write_source(src, cfg, seed=3)

    straight = tmp_path / "straight"
    train(cfg, checkpoint_root=str(straight), log_root=str(tmp_path / "logs1"), verbose=0)

    resumed = tmp_path / "resumed"
    first = train(cfg, checkpoint_root=str(resumed), log_root=str(tmp_path / "logs2"),
                  stop_after_chunks=1, verbose=0)
    assert first["end_step"] == 2 and first["pretrained"] == str(src)
    # the pretrained file changes between the runs: resuming must not read it again
    write_source(src, cfg, seed=4)
    capsys.readouterr()
    second = train(cfg, checkpoint_root=str(resumed), log_root=str(tmp_path / "logs2"), verbose=0)
    assert second["start_step"] == 2 and second["end_step"] == 6
    notes = [line for line in capsys.readouterr().out.splitlines() if "not loaded" in line]
    assert len(notes) == 1 and "pretrained" in notes[0], notes
    # provenance survives the resume
    state = json.load(open(CheckpointManager(resumed / "tiny").latest() + "/state.json"))
    assert state["pretrained"] == str(src) and second["pretrained"] == str(src)

    a, b = train_weights(straight, cfg), train_weights(resumed, cfg)
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)

    # gone entirely: a finished run still starts (and has nothing to do)
    src.unlink()
    third = train(cfg, checkpoint_root=str(resumed), log_root=str(tmp_path / "logs2"), verbose=0)
    assert third["end_step"] == 6 and "loss" not in third


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def tiny_deep():
    """Registers 'TinyDeep': TinyNet plus one more Dense layer (TinyNet's layers are a prefix)."""
    from arcface.backbones import build_backbone, register_backbone
    from arcface.backbones.registry import unregister_backbone

    @register_backbone("TinyDeep")
    def deep(embd_shape=16, input_size=32, dropout=0.0, name=None):
        base = build_backbone("TinyNet", embd_shape=embd_shape, input_size=input_size)
        out = keras.layers.Dense(embd_shape)(base.output)
        return keras.Model(base.input, out, name=name or "TinyDeep")

    yield "TinyDeep"
    unregister_backbone("TinyDeep")


@pytest.mark.parametrize("case, error", [
    ("other_embd_shape", CheckpointError),
    ("other_backbone_type", CheckpointError),
    ("larger_network", CheckpointError),
    ("corrupt_file", CheckpointError),
    ("missing_file", ConfigError),
    ("unknown_name", ConfigError),
    ("run_folder_without_checkpoints", ConfigError),
    ("not_a_weights_file", ConfigError),
])
def test_bad_pretrained_fails_before_any_step(tmp_path, identity_folder, tiny_backbone, tiny_mfn,
                                              tiny_deep, case, error):
    cfg = tiny_cfg(identity_folder)
    path = tmp_path / "src.weights.h5"
    if case == "other_embd_shape":
        write_source(path, cfg.replace(embd_shape=8), seed=5)
    elif case == "other_backbone_type":
        write_source(path, cfg.replace(backbone_type="TinyMFN"), seed=5)
    elif case == "larger_network":  # Keras alone would load TinyNet's part silently
        write_source(path, cfg.replace(backbone_type="TinyDeep"), seed=5)
    elif case == "corrupt_file":
        path.write_bytes(b"not an HDF5 file")
    elif case == "unknown_name":
        path = "no_such_shipped_model"
    elif case == "run_folder_without_checkpoints":
        path = tmp_path / "empty_run"
        path.mkdir()
    elif case == "not_a_weights_file":
        path = tmp_path / "src.npz"
        np.savez(path, w=np.zeros(3))
    cfg = cfg.replace(pretrained=str(path))
    root, logs = tmp_path / "ck", tmp_path / "logs"
    with pytest.raises(error) as err:
        train(cfg, checkpoint_root=str(root), log_root=str(logs), verbose=0)
    msg = str(err.value)
    assert "key 'pretrained'" in msg and str(path) in msg, msg
    assert not root.exists() and not logs.exists()
