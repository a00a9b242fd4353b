"""Import TensorFlow Lite face models into our Keras backbones.

The flatbuffer is read with the ``tflite`` package (the TFLite schema compiled for Python;
imported lazily, pure Python, no TensorFlow needed). The graph is rebuilt as *our*
registered backbone made of real layers (Conv2D, DepthwiseConv2D, BatchNormalization,
PReLU), so the result trains, saves and runs on every Keras backend like a model built here.

Usage::

    from arcface.tflite_import import import_tflite
    model = import_tflite("MobileFaceNet.tflite", "MobileFaceNet_TF", embd_shape=192)
    model.save_weights("backbone.weights.h5")

How it works
------------
1. :func:`read_tflite` parses the file (one subgraph, float32 weights, or float16 weights
   behind ``DEQUANTIZE``; integer-quantised models are refused).
2. Ops are mapped to weight-carrying layers: ``CONV_2D`` (kernel ``OHWI -> HWIO``) and
   ``DEPTHWISE_CONV_2D`` (``1HWC -> HW1C``), their bias being a BatchNorm the converter
   folded (rebuilt as an identity BN carrying the bias, listed in
   ``model.tflite_import_report["unfolded_bn"]``); ``SAME`` padding becomes TensorFlow's
   explicit, possibly asymmetric, zero padding. PReLU appears either as the ``PRELU`` op or
   written out as TF-slim does, ``relu(x) + c * (x - |x|)`` (ops ``RELU``, ``ABS``, ``SUB``,
   ``MUL``, ``ADD``; slope ``2c``): both become one PReLU. An ``ADD`` of two activations is a
   residual shortcut; ``RESHAPE`` / ``SQUEEZE`` are the final flatten. Any other op, a fused
   activation, a dilation or a channel multiplier is refused with
   :class:`~arcface.errors.CheckpointError` naming the op (index, type, output tensor).
3. The mapped layers and our backbone's layers are matched one by one
   (:mod:`arcface.weight_mapping`: kind, shape, stride, padding; residual count) **before**
   any weight is copied; the first mismatch is refused naming both sides.

Input convention
----------------
A TFLite model takes NHWC images already normalised outside the graph; the file does not
say how. ``input_mean`` / ``input_std`` (default ``127.5`` / ``128``, the TF-slim
MobileFaceNet's ``(x - 127.5) / 128``) state it, and must equal the normalisation our
backbone does inside (its ``pixel_norm`` layer), so that the imported model takes RGB
0..255 like every model here. :func:`run_tflite` runs the file itself (reference for tests).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arcface.errors import CheckpointError
from arcface.weight_mapping import (ForeignParam, apply_plan, count_add_layers, plan_weights,
                                    postorder, same_pads, save)

__all__ = ["import_tflite", "read_tflite", "tflite_params", "run_tflite", "TFLiteRunner", "save",
           "import_and_check", "compare_with_tflite",
           "TFLiteGraph", "TFLiteOp", "TFLiteTensor"]

log = logging.getLogger(__name__)
SOURCE = "TFLite"

_ACTIVATIONS = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "SUB", "MUL"}  # ops with a fused activation
_PASSIVE = {"RESHAPE", "SQUEEZE"}


@dataclass
class TFLiteTensor:
    """A tensor of the graph: ``data`` is set for constants (float32 after dequantising)."""

    index: int
    name: str
    shape: tuple
    dtype: str
    data: np.ndarray | None = None


@dataclass
class TFLiteOp:
    """One operator: its type name (``CONV_2D``...), tensor indices and builtin options."""

    index: int
    type: str
    inputs: list
    outputs: list
    options: dict = field(default_factory=dict)


@dataclass
class TFLiteGraph:
    """The parsed file: tensors, ops in execution order, graph inputs and outputs."""

    path: str
    tensors: list
    ops: list
    inputs: list
    outputs: list

    def describe(self, op: TFLiteOp) -> str:
        out = self.tensors[op.outputs[0]].name if op.outputs else "?"
        return f"TFLite op #{op.index} {op.type} (output {out!r})"


def _tflite():
    try:
        import tflite  # noqa: WPS433 (lazy on purpose)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CheckpointError("importing TFLite models needs the 'tflite' package "
                              "(pip install tflite)") from exc
    return tflite


_NP_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "INT64": np.int64,
             "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16, "FLOAT64": np.float64}


def _type_names(tflite) -> dict[int, str]:
    """TensorType code -> name (``FLOAT32``...)."""
    return {getattr(tflite.TensorType, n): n for n in dir(tflite.TensorType) if n.isupper()}


def _options(tflite, op, type_name: str) -> dict:
    """The builtin options the importer checks, as a plain dict."""
    table = op.BuiltinOptions()
    if table is None:
        return {}
    if type_name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        cls = tflite.Conv2DOptions if type_name == "CONV_2D" else tflite.DepthwiseConv2DOptions
        o = cls()
        o.Init(table.Bytes, table.Pos)
        out = {"padding": "SAME" if o.Padding() == tflite.Padding.SAME else "VALID",
               "strides": [int(o.StrideH()), int(o.StrideW())],
               "dilations": [int(o.DilationHFactor()), int(o.DilationWFactor())],
               "activation": int(o.FusedActivationFunction())}
        if type_name == "DEPTHWISE_CONV_2D":
            out["depth_multiplier"] = int(o.DepthMultiplier())
        return out
    if type_name in ("ADD", "SUB", "MUL"):
        cls = {"ADD": tflite.AddOptions, "SUB": tflite.SubOptions, "MUL": tflite.MulOptions}[type_name]
        o = cls()
        o.Init(table.Bytes, table.Pos)
        return {"activation": int(o.FusedActivationFunction())}
    return {}


def read_tflite(path) -> TFLiteGraph:
    """Parse a ``.tflite`` file into a :class:`TFLiteGraph` (typed error if unreadable)."""
    tflite = _tflite()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"TFLite file not found: {path}")
    buf = path.read_bytes()
    try:
        if len(buf) < 8 or buf[4:8] != b"TFL3":
            raise ValueError("no TFL3 file identifier")
        model = tflite.Model.GetRootAsModel(buf, 0)
        n_sub = model.SubgraphsLength()
        if n_sub != 1:
            raise CheckpointError(f"{path}: {n_sub} subgraphs; only single-graph models are supported")
        sg = model.Subgraphs(0)
        type_names = _type_names(tflite)
        tensors = []
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            dtype = type_names.get(t.Type(), f"type{t.Type()}")
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            q = t.Quantization()
            if q is not None and (q.ScaleLength() > 0 or q.ZeroPointLength() > 0) and \
                    dtype not in ("FLOAT32", "FLOAT16"):
                raise CheckpointError(f"{path}: tensor {t.Name().decode()!r} is {dtype}-quantised; "
                                      f"only float models can be imported")
            data = None
            b = model.Buffers(t.Buffer())
            if b is not None and b.DataLength() > 0:
                if dtype not in _NP_TYPES:
                    raise CheckpointError(f"{path}: constant {t.Name().decode()!r} of type {dtype}")
                data = np.frombuffer(b.DataAsNumpy().tobytes(), _NP_TYPES[dtype]).reshape(shape)
            elif b is not None and b.Offset() > 1:
                raise CheckpointError(f"{path}: weights stored outside the flatbuffer "
                                      f"(buffer offsets) are not supported")
            tensors.append(TFLiteTensor(i, t.Name().decode(), shape, dtype, data))
        ops = []
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            oc = model.OperatorCodes(op.OpcodeIndex())
            code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
            name = tflite.opcode2name(code)
            if name == "CUSTOM":
                name = f"CUSTOM:{(oc.CustomCode() or b'?').decode()}"
            ins = [int(v) for v in op.InputsAsNumpy()] if op.InputsLength() else []
            outs = [int(v) for v in op.OutputsAsNumpy()] if op.OutputsLength() else []
            ops.append(TFLiteOp(i, name, ins, outs, _options(tflite, op, name)))
        inputs = [int(v) for v in sg.InputsAsNumpy()]
        outputs = [int(v) for v in sg.OutputsAsNumpy()]
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt flatbuffer raises many types
        raise CheckpointError(f"{path}: not a readable TFLite model ({exc})") from exc
    return TFLiteGraph(str(path), tensors, ops, inputs, outputs)


# --------------------------------------------------------------------------- graph -> layers


@dataclass
class _Node:
    """A layer-level node: a weight-carrying param, a residual add or a passive reshape."""

    kind: str  # param | add | passive
    inputs: list  # activation tensor indices, in the op's operand order
    output: int
    param: ForeignParam | None = None


def _const(graph: TFLiteGraph, t: int) -> np.ndarray | None:
    return None if t < 0 else graph.tensors[t].data


def _refuse(graph, op, why: str) -> CheckpointError:
    return CheckpointError(f"{graph.describe(op)}: {why}")


def _dequantized_constants(graph: TFLiteGraph) -> set:
    """Fold ``DEQUANTIZE`` of float16 constants into float32 constants; return those op indices."""
    folded = set()
    for op in graph.ops:
        if op.type == "DEQUANTIZE" and len(op.inputs) == 1:
            src = graph.tensors[op.inputs[0]]
            if src.data is not None and src.dtype == "FLOAT16":
                graph.tensors[op.outputs[0]].data = src.data.astype(np.float32)
                folded.add(op.index)
    return folded


def _conv_param(graph, op) -> ForeignParam:
    """A conv op as a canonical param (the caller has refused a fused activation)."""
    o = op.options
    if o.get("dilations", [1, 1]) != [1, 1]:
        raise _refuse(graph, op, f"dilation {o['dilations']} is not supported")
    w = _const(graph, op.inputs[1])
    if w is None:
        raise _refuse(graph, op, "its weights are not a constant")
    w = np.asarray(w, np.float32)
    x_shape = graph.tensors[op.inputs[0]].shape
    if op.type == "CONV_2D":  # (O, kh, kw, I/g)
        o_ch, kh, kw, ipg = w.shape
        kernel = w.transpose(1, 2, 3, 0)
        groups = int(x_shape[-1]) // ipg if x_shape and ipg else 1
    else:  # DEPTHWISE_CONV_2D: (1, kh, kw, C * multiplier)
        if o.get("depth_multiplier", 1) not in (0, 1) or w.shape[3] != x_shape[-1]:
            raise _refuse(graph, op, "a depthwise conv with a channel multiplier is not supported")
        _, kh, kw, o_ch = w.shape
        kernel = w.transpose(1, 2, 0, 3)  # (kh, kw, 1, C)
        groups = o_ch
    strides = o["strides"]
    pads = same_pads(x_shape[1:3], (kh, kw), strides) if o["padding"] == "SAME" else [0, 0, 0, 0]
    arrays = {"kernel": np.ascontiguousarray(kernel)}
    bias = _const(graph, op.inputs[2]) if len(op.inputs) > 2 else None
    if len(op.inputs) > 2 and op.inputs[2] >= 0 and bias is None:
        raise _refuse(graph, op, "its bias is not a constant")
    if bias is not None:
        arrays["bias"] = np.asarray(bias, np.float32).reshape(-1)
    name = graph.tensors[op.inputs[1]].name
    return ForeignParam("conv", name, arrays, {"groups": groups, "strides": strides, "pads": pads,
                                               "file_shape": tuple(w.shape), "op": op.index},
                        source=SOURCE)


def _match_prelu(graph, add, producer, consumers):
    """``ADD(RELU(x), MUL(c, SUB(x, ABS(x))))`` -> ``(x, slope, inner ops)``, else None.

    ADD operands in either order; the MUL may be a chain of MULs by constants (TF-slim's
    literal ``alpha * (x - |x|) * 0.5``), whose product is ``c``; the slope is ``2c``.
    """
    if add.options.get("activation", 0) != 0 or len(add.inputs) != 2:
        return None
    ops = [producer.get(t) for t in add.inputs]
    relu = next((o for o in ops if o is not None and o.type == "RELU"), None)
    other = next((o for o in ops if o is not None and o is not relu), None)
    if relu is None or other is None or other.type != "MUL":
        return None
    x = relu.inputs[0]
    inner, c, node = [relu], np.float32(1.0), other
    while node is not None and node.type == "MUL" and node.options.get("activation", 0) == 0:
        consts = [_const(graph, t) for t in node.inputs]
        if len(node.inputs) != 2 or sum(v is not None for v in consts) != 1:
            return None
        c = c * np.asarray(next(v for v in consts if v is not None), np.float32)
        inner.append(node)
        node = producer.get(next(t for t, v in zip(node.inputs, consts) if v is None))
    sub = node
    if sub is None or sub.type != "SUB" or sub.options.get("activation", 0) != 0:
        return None
    absop = producer.get(sub.inputs[1])
    if sub.inputs[0] != x or absop is None or absop.type != "ABS" or absop.inputs[0] != x:
        return None
    inner += [sub, absop]
    for op in inner:  # intermediate results must feed nothing else
        if len(consumers.get(op.outputs[0], ())) != 1:
            return None
    return x, 2.0 * np.asarray(c, np.float32).reshape(-1), inner


def _layer_nodes(graph: TFLiteGraph) -> dict:
    """Map the ops to layer-level nodes keyed by output tensor; refuse anything unknown."""
    folded = _dequantized_constants(graph)
    producer = {t: op for op in graph.ops for t in op.outputs}
    consumers: dict = {}
    for op in graph.ops:
        for t in op.inputs:
            consumers.setdefault(t, []).append(op)
    in_prelu = set()  # indices of the RELU/ABS/SUB/MUL ops that a PReLU pattern consumed
    nodes = {}
    for op in graph.ops:
        if op.type == "ADD":
            m = _match_prelu(graph, op, producer, consumers)
            if m is not None:
                x, slope, inner = m
                in_prelu.update(o.index for o in inner)
                p = ForeignParam("prelu", graph.tensors[op.outputs[0]].name, {"slope": slope},
                                 {"op": op.index}, source=SOURCE)
                nodes[op.outputs[0]] = _Node("param", [x], op.outputs[0], p)
    for op in graph.ops:
        if op.index in folded or op.index in in_prelu or op.outputs[0] in nodes:
            continue
        t = op.type
        if t in _ACTIVATIONS and op.options.get("activation", 0) != 0:
            raise _refuse(graph, op, "a fused activation has no counterpart in our backbones")
        if t in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            nodes[op.outputs[0]] = _Node("param", [op.inputs[0]], op.outputs[0], _conv_param(graph, op))
        elif t == "PRELU":
            slope = _const(graph, op.inputs[1])
            if slope is None:
                raise _refuse(graph, op, "its slope is not a constant")
            p = ForeignParam("prelu", graph.tensors[op.inputs[1]].name,
                             {"slope": np.asarray(slope, np.float32).reshape(-1)}, {"op": op.index},
                             source=SOURCE)
            nodes[op.outputs[0]] = _Node("param", [op.inputs[0]], op.outputs[0], p)
        elif t == "ADD":
            if any(_const(graph, i) is not None for i in op.inputs):
                raise _refuse(graph, op, "adds a constant; no counterpart in our backbones")
            nodes[op.outputs[0]] = _Node("add", list(op.inputs), op.outputs[0])
        elif t in _PASSIVE:
            nodes[op.outputs[0]] = _Node("passive", [op.inputs[0]], op.outputs[0])
        else:
            raise _refuse(graph, op, "this op has no counterpart in our backbones")
    return nodes


def tflite_params(graph: TFLiteGraph) -> tuple[list[ForeignParam], int]:
    """The weight-carrying layers in depth-first post-order from the output, and the number
    of residual adds."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise CheckpointError(f"{graph.path}: expected one input and one output, found "
                              f"{len(graph.inputs)} and {len(graph.outputs)}")
    nodes = _layer_nodes(graph)

    def parents(t):
        return [i for i in nodes[t].inputs if i in nodes]

    out = graph.outputs[0]
    if out not in nodes:
        raise CheckpointError(f"{graph.path}: the output is not computed by any supported op")
    ordered = postorder(nodes, [out], parents)
    reached = {n.output for n in ordered}
    for n in ordered:  # every activation comes from the image input or a mapped node
        for i in n.inputs:
            if i not in nodes and i != graph.inputs[0]:
                raise CheckpointError(f"{graph.path}: tensor {graph.tensors[i].name!r} comes from "
                                      f"neither the input nor a supported op")
    unused = [t for t in nodes if t not in reached]
    if unused:
        raise CheckpointError(f"{graph.path}: ops not on the path to the output, e.g. the one "
                              f"writing {graph.tensors[unused[0]].name!r}")
    params = [n.param for n in ordered if n.kind == "param"]
    return params, sum(n.kind == "add" for n in ordered)


