"""End-to-end stage 2, as the parent trains it: the stage-1 backbone learns with the IoM head.

``train_backbone`` (config) says how much of the backbone trains: ``none`` (the head alone, on
cached embeddings: :func:`iom.hashing.trainer.train_hasher`), ``last_blocks`` (the backbone from
layer ``trainable_from`` on) or ``all``. Small data pulls a strong backbone apart easily, so the
joint phase is held by four tools:

1. **warm-up with the backbone frozen**: the head first trains alone on the cached embeddings
   (the head-only recipe, ``warmup_steps``), so the joint phase starts from a head that fits the
   features (linear probing, then fine-tuning: Kumar et al., ICLR 2022);
2. **a small backbone learning rate**: ``base_lr × backbone_lr_mult``;
3. **frozen batch norm** in the backbone (its moving statistics, no updates);
4. **a teacher term**, ``teacher_loss × mean(1 − cos(e, e_teacher))``: each embedding stays near
   the frozen model's embedding of the same image (cached: the embeddings head-only training
   uses). The distillation term's target is the teacher's similarity too, so the backbone can
   only learn to make codes reproduce the teacher's geometry better, not to change it.

With ``last_blocks`` the frozen trunk's activations at ``trainable_from`` are computed once and
cached on disk like embeddings (mirror images included), so a step costs only the trainable
blocks; with ``all`` every step decodes and runs the images through the whole network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import keras
import numpy as np
from keras import ops

from arcface.errors import ConfigError

TRAIN_BACKBONE = ("none", "last_blocks", "all")
BACKBONE_FILE = "backbone.weights.h5"
_STAGE = re.compile(r"^stage(\d+)_block1_")


# --------------------------------------------------------------------------- the backbone's parts
def last_stage_start(backbone: keras.Model) -> str | None:
    """The first layer of the backbone's last stage (our backbones name their layers
    ``stage{i}_block{j}_...``: IR-ResNets, both MobileFaceNets), or ``None``."""
    stages = [(int(m.group(1)), layer.name) for layer in backbone.layers if (m := _STAGE.match(layer.name))]
    if not stages:
        return None
    last = max(n for n, _ in stages)
    return next(name for n, name in stages if n == last)


def trainable_from_layer(cfg, backbone: keras.Model) -> str | None:
    """The first trainable layer for ``cfg["train_backbone"]`` (``None`` for ``all``):
    ``trainable_from``, else the start of the backbone's last stage."""
    if cfg["train_backbone"] == "all":
        return None
    name = cfg["trainable_from"] or last_stage_start(backbone)
    if name is None:
        raise ConfigError(f"{cfg.source}: train_backbone: last_blocks needs 'trainable_from' (a layer name "
                          f"of the {backbone.name} backbone): it has no stage{{i}}_block1_ layers to start from")
    return name


def split_backbone(backbone: keras.Model, first_trainable: str | None):
    """``(trunk, tail)``: the frozen part up to the input of layer ``first_trainable`` and the
    part from there to the embedding (``trunk`` is ``None`` when everything trains)."""
    if first_trainable is None:
        return None, backbone
    try:
        cut = backbone.get_layer(first_trainable).input
    except ValueError:
        raise ConfigError(f"trainable_from: the backbone has no layer {first_trainable!r}") from None
    trunk = keras.Model(backbone.input, cut, name="frozen_trunk")
    tail = keras.Model(cut, backbone.output, name="trainable_tail")
    trunk.trainable = False
    return trunk, tail


def freeze_batch_norm(model: keras.Model) -> int:
    """Every BatchNormalization layer of ``model`` in inference mode and not trained; their count."""
    n = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            n += 1
    return n


def read_images(paths, mirrored, size: int) -> np.ndarray:
    """RGB uint8 (n, size, size, 3) of the rows: each image, mirrored where ``mirrored``."""
    from arcface.data.loader import decode_batch

    images = decode_batch(list(paths), size)
    flip = np.asarray(mirrored, bool)
    images[flip] = images[flip][:, :, ::-1]
    return images


