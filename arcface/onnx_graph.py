"""Reading an ONNX graph for the importer: its constants, its nodes in order, its input.

Weights may reach a node through a chain of constant-only nodes rather than as initializers:
``Constant``, ``Identity`` of a constant, and in quantised files (e.g. OpenCV zoo's SFace,
``int8bq``) ``DequantizeLinear`` of int8 blocks followed by ``Reshape`` to the conv's shape.
:func:`load_graph` evaluates every such chain with NumPy (:func:`fold_constants`), so the
importer sees float weights exactly as onnxruntime computes them, and the folded nodes carry
no computation left (:func:`is_folded`). Only the ``onnx`` package is needed, lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arcface.errors import CheckpointError
from arcface.weight_mapping import postorder

__all__ = ["onnx_modules", "node_attrs", "load_graph", "input_dims", "dequantize_linear",
           "fold_constants", "is_folded", "runnable_onnx_bytes", "onnxruntime_session"]


def onnx_modules():
    """``(onnx, numpy_helper)``, imported lazily; :class:`CheckpointError` if missing."""
    try:
        import onnx  # noqa: WPS433 (lazy on purpose)
        from onnx import numpy_helper
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CheckpointError(
            "importing ONNX weights needs the 'onnx' package (pip install onnx)") from exc
    return onnx, numpy_helper


def node_attrs(node) -> dict:
    """A node's attributes as Python values."""
    onnx, _ = onnx_modules()
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def dequantize_linear(x, scale, zero_point=None, axis: int = 1, block_size: int = 0) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opset 21): ``(x - zero_point) * scale``, per tensor (scalar
    ``scale``), per axis (1-D ``scale`` along ``axis``) or blocked (``block_size`` > 0: ``scale``
    has ``x``'s rank with ``ceil(x.shape[axis] / block_size)`` entries along ``axis``, each
    covering ``block_size`` consecutive elements). Computed as onnxruntime does: the integer
    difference, then one float multiplication in ``scale``'s dtype."""
    x = np.asarray(x)
    scale = np.asarray(scale)
    zp = np.zeros((), x.dtype) if zero_point is None else np.asarray(zero_point)
    if zp.shape not in ((), scale.shape):
        raise CheckpointError(f"DequantizeLinear: zero point of shape {zp.shape}, scale {scale.shape}")
    axis = axis % max(x.ndim, 1)
    if scale.size == 1 and block_size == 0:
        s, z = scale.reshape(()), zp.reshape(())
    elif block_size == 0:
        if scale.ndim != 1 or scale.shape[0] != x.shape[axis]:
            raise CheckpointError(f"DequantizeLinear: per-axis scale of shape {scale.shape} does "
                                  f"not fit axis {axis} of {x.shape}")
        shape = [1] * x.ndim
        shape[axis] = -1
        s, z = scale.reshape(shape), zp.reshape(shape) if zp.ndim else zp
    else:
        blocks = -(-x.shape[axis] // block_size)
        expect = tuple(blocks if i == axis else d for i, d in enumerate(x.shape))
        if scale.shape != expect:
            raise CheckpointError(f"DequantizeLinear: blocked scale of shape {scale.shape}, "
                                  f"expected {expect} for {x.shape} in blocks of {block_size}")
        s = np.repeat(scale, block_size, axis=axis).take(range(x.shape[axis]), axis=axis)
        z = np.repeat(zp, block_size, axis=axis).take(range(x.shape[axis]), axis=axis) if zp.ndim else zp
    diff = x.astype(np.int32) - np.asarray(z).astype(np.int32)
    return (diff.astype(scale.dtype) * s).astype(scale.dtype)


def _reshape(data: np.ndarray, shape: np.ndarray, allowzero: int = 0) -> np.ndarray:
    target = [int(d) for d in np.asarray(shape).reshape(-1)]
    if not allowzero:
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return np.reshape(data, target)


_FOLDABLE = ("Identity", "DequantizeLinear", "Reshape")


def fold_constants(nodes, consts: dict) -> None:
    """Evaluate, in order, every node of ``nodes`` whose inputs are all constants and whose op is
    one a weight may pass through (``Identity``, ``DequantizeLinear``, ``Reshape``), adding its
    output to ``consts``."""
    for n in nodes:
        ins = [i for i in n.input if i]
        if (n.op_type not in _FOLDABLE or not ins or any(i not in consts for i in ins)
                or n.output[0] in consts):
            continue
        a = node_attrs(n)
        if n.op_type == "Identity":
            consts[n.output[0]] = consts[ins[0]]
        elif n.op_type == "DequantizeLinear":
            zp = consts[n.input[2]] if len(n.input) > 2 and n.input[2] else None
            consts[n.output[0]] = dequantize_linear(consts[n.input[0]], consts[n.input[1]], zp,
                                                    int(a.get("axis", 1)), int(a.get("block_size", 0)))
        elif n.op_type == "Reshape":
            consts[n.output[0]] = _reshape(consts[n.input[0]], consts[n.input[1]], int(a.get("allowzero", 0)))


def is_folded(node, consts: dict) -> bool:
    """Whether every output of ``node`` is a constant (nothing left for the importer to map)."""
    return bool(node.output) and all(o in consts for o in node.output)


def _toposort(nodes, graph_outputs):
    """ONNX nodes in depth-first post-order from the graph outputs (a topological order)."""
    producers = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            producers[o] = i

    def parents(i):
        return [producers[t] for t in nodes[i].input if t in producers]

    roots = [producers[o] for o in graph_outputs if o in producers]
    return postorder(nodes, roots, parents)


def read_inputs(graph) -> list:
    """The graph's declared inputs that some node reads. The others are left-overs (the quantiser
    that made SFace's file kept the float weights' declarations beside their quantised
    replacements): not inputs of the computation, and onnxruntime would ask for them."""
    consumed = {t for n in graph.node for t in n.input}
    return [i for i in graph.input if i.name in consumed]


def load_graph(onnx_path):
    """``(path, graph, image_input, nodes, consts)`` of an ONNX file: its nodes in topological
    order and every constant tensor (initializers, ``Constant`` nodes, folded chains)."""
    onnx, numpy_helper = onnx_modules()
    path = Path(onnx_path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        raise CheckpointError(f"{path}: not a readable ONNX model ({exc})") from exc
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            a = node_attrs(n)
            if "value" in a:
                consts[n.output[0]] = numpy_helper.to_array(a["value"])
            elif "value_float" in a:
                consts[n.output[0]] = np.array(a["value_float"], np.float32)
            elif "value_floats" in a:
                consts[n.output[0]] = np.array(a["value_floats"], np.float32)
    init_names = set(consts)
    inputs = [i for i in read_inputs(graph) if i.name not in init_names]
    if len(inputs) != 1:
        raise CheckpointError(f"{path}: expected one image input, found {[i.name for i in inputs]}")
    nodes = _toposort(list(graph.node), [o.name for o in graph.output])
    fold_constants(nodes, consts)
    return path, graph, inputs[0], nodes, consts


def input_dims(inp) -> list:
    """The declared dimensions of a graph input (``None`` where free)."""
    return [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]


def runnable_onnx_bytes(onnx_path) -> bytes:
    """The file's bytes as onnxruntime should run them: graph inputs that no node reads removed
    (some converters leave the float weights declared beside their quantised replacements, and
    onnxruntime then asks for them) and the batch dimension of the image input and outputs
    made free (InsightFace's exports declare ``[1, 512]``; the computation is unchanged)."""
    onnx, _ = onnx_modules()
    model = onnx.load(str(onnx_path))
    init = {t.name for t in model.graph.initializer}
    keep = read_inputs(model.graph)
    del model.graph.input[:]
    model.graph.input.extend(keep)
    for v in [i for i in model.graph.input if i.name not in init] + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "batch"
    return model.SerializeToString()


def onnxruntime_session(onnx_path, threads: int = 0):
    """An onnxruntime CPU session of :func:`runnable_onnx_bytes` (``threads`` 0: its default)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CheckpointError("running an ONNX file needs 'onnxruntime' (pip install onnxruntime)") from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(runnable_onnx_bytes(onnx_path), options, providers=["CPUExecutionProvider"])