def import_tflite(tflite_path, backbone_type: str = "MobileFaceNet_TF", embd_shape: int = 192,
                  input_size: int = 112, input_mean: float = 127.5, input_std: float = 128.0,
                  model=None, graph: TFLiteGraph | None = None, **backbone_kwargs):
    """Build ``backbone_type`` and load the weights of a float TFLite file into it.

    ``model`` (optional) is an already-built backbone to fill; ``graph`` an already-parsed
    file (e.g. edited by a test); ``backbone_kwargs`` go to ``build_backbone``. The file is
    assumed to take ``(rgb - input_mean) / input_std``, which must be what the backbone's
    ``pixel_norm`` layer does. Raises :class:`CheckpointError` on the first problem, before
    any weight is written. The model's ``tflite_import_report`` lists what was unfolded.
    """
    graph = graph or read_tflite(tflite_path)
    dims = graph.tensors[graph.inputs[0]].shape
    if len(dims) != 4 or dims[3] != 3:
        raise CheckpointError(f"{graph.path}: input shape {dims} is not NHWC with 3 channels")
    if tuple(dims[1:3]) != (input_size, input_size):
        raise CheckpointError(f"{graph.path}: input is {dims[1]}x{dims[2]}, "
                              f"input_size={input_size} requested")
    params, n_adds = tflite_params(graph)
    if model is None:
        from arcface.backbones import build_backbone

        model = build_backbone(backbone_type, embd_shape=embd_shape, input_size=input_size,
                               **backbone_kwargs)
    _check_normalisation(model, input_mean, input_std, graph.path)
    plan, unfolded = plan_weights(params, model, SOURCE)
    if count_add_layers(model) != n_adds:
        raise CheckpointError(f"{graph.path}: {n_adds} residual ADD ops in the TFLite graph, "
                              f"{count_add_layers(model)} Add layers in our {model.name}: "
                              f"shortcuts differ")
    eps_changed = apply_plan(plan)
    for name, bn in unfolded:
        log.info("TFLite conv %r carries a folded BN; %r set to identity + bias", name, bn)
    model.tflite_import_report = {
        "source": graph.path, "n_params": len(params), "residual_adds": n_adds,
        "unfolded_bn": [b for _, b in unfolded], "epsilon_changed": eps_changed,
        "file_input_convention": {"layout": "NHWC", "channels": "RGB", "mean": input_mean,
                                  "std": input_std},
    }
    return model