def trunk_activations(trunk: keras.Model, paths, mirrored, size: int, cache_dir: str, tag: str,
                      batch_size: int = 128, progress: bool = True) -> np.ndarray:
    """The frozen trunk's output (float16) for every row, cached under ``cache_dir`` by the
    trunk's weights, its cut and the rows."""
    digest = hashlib.sha256()
    for w in trunk.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes()[:4096])
    digest.update(json.dumps([list(map(str, paths)), np.asarray(mirrored, bool).tolist(),
                              trunk.output.shape[1:], size]).encode())
    path = os.path.join(cache_dir, f"trunk_{tag}_{digest.hexdigest()[:16]}.npy")
    if os.path.isfile(path):
        return np.load(path)
    from arcface.embed import inference_function

    run = inference_function(trunk)
    out = np.empty((len(paths), *trunk.output.shape[1:]), np.float16)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc=f"trunk activations ({tag})", unit="img")
    for start in range(0, len(paths), batch_size):
        sl = slice(start, start + batch_size)
        out[sl] = np.asarray(run(read_images(paths[sl], mirrored[sl], size)), np.float16)
        if bar is not None:
            bar.update(len(out[sl]))
    if bar is not None:
        bar.close()
    os.makedirs(cache_dir, exist_ok=True)
    np.save(path + ".tmp.npy", out)
    os.replace(path + ".tmp.npy", path)
    return out


# --------------------------------------------------------------------------- training
class JointTrainer(keras.Model):
    """The trainable tail of the backbone and the hashing network, trained together.

    Input ``(x, teacher)``: the tail's input (trunk activations or images) and the frozen
    model's embedding of the same rows. Loss: the head's terms (:class:`HashingTrainer`), the
    distillation term's target being the teacher's similarity, plus ``teacher_weight ×
    mean(1 − cos(e, e_teacher))``."""

    def __init__(self, tail: keras.Model, head, teacher_weight: float, **kwargs):
        from iom.hashing.layers import NETWORK_DTYPE

        kwargs.setdefault("dtype", NETWORK_DTYPE)
        super().__init__(**kwargs)
        self.tail, self.head = tail, head
        self.teacher_weight = float(teacher_weight)
        network = head.network
        self._teacher_features = keras.Model(network.input, network.output["features"])
        self._teacher_tracker = keras.metrics.Mean(name="teacher")

    def build(self, input_shape=None):
        self.built = True   # its parts (the tail and the head) are built models

    def embed(self, x, training=False):
        e = ops.cast(self.tail(x, training=training), "float32")
        return e * ops.rsqrt(ops.maximum(ops.sum(ops.square(e), axis=-1, keepdims=True), 1e-24))

    def call(self, inputs, training=False):
        x, teacher = inputs
        e = self.embed(x, training=training)
        return {**self.head.network(e, training=training), "embedding": e,
                "teacher_features": self._teacher_features(teacher, training=False)}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        outputs = dict(y_pred)
        outputs["features"] = outputs["teacher_features"]   # the distillation target: the teacher's
        total = self.head.weighted_loss(y, outputs)
        if self.teacher_weight:
            teacher = ops.cast(x[1], "float32")
            teacher = teacher * ops.rsqrt(ops.maximum(ops.sum(ops.square(teacher), axis=-1, keepdims=True), 1e-24))
            term = ops.mean(1.0 - ops.sum(y_pred["embedding"] * teacher, axis=-1))
            self._teacher_tracker.update_state(term)
            total = total + self.teacher_weight * term
        return total

    @property
    def metrics(self):
        return super().metrics + self.head.term_metrics + [self._teacher_tracker]


def scaled_optimizer(cfg, variables, factor: float) -> keras.optimizers.Optimizer:
    """The config's optimizer (:func:`iom.hashing.trainer.build_optimizer`) with the learning rate
    of ``variables`` scaled by ``factor`` (the others at ``base_lr``)."""
    from iom.hashing.trainer import build_optimizer

    base = build_optimizer(cfg)

    class Scaled(type(base)):
        def update_step(self, gradient, variable, learning_rate):
            if self._scaled_keys is None:   # the backend's own variable objects reach this method
                self._scaled_keys = {self._var_key(v) for v in variables}
            if self._var_key(variable) in self._scaled_keys:
                learning_rate = learning_rate * factor
            return super().update_step(gradient, variable, learning_rate)

    optimizer = Scaled.from_config(base.get_config())
    optimizer._scaled_keys = None
    return optimizer


