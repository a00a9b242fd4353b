"""Data-parallel training over the local devices (and hosts), chosen by the config.

The config key ``distribution`` says how stage 1 trains:

- ``none``: one device, the backend's default.
- ``data_parallel``: every training step is split over ``num_devices`` devices (default:
  all the backend sees). The weights are replicated, each device takes ``batch_size /
  num_devices`` samples of the global batch, and the gradients of the global batch update
  every replica alike, so the run is the single-device run with the same ``batch_size``
  (up to float summation order).
  On **JAX** this is Keras 3's own :class:`keras.distribution.DataParallel` over a 1-D
  device mesh: the step is compiled once for the global batch (GSPMD), so batch-norm
  statistics, the margin loss's mean and the random augmentation draws are those of the
  global batch. On **TensorFlow** it is :class:`tf.distribute.MirroredStrategy` over the
  GPUs (or, without GPUs, the logical CPU devices); batch-norm layers are switched to
  synchronised statistics (:func:`synchronize_batch_norm`), the loss is Keras' per-replica
  mean scaled by ``1 / replicas`` and the gradients are summed. Random augmentation layers
  draw per replica there, so with ``random_flip`` etc. on, the TensorFlow run is
  statistically, not bitwise, the single-device one.
- ``auto`` (default): ``data_parallel`` when the backend sees more than one device, else
  ``none``.

``batch_size`` is always the **global** batch and must divide evenly over the devices.
The learning rate applies to that global batch: keeping ``batch_size`` and ``base_lr``
while adding devices changes nothing but speed; raising ``batch_size`` with the devices
(same per-device batch) calls for the linear scaling rule, ``base_lr`` times the same
factor, with a warm-up (``warmup_steps``) — the config says so explicitly, nothing is
rescaled behind the user's back.

Several hosts (JAX only): every host runs the same command with the
``KERAS_DISTRIBUTION_*`` environment of :func:`keras.distribution.initialize`
(``JOB_ADDRESSES``, ``NUM_PROCESSES``, ``PROCESS_ID``); :func:`initialize_hosts` calls it
before any device is touched. Each host then decodes only its slice of every global batch
(:func:`process_slice`), and only process 0 writes checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import keras

from arcface.errors import ConfigError

#: the environment variables of a multi-host JAX run (read by keras.distribution.initialize)
HOST_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
            "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclass(frozen=True)
class DistributionPlan:
    """How one training run uses the devices."""

    kind: str                      # "none" or "data_parallel"
    backend: str
    devices: tuple[str, ...]       # the devices the step runs on (one for "none")
    process_index: int = 0
    process_count: int = 1

    @property
    def replicas(self) -> int:
        return len(self.devices)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints and logs (process 0)."""
        return self.process_index == 0

    def describe(self) -> str:
        if self.kind == "none":
            return f"one device ({self.devices[0]})"
        hosts = f" on {self.process_count} hosts" if self.process_count > 1 else ""
        return f"data parallel over {self.replicas} devices{hosts} ({', '.join(self.devices)})"


def initialize_hosts() -> bool:
    """Join a multi-host JAX run when the ``KERAS_DISTRIBUTION_*`` variables say so.

    Returns whether it did. Must run before the first JAX computation; a partial set of
    variables, or any on TensorFlow, raises :class:`ConfigError` naming them."""
    present = [name for name in HOST_ENV if os.environ.get(name)]
    if not present:
        return False
    if keras.backend.backend() != "jax":
        raise ConfigError(f"{', '.join(present)} set: multi-host training runs on the JAX backend "
                          f"only (KERAS_BACKEND=jax)")
    if len(present) != len(HOST_ENV):
        missing = [name for name in HOST_ENV if name not in present]
        raise ConfigError(f"multi-host training needs all of {', '.join(HOST_ENV)}; "
                          f"missing {', '.join(missing)}")
    import jax

    if jax.distributed.is_initialized():
        return True
    try:
        count = int(os.environ["KERAS_DISTRIBUTION_NUM_PROCESSES"])
        index = int(os.environ["KERAS_DISTRIBUTION_PROCESS_ID"])
    except ValueError:
        raise ConfigError("KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID "
                          "must be integers") from None
    if not 0 <= index < count:
        raise ConfigError(f"KERAS_DISTRIBUTION_PROCESS_ID ({index}) must be in [0, "
                          f"KERAS_DISTRIBUTION_NUM_PROCESSES={count})")
    keras.distribution.initialize()
    return True


def available_devices(backend: str | None = None) -> list[str]:
    """The devices data-parallel training would use, in order: JAX's devices (all hosts'),
    or TensorFlow's logical GPUs, else its logical CPUs."""
    backend = backend or keras.backend.backend()
    if backend == "jax":
        return keras.distribution.list_devices()
    if backend == "tensorflow":
        import tensorflow as tf

        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return [d.name for d in devices]
    return ["default"]


