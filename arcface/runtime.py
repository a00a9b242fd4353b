"""Stage-1 embeddings from a TFLite file of the backbone: the serving runtime.

:class:`TFLiteEmbedder` has the interface the template pipeline uses of
:class:`arcface.embed.Embedder` (``input_size``, ``embed_arrays``), and runs a ``.tflite`` file
of the backbone alone (input ``image``: aligned uint8 RGB crops ``(n, S, S, 3)``, any batch;
output ``embedding``: the backbone's raw ``(n, d)`` float32 embedding, L2-normalised here
exactly as :class:`~arcface.embed.Embedder` normalises the Keras backbone's). The file is made
by ``scripts/export_runtime.py`` (the TFLite converter on the Keras backbone), and on 500 LFW
faces gives the Keras backbone's codes in every group (see the model folder's ``runtime.json``).

The interpreter is LiteRT's (``ai_edge_litert``) when that package is installed, else
TensorFlow's ``tf.lite.Interpreter`` (deprecated by TensorFlow; imported lazily). Interpreters
are not thread-safe: the embedder keeps a pool of them, each used by one call at a time, made
when needed up to ``max_interpreters`` (callers beyond that wait for a free one), each running
``num_threads`` threads. A call's images go through in batches of at most ``batch_size``; an
interpreter is resized to each batch's size (a fraction of a millisecond once its arena has
grown; a face's embedding does not depend on the batch it is in).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import warnings

import numpy as np

from arcface.embed import l2_normalize
from arcface.errors import CheckpointError

#: the interpreter packages tried, in order: ``(package whose presence is checked, name)``
INTERPRETERS = (("ai_edge_litert", "ai_edge_litert"), ("tensorflow", "tensorflow.lite"))

_CREATE_LOCK = threading.Lock()
_created_any = False


def interpreter_name() -> str | None:
    """The interpreter :class:`TFLiteEmbedder` would use (``"ai_edge_litert"`` or
    ``"tensorflow.lite"``), or ``None`` when neither package is installed. Looked up, not
    imported (cheap: no TensorFlow import)."""
    for package, name in INTERPRETERS:
        try:
            if importlib.util.find_spec(package) is not None:
                return name
        except (ImportError, ValueError):
            continue
    return None


def interpreter_class():
    """``(Interpreter class, name)``: LiteRT's when installed, else ``tf.lite.Interpreter``;
    :class:`ImportError` when neither is."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("no TFLite interpreter: install ai-edge-litert (or TensorFlow)") from None
    return tf.lite.Interpreter, "tensorflow.lite"


def _quietly(make):
    """``make()`` with native standard error (fd 2) sent to /dev/null: the first interpreter of
    a process prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." there, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says. Only that first creation is silenced (callers hold
    ``_CREATE_LOCK``), at load time, before any thread of the caller's writes to fd 2."""
    global _created_any
    if _created_any:
        return make()
    try:
        saved = os.dup(2)
    except OSError:
        return make()
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                out = make()
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
    _created_any = True
    return out


class _Slot:
    """One interpreter, its input and output tensors, and the batch size it is allocated for."""

    def __init__(self, interpreter):
        self.interpreter = interpreter
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise CheckpointError(f"a stage-1 TFLite file has one input and one output, this one "
                                  f"{len(inputs)} and {len(outputs)}")
        self.input, self.output = inputs[0], outputs[0]
        self.batch = int(self.input["shape"][0])

    def run(self, images: np.ndarray) -> np.ndarray:
        it = self.interpreter
        if len(images) != self.batch:
            it.resize_tensor_input(self.input["index"], images.shape, strict=True)
            it.allocate_tensors()
            self.batch = len(images)
        it.set_tensor(self.input["index"], images)
        it.invoke()
        return np.array(it.get_tensor(self.output["index"]), np.float32)     # a copy: the arena is reused