def joint_batches(x, teacher, labels, sampler, read=None, start_step: int = 0):
    """Endless ``((x, teacher), labels)`` P×K batches (``read(rows)`` gives the inputs of rows
    when ``x`` is ``None``: images decoded on the fly)."""
    import itertools

    for step in itertools.count(start_step):
        idx = sampler.batch(step)
        inputs = read(idx) if x is None else x[idx].astype(np.float32)
        yield (inputs, teacher[idx]), labels[idx]


def _batched(fn, x, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([np.asarray(keras.ops.convert_to_numpy(fn(x[i:i + batch_size])), np.float32)
                           for i in range(0, len(x), batch_size)])


def train_end_to_end(cfg, checkpoint_root: str = "checkpoints", log_root: str = "logs",
                     progress: bool = True):
    """Stage 2 with the backbone trained too (``train_backbone``: ``last_blocks`` or ``all``);
    returns ``(hasher, history)``. See the module docstring for the recipe.

    The guard (:mod:`iom.hashing.guard`) measures, on the validation identities, the jointly
    trained model against the head-only model it started from (the warm-up) and random IoM
    on the frozen model's embeddings: the joint model ships only when it beats random IoM by
    more than the keys' spread and is not below the head-only model; it is saved with its
    backbone (``backbone.weights.h5`` in the hasher folder, named by ``spec["stage1_weights"]``).
    Otherwise the head-only model ships, under its own guard."""
    from iom.features import training_set
    from iom.hashing.guard import code_scores, decide, validation_split
    from iom.hashing.trainer import _plain, train_hasher

    data = training_set(cfg)
    if data.paths is None:
        raise ConfigError(f"{cfg.source}: train_backbone: {cfg['train_backbone']} trains from images: set "
                          "'train_dataset' (image folders), not 'train_embeddings'")
    if not cfg["validation_identities"]:
        raise ConfigError(f"{cfg.source}: train_backbone: {cfg['train_backbone']} needs validation_identities "
                          "(the joint model ships only if it beats the head-only one there)")
    # 1. warm-up: the head alone on the frozen model's embeddings (the learned head is kept whatever
    #    its guard says: the joint phase starts from it; the final verdict comes below)
    warm_cfg = cfg.replace(train_backbone="none", max_steps=cfg["warmup_steps"], if_not_better="learned",
                           sub_name=f"{cfg['sub_name']}/warmup")
    hasher, _ = train_hasher(warm_cfg, data.x, data.labels, checkpoint_root, log_root, progress,
                             mirrored=data.mirrored)
    warm_report = hasher.spec["training_report"]
    head_only_weights = hasher.network.get_weights()
    train_rows, val_rows = validation_split(data.labels, cfg["validation_identities"], cfg["classes_per_batch"])
    train, val = data.take(train_rows), data.take(val_rows & ~data.mirrored)

    # 2. the joint phase, then its codes of the validation identities
    backbone, student_val, history, teacher_at_start = _joint_phase(cfg, hasher, train, val, log_root, progress)
    learned = code_scores(hasher.codes(student_val), hasher.q, val.labels)
    joint_weights = hasher.network.get_weights()
    hasher.network.set_weights(head_only_weights)
    head_only = code_scores(hasher.codes(val.x), hasher.q, val.labels)

    # 3. the verdict, and what ships
    decision = decide(learned, head_only, warm_report["guard"]["random"]["runs"], cfg["if_not_better"],
                      hasher.spec.get("input_norm", "none"), names=("jointly trained model", "head-only model"))
    report = {"end_to_end": {"mode": cfg["train_backbone"], "learned": learned, "head_only": head_only,
                             "guard": decision.report, "wins": decision.learned_wins,
                             "teacher_at_start": teacher_at_start},
              "warmup": warm_report}
    verdict = decision.message if decision.shipped == "learned" else \
        decision.message.split("; shipping")[0] + "; the head-only model ships, under its own guard"
    print(f"[stage 2, end to end] {verdict}", flush=True)
    folder = f"{checkpoint_root}/{cfg['sub_name']}"
    if decision.shipped == "learned":      # it wins, or if_not_better: learned keeps it
        hasher.network.set_weights(joint_weights)
        os.makedirs(folder, exist_ok=True)
        backbone.save_weights(os.path.join(folder, BACKBONE_FILE))
        hasher.spec["stage1_weights"] = BACKBONE_FILE
        report["shipped"] = "end_to_end"
    else:
        hasher = _head_only_under_its_guard(cfg, hasher, train, val, report)
    hasher.spec["training_report"] = _plain(report)
    hasher.save(folder)
    print(f"[stage 2, end to end] shipped: {report['shipped']}; saved to {folder}", flush=True)
    return hasher, history


def _joint_phase(cfg, hasher, train, val, log_root: str, progress: bool):
    """Train the backbone's tail with ``hasher``'s network (in place); returns ``(backbone,
    validation embeddings of the trained backbone, history, 1 − cos to the teacher at the start)``."""
    from arcface.callbacks import ScalarLog, TrainLogCallback
    from iom.features import load_stage1
    from iom.hashing.sampler import PKSampler
    from iom.hashing.trainer import HashingTrainer, deterministic_ops, distillation_map, loss_settings

    with deterministic_ops():
        keras.utils.set_random_seed(cfg["seed"])
        stage1_cfg, backbone = load_stage1(cfg)
        trunk, tail = split_backbone(backbone, trainable_from_layer(cfg, backbone))
        n_bn = freeze_batch_norm(tail) if cfg["freeze_bn"] else 0
        size = stage1_cfg["input_size"]
        if trunk is not None:
            x_train = trunk_activations(trunk, train.paths, train.mirrored, size, cfg["cache_dir"], "train",
                                        progress=progress)
            x_val = trunk_activations(trunk, val.paths, val.mirrored, size, cfg["cache_dir"], "validation",
                                      progress=progress).astype(np.float32)
            read = None
        else:
            x_train, x_val = None, read_images(val.paths, val.mirrored, size).astype(np.float32)
            read = lambda rows: read_images(train.paths[rows], train.mirrored[rows], size).astype(np.float32)  # noqa: E731
        settings = loss_settings(cfg)
        head = HashingTrainer(hasher.network, settings,
                              distillation_map(hasher.network, train.x, cfg["seed"]) if settings.distillation else None)
        joint = JointTrainer(tail, head, cfg["teacher_loss"])
        joint.compile(optimizer=scaled_optimizer(cfg, tail.trainable_variables, float(cfg["backbone_lr_mult"])))
        sampler = PKSampler(train.labels, cfg["classes_per_batch"], cfg["samples_per_class"], seed=cfg["seed"])
        (first, teacher), _ = next(joint_batches(x_train, train.x, train.labels, sampler, read))
        start = keras.ops.convert_to_numpy(joint((first, teacher))["embedding"])   # builds it, too
        teacher = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
        teacher_at_start = float(np.mean(1.0 - np.sum(start * teacher, axis=1)))
        steps = cfg["end_to_end_steps"]
        chunk = min(cfg["save_steps"], steps)
        chunks = int(np.ceil(steps / chunk))
        print(f"[stage 2, end to end] {cfg['train_backbone']}: {len(tail.trainable_variables)} backbone "
              f"tensors train at {cfg['backbone_lr_mult']} x base_lr ({n_bn} batch norms frozen), teacher term "
              f"{cfg['teacher_loss']}; {chunks * chunk} steps of {sampler.batch_size} after {cfg['warmup_steps']} "
              "head-only warm-up steps", flush=True)
        log = ScalarLog(f"{log_root}/{cfg['sub_name']}")
        batches = joint_batches(x_train, train.x, train.labels, sampler, read, start_step=cfg["warmup_steps"])
        history = joint.fit(batches, steps_per_epoch=chunk, epochs=chunks, verbose=1 if progress else 0,
                            shuffle=False,
                            callbacks=[TrainLogCallback(log, chunk, float(cfg["base_lr"]), every=min(50, chunk))])
        student = _batched(lambda b: joint.embed(b, training=False), x_val)
    return backbone, student, history.history, teacher_at_start


def _head_only_under_its_guard(cfg, hasher, train, val, report):
    """The head-only model (its learned weights in ``hasher`` now) against random IoM and its
    own start, as head-only training would have shipped it."""
    from iom.hashing.hasher import DeepIoMHasher
    from iom.hashing.trainer import _apply_guard

    initial = DeepIoMHasher.from_config(cfg, train.x.shape[1])
    initial.fit_input_normalization(train.x)
    shipped = _apply_guard(cfg, hasher, initial.network.get_weights(), val.x, val.labels, report)
    report["shipped"] = "head_only" if report["shipped"] == "learned" else report["shipped"]
    return shipped