def plan_distribution(cfg) -> DistributionPlan:
    """Resolve ``distribution`` / ``num_devices`` of a stage-1 config against the devices
    present; a request that cannot be met raises :class:`ConfigError` naming the key."""
    backend = keras.backend.backend()
    kind, wanted = cfg["distribution"], cfg["num_devices"]
    devices = available_devices(backend)
    process_index, process_count = 0, 1
    if backend == "jax":
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if wanted is not None and wanted > len(devices):
        raise ConfigError(f"{cfg.source}: key 'num_devices' is {wanted} but the {backend} backend "
                          f"sees {len(devices)} device(s): {', '.join(devices)}")
    chosen = devices[:wanted] if wanted is not None else devices
    if kind == "auto":
        kind = "data_parallel" if len(chosen) > 1 else "none"
    if kind == "data_parallel" and backend not in ("jax", "tensorflow"):
        raise ConfigError(f"{cfg.source}: key 'distribution' is 'data_parallel', which needs the "
                          f"jax or tensorflow backend, not {backend}")
    if kind == "none":
        if process_count > 1:
            raise ConfigError(f"{cfg.source}: key 'distribution' is 'none' but this is one of "
                              f"{process_count} processes of a multi-host run")
        return DistributionPlan("none", backend, (chosen[0],))
    if process_count > 1 and len(chosen) != len(devices):
        raise ConfigError(f"{cfg.source}: key 'num_devices' must be null on a multi-host run "
                          f"(every host's devices take part)")
    replicas = len(chosen)
    if cfg["batch_size"] % replicas:
        raise ConfigError(f"{cfg.source}: key 'batch_size' ({cfg['batch_size']}) is the global batch "
                          f"and must divide evenly over the {replicas} devices of "
                          f"distribution 'data_parallel'")
    return DistributionPlan("data_parallel", backend, tuple(chosen), process_index, process_count)


@contextlib.contextmanager
def distribution_scope(plan: DistributionPlan) -> Iterator[None]:
    """Build, compile and fit the model inside this block to train as ``plan`` says.

    JAX: the global :func:`keras.distribution.set_distribution` is set to a
    ``DataParallel`` over the plan's devices and put back afterwards. TensorFlow: the
    block runs in a ``MirroredStrategy`` scope."""
    if plan.kind == "none":
        yield
        return
    if plan.backend == "jax":
        # the loader already gives each host its slice of the batch (process_slice)
        with _jax_distribution(keras.distribution.DataParallel(devices=list(plan.devices),
                                                               auto_shard_dataset=False)):
            yield
        return
    import tensorflow as tf

    with tf.distribute.MirroredStrategy(devices=list(plan.devices)).scope():
        yield


@contextlib.contextmanager
def host_local() -> Iterator[None]:
    """Within the block, new variables are plain local ones: for process 0 of a multi-host
    JAX run to save a checkpoint alone (Keras' saving creates scratch variables, which
    under a multi-host distribution would be collectives the other hosts never join).
    Elsewhere it changes nothing."""
    if keras.backend.backend() != "jax" or keras.distribution.distribution() is None:
        yield
        return
    import jax

    if jax.process_count() == 1:
        yield
        return
    with _jax_distribution(None):
        yield


@contextlib.contextmanager
def _jax_distribution(distribution) -> Iterator[None]:
    """Keras' global distribution set to ``distribution`` within the block, then put back."""
    prior = keras.distribution.distribution()
    keras.distribution.set_distribution(distribution)
    try:
        yield
    finally:
        keras.distribution.set_distribution(prior)


def synchronize_batch_norm(model, plan: DistributionPlan) -> int:
    """TensorFlow data-parallel runs: make every BatchNormalization layer of ``model``
    compute its batch statistics over the global batch (``synchronized``), as one device
    would. Returns how many layers changed (0 on JAX, where the step is global already)."""
    if plan.kind == "none" or plan.backend != "tensorflow":
        return 0
    from arcface.backbones.common import iter_layers

    changed = 0
    for layer in iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            changed += 1
    return changed


def variable_devices(variable) -> int:
    """On how many devices a Keras variable lives (its replicas or shards)."""
    value = variable.value
    if hasattr(value, "sharding"):               # a jax.Array
        return len(value.sharding.device_set)
    return len(getattr(value, "values", None) or [value])   # a tf.distribute MirroredVariable


def process_slice(batch_size: int, plan: DistributionPlan) -> slice:
    """The rows of each global batch this process decodes (all of them on one host)."""
    if plan.process_count == 1:
        return slice(0, batch_size)
    if batch_size % plan.process_count:
        raise ConfigError(f"batch_size ({batch_size}) must divide evenly over the "
                          f"{plan.process_count} hosts")
    per = batch_size // plan.process_count
    return slice(plan.process_index * per, (plan.process_index + 1) * per)
