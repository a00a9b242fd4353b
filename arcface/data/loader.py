"""The training loader: one schedule, two engines (tf.data or threaded NumPy/OpenCV).

Batches are a pure function of ``(seed, global step)``: epoch ``e`` visits the samples in
the permutation ``default_rng((seed, e))``, without the last partial batch. So a run
resumed at step ``t`` sees exactly the batches an uninterrupted run would, whichever
engine or number of workers decodes them. Augmentation is not done here: it is a part
of the training model (Keras layers, seeded), so both engines feed the same samples.

- :class:`NumpyBatchLoader`: a Python iterator over ``(uint8 images, int32 labels)``;
  a thread pool decodes whole batches ahead (OpenCV releases the GIL while decoding), so
  it scales with cores and needs no TensorFlow (the GPU machine has none).
- :func:`make_tf_dataset`: the same batches as a ``tf.data`` pipeline, used when
  TensorFlow is the Keras backend.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Protocol, Sequence

import cv2
import numpy as np

from arcface.errors import ConfigError, DataFormatError


class ImageSource(Protocol):
    """What the loader needs of a dataset (image folder, RecordIO, ...)."""

    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int: ...

    def read_bytes(self, index: int) -> bytes: ...


def open_image_source(path: str | os.PathLike) -> ImageSource:
    """Open a training set: a RecordIO folder (``train.rec``), a ``.rec`` file, or an
    image folder with one sub-folder per identity."""
    from arcface.data.folders import scan_image_folder
    from arcface.data.recordio import RecordIODataset

    path = os.fspath(path)
    if path.endswith(".rec") or os.path.isfile(os.path.join(path, "train.rec")):
        return RecordIODataset(path)
    return scan_image_folder(path)


class BatchSchedule:
    """Which samples form the batch of each global step (seeded, resumable)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0):
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be > 0, got {batch_size}")
        if num_samples < batch_size:
            raise DataFormatError(
                f"the training set has {num_samples} samples, fewer than one batch of {batch_size}")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.steps_per_epoch = self.num_samples // self.batch_size
        self._epoch = -1
        self._order = np.empty(0, np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The permutation of sample indices for ``epoch``."""
        if epoch != self._epoch:
            self._order = np.random.default_rng((self.seed, epoch)).permutation(self.num_samples)
            self._epoch = epoch
        return self._order

    def indices(self, step: int) -> np.ndarray:
        """Sample indices of the batch at global ``step``."""
        epoch, position = divmod(int(step), self.steps_per_epoch)
        start = position * self.batch_size
        return self.epoch_order(epoch)[start:start + self.batch_size]


def fit_to_size(image: np.ndarray, size: int, center_crop: bool = False) -> np.ndarray:
    """Resize an RGB image to ``size``x``size``; with ``center_crop`` first resize to
    ``size·128/112`` and keep the centre (the parent's ``is_ccrop``)."""
    if center_crop:
        big = int(round(size * 128 / 112))
        image = cv2.resize(image, (big, big), interpolation=cv2.INTER_AREA)
        off = (big - size) // 2
        return image[off:off + size, off:off + size]
    if image.shape[0] != size or image.shape[1] != size:
        interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interp)
    return image


def decode_batch(items: Sequence[bytes | str], size: int, center_crop: bool = False) -> np.ndarray:
    """Decode encoded images (bytes) or paths into one ``(n, size, size, 3)`` RGB uint8 array."""
    from arcface.data.images import decode_image

    out = np.empty((len(items), size, size, 3), np.uint8)
    for k, item in enumerate(items):
        out[k] = fit_to_size(decode_image(item), size, center_crop)
    return out


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class NumpyBatchLoader:
    """Iterate ``(images, labels)`` for global steps ``[start_step, stop_step)``.

    ``workers`` threads each decode whole batches; up to ``prefetch`` batches are in
    flight ahead of the consumer. ``rows`` (default: all) picks the part of every global
    batch this process decodes: one host's slice on a multi-host run.
    """

    def __init__(self, source: ImageSource, schedule: BatchSchedule, start_step: int = 0,
                 stop_step: int | None = None, input_size: int = 112, workers: int = 0,
                 prefetch: int | None = None, center_crop: bool = False, rows: slice | None = None):
        self.source = source
        self.schedule = schedule
        self.start_step = int(start_step)
        self.stop_step = int(stop_step) if stop_step is not None else None
        self.input_size = int(input_size)
        self.workers = workers or default_workers()
        self.prefetch = prefetch or max(2, 2 * self.workers)
        self.center_crop = center_crop
        self.rows = slice(None) if rows is None else rows
        self.labels = np.asarray(source.labels, np.int32)

    def __len__(self) -> int:
        if self.stop_step is None:
            raise TypeError("an endless loader has no length")
        return self.stop_step - self.start_step

    def load_step(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch of one global step, decoded in the calling thread."""
        return self.load_indices(self.schedule.indices(step)[self.rows])

    def load_indices(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode the samples ``idx`` into one batch (safe to call from worker threads)."""
        items = [self.source.read_bytes(int(i)) for i in idx]
        return decode_batch(items, self.input_size, self.center_crop), self.labels[idx]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # indices are computed in this thread (the schedule caches one permutation);
        # decoding happens in the pool, up to `prefetch` batches ahead
        pending: deque = deque()
        next_step = self.start_step
        with ThreadPoolExecutor(self.workers, thread_name_prefix="iomface-decode") as pool:
            while True:
                while len(pending) < self.prefetch and (self.stop_step is None or next_step < self.stop_step):
                    pending.append(pool.submit(self.load_indices, self.schedule.indices(next_step)[self.rows]))
                    next_step += 1
                if not pending:
                    return
                yield pending.popleft().result()


def make_tf_dataset(source: ImageSource, schedule: BatchSchedule, start_step: int = 0,
                    stop_step: int | None = None, input_size: int = 112,
                    center_crop: bool = False):
    """The same batches as :class:`NumpyBatchLoader`, as a ``tf.data.Dataset``."""
    import tensorflow as tf

    from arcface.data.folders import ImageFolder

    batch = schedule.batch_size

    def step_indices():
        step = start_step
        while stop_step is None or step < stop_step:
            yield schedule.indices(step)
            step += 1

    labels = tf.constant(np.asarray(source.labels, np.int32))
    if isinstance(source, ImageFolder):
        paths = tf.constant(source.paths)

        def read(i):
            return tf.io.read_file(tf.gather(paths, i))
    else:
        def read(i):
            data = tf.numpy_function(lambda j: source.read_bytes(int(j)), [i], tf.string,
                                     stateful=False)
            data.set_shape(())
            return data

    def decode(data):
        # TF's default JPEG IDCT is the fast, inexact one; OpenCV (NumpyBatchLoader) uses
        # libjpeg's accurate integer IDCT, which INTEGER_ACCURATE matches pixel for pixel
        return tf.cond(
            tf.io.is_jpeg(data),
            lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(data, channels=3, expand_animations=False))

    def load(i):
        image = decode(read(i))
        if center_crop:
            big = int(round(input_size * 128 / 112))
            image = tf.image.resize(image, (big, big), antialias=True)
            image = tf.image.crop_to_bounding_box(image, (big - input_size) // 2,
                                                  (big - input_size) // 2, input_size, input_size)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        else:
            shape = tf.shape(image)
            image = tf.cond(
                tf.logical_and(tf.equal(shape[0], input_size), tf.equal(shape[1], input_size)),
                lambda: image,
                lambda: tf.cast(tf.clip_by_value(tf.round(
                    tf.image.resize(image, (input_size, input_size), antialias=True)), 0, 255), tf.uint8))
        image.set_shape((input_size, input_size, 3))
        return image, tf.gather(labels, i)

    ds = tf.data.Dataset.from_generator(
        step_indices, output_signature=tf.TensorSpec((batch,), tf.int64)).unbatch()
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def make_train_loader(source: ImageSource, batch_size: int, seed: int = 0, start_step: int = 0,
                      stop_step: int | None = None, input_size: int = 112, workers: int = 0,
                      center_crop: bool = False, engine: str = "auto", rows: slice | None = None):
    """The loader ``fit`` takes on the current backend: ``tf.data`` under TensorFlow,
    :class:`NumpyBatchLoader` otherwise (``engine`` = "auto", "tf" or "numpy"). ``rows``:
    the part of each global batch this process loads (a multi-host run's slice; NumPy
    engine only)."""
    import keras

    schedule = BatchSchedule(len(source), batch_size, seed)
    if engine == "auto":
        engine = "tf" if keras.backend.backend() == "tensorflow" else "numpy"
    if engine == "tf":
        if rows is not None and rows.indices(batch_size) != (0, batch_size, 1):
            raise ConfigError("a multi-host slice of each batch needs the NumPy loader engine (JAX)")
        return make_tf_dataset(source, schedule, start_step, stop_step, input_size, center_crop)
    if engine == "numpy":
        return NumpyBatchLoader(source, schedule, start_step, stop_step, input_size, workers,
                                center_crop=center_crop, rows=rows)
    raise ConfigError(f"unknown loader engine {engine!r}: use 'auto', 'tf' or 'numpy'")