class TFLiteEmbedder:
    """Aligned RGB crops → L2-normalised embeddings, with a TFLite file of the backbone.

    ``path``: the ``.tflite`` file (input uint8 ``(n, S, S, 3)`` with a free batch dimension,
    output float32 ``(n, d)``); ``expected_sha256``: refuse (:class:`CheckpointError`) a file
    whose bytes hash otherwise; ``num_threads``: threads of each interpreter (default: all
    cores); ``max_interpreters``: interpreters working at once (default: the cores);
    ``batch_size``: images per interpreter call.
    """

    def __init__(self, path, num_threads: int | None = None, batch_size: int = 16,
                 max_interpreters: int | None = None, expected_sha256: str | None = None):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                self._content = f.read()
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read the TFLite file ({e.strerror})") from None
        self.sha256 = hashlib.sha256(self._content).hexdigest()
        if expected_sha256 is not None and self.sha256 != expected_sha256:
            raise CheckpointError(f"{self.path}: SHA-256 {self.sha256} is not the expected {expected_sha256}")
        cores = os.cpu_count() or 1
        self.num_threads = int(num_threads or cores)
        self.batch_size = int(batch_size)
        self.max_interpreters = int(max_interpreters or cores)
        if self.num_threads < 1 or self.batch_size < 1 or self.max_interpreters < 1:
            raise ValueError("num_threads, batch_size and max_interpreters must be at least 1")
        self._cls, self.interpreter = interpreter_class()
        self._idle: list[_Slot] = []
        self._made = 0
        self._free = threading.Condition()
        first = self._new_slot()                     # checks the file now, at load time
        self._made = 1
        shape, signature = first.input["shape"], first.input.get("shape_signature", first.input["shape"])
        if (len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or first.input["dtype"] != np.uint8
                or int(signature[0]) != -1):
            raise CheckpointError(f"{self.path}: the input is {list(signature)} {np.dtype(first.input['dtype'])}, "
                                  "not uint8 (batch, S, S, 3) with a free batch dimension")
        if len(first.output["shape"]) != 2 or first.output["dtype"] != np.float32:
            raise CheckpointError(f"{self.path}: the output is {list(first.output['shape'])} "
                                  f"{np.dtype(first.output['dtype'])}, not float32 (batch, d)")
        self.input_size = int(shape[1])
        self.dim = int(first.output["shape"][1])
        self._idle.append(first)

    def __repr__(self) -> str:
        return (f"TFLiteEmbedder({os.path.basename(self.path)!r}, {self.interpreter}, "
                f"{self.num_threads} thread(s) x {self.max_interpreters} interpreter(s))")

    def _new_slot(self) -> _Slot:
        def make():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")      # tf.lite.Interpreter's deprecation notice
                interpreter = self._cls(model_content=self._content, num_threads=self.num_threads)
            interpreter.allocate_tensors()
            return interpreter

        with _CREATE_LOCK:
            try:
                return _Slot(_quietly(make))
            except CheckpointError:
                raise
            except (ValueError, RuntimeError) as e:      # not a flatbuffer, an op the interpreter lacks
                raise CheckpointError(f"{self.path}: the TFLite interpreter cannot run it: {e}") from None

    def _acquire(self) -> _Slot:
        with self._free:
            while not self._idle and self._made >= self.max_interpreters:
                self._free.wait()
            if self._idle:
                return self._idle.pop()
            self._made += 1
        try:
            return self._new_slot()
        except BaseException:
            with self._free:
                self._made -= 1
                self._free.notify()
            raise

    def _release(self, slot: _Slot) -> None:
        with self._free:
            self._idle.append(slot)
            self._free.notify()

    @property
    def interpreters(self) -> int:
        """How many interpreters the pool holds (made so far)."""
        return self._made

    def embed_arrays(self, images: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Embeddings of an ``(n, S, S, 3)`` RGB array (uint8, or whole numbers 0..255)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape (n, H, W, 3), got {images.shape}")
        if images.shape[1:3] != (self.input_size, self.input_size):
            raise ValueError(f"expected {self.input_size}x{self.input_size} images, got "
                             f"{images.shape[2]}x{images.shape[1]}")
        if images.dtype != np.uint8:
            if not (np.all(np.isfinite(images)) and np.all((images >= 0) & (images <= 255))
                    and np.all(images == np.round(images))):
                raise ValueError("the TFLite embedder takes uint8 images (whole numbers 0..255)")
            images = images.astype(np.uint8)
        if not len(images):
            return np.zeros((0, self.dim), np.float32)
        slot = self._acquire()
        try:
            out = np.concatenate([slot.run(np.ascontiguousarray(images[i:i + self.batch_size]))
                                  for i in range(0, len(images), self.batch_size)])
        finally:
            self._release(slot)
        return l2_normalize(out) if normalize else out