def _check_normalisation(model, mean: float, std: float, path: str) -> None:
    from arcface.backbones.common import PixelNormalization

    norm = [layer for layer in model.layers if isinstance(layer, PixelNormalization)]
    if len(norm) != 1:
        raise CheckpointError(f"our {model.name} has no single PixelNormalization layer")
    ours = (norm[0].mean, norm[0].std)
    if not np.allclose(ours, (mean, std)):
        raise CheckpointError(f"{path}: the file takes (x - {mean:g}) / {std:g} but our "
                              f"{model.name} normalises (x - {ours[0]:g}) / {ours[1]:g}")


class TFLiteRunner:
    """The TFLite file's own interpreter: the reference the importer is checked against.

    Runs at the file's own batch size, padding the last batch, since files such as the slim
    MobileFaceNet fix it in a RESHAPE. Uses LiteRT (``ai_edge_litert``) when installed, else
    TensorFlow's ``tf.lite.Interpreter``.
    """

    def __init__(self, tflite_path, num_threads: int = 2):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                from ai_edge_litert.interpreter import Interpreter  # noqa: WPS433
            except ImportError:
                import tensorflow as tf  # noqa: WPS433 (lazy on purpose)

                Interpreter = tf.lite.Interpreter  # noqa: N806
            self.interpreter = Interpreter(model_path=str(tflite_path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        inp = self.interpreter.get_input_details()[0]
        self._input, self.batch = inp["index"], int(inp["shape"][0]) or 1
        self.input_shape = tuple(int(v) for v in inp["shape"][1:])
        out = self.interpreter.get_output_details()[0]
        self._output, self.dim = out["index"], int(out["shape"][-1])

    def __call__(self, images, input_mean: float = 127.5, input_std: float = 128.0) -> np.ndarray:
        """Outputs ``(N, dim)`` on RGB 0..255 ``images`` ``(N, H, W, 3)``, fed as
        ``(x - input_mean) / input_std``."""
        images = np.asarray(images)
        outs = []
        for start in range(0, len(images), self.batch):
            x = (images[start:start + self.batch].astype(np.float32) - input_mean) / np.float32(input_std)
            n = len(x)
            if n < self.batch:
                x = np.concatenate([x, np.zeros((self.batch - n,) + x.shape[1:], np.float32)])
            self.interpreter.set_tensor(self._input, np.ascontiguousarray(x))
            self.interpreter.invoke()
            outs.append(np.array(self.interpreter.get_tensor(self._output))[:n])
        return np.concatenate(outs).reshape(len(images), -1)


def run_tflite(tflite_path, images, input_mean: float = 127.5, input_std: float = 128.0,
               num_threads: int = 2) -> np.ndarray:
    """Outputs of the TFLite file itself on RGB 0..255 ``images`` (see :class:`TFLiteRunner`)."""
    return TFLiteRunner(tflite_path, num_threads)(images, input_mean, input_std)


def compare_with_tflite(model, tflite_path, images, input_mean: float = 127.5,
                        input_std: float = 128.0) -> dict:
    """Embed ``images`` with the imported model and with the interpreter: min cosine, max diff."""
    from arcface.import_check import agreement

    return agreement(model, images, run_tflite(tflite_path, images, input_mean, input_std))


def import_and_check(tflite_path, out_dir, backbone_type: str = "MobileFaceNet_TF",
                     embd_shape: int | None = None, input_size: int = 112,
                     input_mean: float = 127.5, input_std: float = 128.0,
                     expected_sha256: str | None = None, source: str = "",
                     check_data: str | None = None, check_n: int = 32,
                     overwrite: bool = False, test_dataset: str | None = None) -> dict:
    """Import ``tflite_path``, check it against the interpreter, write a model folder.

    The folder gets ``backbone.weights.h5``, ``config.yaml`` and ``import.json`` (the
    returned report). Nothing is written when the SHA-256 differs from ``expected_sha256``,
    the graph does not fit, or the check fails (cosine <= 0.9999 or max diff >= 1e-3).
    ``check_n=0`` skips the check.
    """
    import datetime
    import json
    from collections import Counter

    import keras

    from arcface.import_check import check_images, checked_file, require_agreement, stage1_config
    from arcface.pretrained import write_model_folder

    path, digest = checked_file(tflite_path, "TFLite", expected_sha256)
    graph = read_tflite(path)
    if embd_shape is None:
        embd_shape = int(graph.tensors[graph.outputs[0]].shape[-1])
    model = import_tflite(path, backbone_type, embd_shape=embd_shape, input_size=input_size,
                          input_mean=input_mean, input_std=input_std, graph=graph)
    report = {k: v for k, v in model.tflite_import_report.items() if k != "source"}
    report.update(file=path.name, size=path.stat().st_size, sha256=digest, source=source,
                  backbone_type=backbone_type, embd_shape=embd_shape, input_size=input_size,
                  parameters=int(model.count_params()),
                  ops=dict(sorted(Counter(op.type for op in graph.ops).items())),
                  keras=keras.__version__, backend=keras.backend.backend(),
                  date=datetime.date.today().isoformat())
    if check_n:
        images, names = check_images(check_data, check_n, input_size)
        check = compare_with_tflite(model, path, images, input_mean, input_std)
        check["images"] = "random images" if names is None else f"images of {check_data}"
        report["check"] = check
        require_agreement(check, path, "the interpreter")
    name = os.path.basename(os.path.normpath(os.fspath(out_dir)))
    config = stage1_config(name, path, "scripts/import_tflite.py", digest, source=source, input_size=input_size,
                           embd_shape=embd_shape, backbone_type=backbone_type, test_dataset=test_dataset)
    write_model_folder(model, out_dir, config,
                       {"import.json": (json.dumps(report, indent=2) + "\n").encode()},
                       overwrite=overwrite)
    return report
