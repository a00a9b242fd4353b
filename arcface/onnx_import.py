"""Import InsightFace / arcface_torch ONNX weights into our Keras backbones.

Only the ``onnx`` package is needed (imported lazily); neither PyTorch nor
onnxruntime is used at run time.

Usage::

    from arcface.onnx_import import import_onnx, save
    model = import_onnx("w600k_r50.onnx", "IR_50")
    save(model, "r50.keras")

How it works
------------
1. The ONNX graph is read and its nodes are walked in topological order.  Every
   node that carries weights (``Conv``, ``BatchNormalization``, ``PRelu``,
   ``Gemm`` or ``MatMul`` [+ ``Add`` bias]) becomes one entry of an ordered
   list; weight-free nodes of the known kinds (``Add`` of two activations,
   ``Flatten``, ``Reshape``, ``Identity``, ``Dropout``, ``Pad``, shape
   arithmetic, ``Sub``/``Mul``/``Div`` of the input normalisation) are checked
   against an allow-list and skipped.  Any other op (``Relu``, ``Sigmoid``, ...)
   means a topology we do not have and is refused.
2. Our backbone is built with :func:`arcface.backbones.build_backbone`; its
   weight-carrying layers, in model order, form the second list.
3. **Before anything is copied** the two lists are matched one by one in kind,
   weight shape, stride and padding.  The first mismatch raises
   :class:`~arcface.errors.CheckpointError` naming the ONNX node, our layer and
   both shapes (e.g. an r50 file into ``IR_100`` is refused).
4. Weights are then copied with the layout changes: Conv ``OIHW -> HWIO``;
   depthwise ``(C, 1, kh, kw) -> (kh, kw, C, 1)``; grouped conv (our
   :class:`~arcface.backbones.common.GroupedConv2D`) ``(O, I/g, kh, kw) ->
   (kh, kw, I/g, O)``; Gemm ``(out, in) -> (in, out)`` with the rows reordered
   from PyTorch's ``(C, H, W)`` flatten to Keras' ``(H, W, C)``; PReLU slopes
   ``(C, 1, 1) -> (1, 1, C)``.  BatchNormalization stays BatchNormalization
   (gamma, beta, mean, var copied; epsilon set from the file when it differs
   from ours).

Conv + BN folded by the exporter
--------------------------------
``torch.onnx.export`` in eval mode (how arcface_torch's ``torch2onnx.py`` and
the InsightFace model zoo files were produced) folds a BatchNorm that directly
follows a conv into the conv's bias; torch's newer default (dynamo) exporter
also folds the final ``BatchNorm1d`` (``features``) into the ``Gemm``.  When an ONNX ``Conv`` has a bias and our
model has a bias-free conv followed by a BatchNormalization, that BN is set to
the exact identity plus the bias (gamma 1, beta = bias, mean 0, var 1 - eps) and
the conv gets the folded kernel; likewise for a Gemm with the BN folded in
(bias to our Dense when it has one, otherwise to the BN's beta).  BNs that
*precede* a conv (``bn1`` of every IBasicBlock) cannot be folded and stay
as they are in the file.  This is not silent: every such BN is listed
in ``model.onnx_import_report["unfolded_bn"]`` and logged.  The result computes
the same function as the file; fine-tuning then starts from an identity BN.

Input convention
----------------
InsightFace / arcface_torch ONNX models take **RGB** images in **NCHW** layout,
normalised as ``(x - 127.5) / 127.5`` (the model zoo's ``input_mean = 127.5,
input_std = 127.5``).  Some files carry this normalisation in the graph
(``Sub 127.5`` then ``Mul 1/127.5`` or ``Div 127.5`` on the input) and then take
raw 0..255 pixels.  Our models take **RGB NHWC** ``uint8`` or float images in
**0..255** and normalise inside (:class:`~arcface.backbones.common.PixelNormalization`),
so the imported model is fed raw pixels whichever way the file was exported;
:func:`onnx_input_convention` says what the *file* expects (tests feed
onnxruntime accordingly).  An in-graph normalisation other than 127.5/127.5 is
refused, because our ``PixelNormalization`` is fixed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arcface.errors import CheckpointError

__all__ = ["import_onnx", "save", "onnx_input_convention", "read_onnx_params"]

log = logging.getLogger(__name__)

# Ops that carry no weights and may appear in arcface_torch exports.
_PASSIVE_OPS = {
    "Add", "Flatten", "Reshape", "Identity", "Dropout", "Pad", "Shape", "Gather",
    "Unsqueeze", "Squeeze", "Concat", "Constant", "Cast", "Slice", "ConstantOfShape",
}
_NORM_OPS = {"Sub", "Mul", "Div"}


@dataclass
class OnnxParam:
    """One weight-carrying ONNX node (or MatMul+Add pair)."""

    kind: str  # conv | bn | prelu | dense
    name: str
    arrays: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)

    def describe(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.arrays.items()}
        extra = {k: v for k, v in self.attrs.items() if k in ("strides", "pads", "group", "epsilon")}
        return f"ONNX {self.kind} node {self.name!r} {shapes}{' ' + str(extra) if extra else ''}"


def _onnx():
    try:
        import onnx  # noqa: WPS433 (lazy on purpose)
        from onnx import numpy_helper
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CheckpointError(
            "importing ONNX weights needs the 'onnx' package (pip install onnx)") from exc
    return onnx, numpy_helper


def _attrs(node) -> dict:
    onnx, _ = _onnx()
    out = {}
    for a in node.attribute:
        out[a.name] = onnx.helper.get_attribute_value(a)
    return out


def _postorder(items, roots, parents):
    """Iterative depth-first post-order from ``roots``, parents visited in listed order.

    Used on both graphs (ONNX nodes, Keras layers): for two graphs of the same
    topology whose multi-input ops (``Add``) list their operands in the same
    order (arcface_torch ``out + identity``, ours ``Add([y, shortcut])``), it
    gives the same sequence -- unlike creation order or Keras' depth order.
    The result is a topological order.
    """
    order, done, on_stack = [], set(), set()
    for root in roots:
        stack = [(root, iter(parents(root)))]
        on_stack.add(root)
        while stack:
            item, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                on_stack.discard(item)
                done.add(item)
                order.append(item)
            elif nxt not in done:
                if nxt in on_stack:
                    raise CheckpointError("graph has a cycle; cannot order its nodes")
                on_stack.add(nxt)
                stack.append((nxt, iter(parents(nxt))))
    return [items[k] for k in order]


def _toposort(nodes, graph_outputs):
    """ONNX nodes in depth-first post-order from the graph outputs (a topological order)."""
    producers = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            producers[o] = i

    def parents(i):
        return [producers[t] for t in nodes[i].input if t in producers]

    roots = [producers[o] for o in graph_outputs if o in producers]
    return _postorder(nodes, roots, parents)


def _load_graph(onnx_path):
    onnx, numpy_helper = _onnx()
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
            a = _attrs(n)
            if "value" in a:
                consts[n.output[0]] = numpy_helper.to_array(a["value"])
            elif "value_float" in a:
                consts[n.output[0]] = np.array(a["value_float"], np.float32)
            elif "value_floats" in a:
                consts[n.output[0]] = np.array(a["value_floats"], np.float32)
    init_names = set(consts)
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise CheckpointError(f"{path}: expected one image input, found {[i.name for i in inputs]}")
    nodes = _toposort(list(graph.node), [o.name for o in graph.output])
    # Identity of a constant is a constant.
    for n in nodes:
        if n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    return path, graph, inputs[0], nodes, consts


def _input_dims(inp):
    dims = []
    for d in inp.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else None)
    return dims


def _parse(onnx_path):
    """Return (params, input_convention, input_dims) of an ONNX file."""
    path, graph, inp, nodes, consts = _load_graph(onnx_path)
    params: list[OnnxParam] = []
    norm = []  # (op, constant) applied to the raw input, in order
    data_path = {inp.name}  # tensors still on the input-normalisation chain
    residual_adds = []
    matmul_out = {}
    for n in nodes:
        op = n.op_type
        name = n.name or (n.output[0] if n.output else op)
        if op == "Constant":
            continue
        if op == "Conv":
            a = _attrs(n)
            w = consts.get(n.input[1])
            if w is None:
                raise CheckpointError(f"ONNX Conv {name!r}: weight is not a constant")
            arrays = {"weight": w}
            if len(n.input) > 2 and n.input[2]:
                arrays["bias"] = consts[n.input[2]]
            if "auto_pad" in a and a["auto_pad"] not in (b"NOTSET", "NOTSET"):
                raise CheckpointError(f"ONNX Conv {name!r}: auto_pad={a['auto_pad']!r} unsupported")
            a.setdefault("strides", [1, 1])
            a.setdefault("pads", [0, 0, 0, 0])
            a.setdefault("group", 1)
            if list(a.get("dilations", [1, 1])) != [1, 1]:
                raise CheckpointError(f"ONNX Conv {name!r}: dilation unsupported")
            params.append(OnnxParam("conv", name, arrays, a))
        elif op == "BatchNormalization":
            a = _attrs(n)
            a.setdefault("epsilon", 1e-5)
            try:
                arrays = {k: consts[n.input[i]] for i, k in
                          enumerate(("scale", "bias", "mean", "var"), start=1)}
            except KeyError as exc:
                raise CheckpointError(f"ONNX BatchNormalization {name!r}: non-constant "
                                      f"parameter {exc}") from None
            params.append(OnnxParam("bn", name, arrays, a))
        elif op == "PRelu":
            slope = consts.get(n.input[1])
            if slope is None:
                raise CheckpointError(f"ONNX PRelu {name!r}: slope is not a constant")
            params.append(OnnxParam("prelu", name, {"slope": slope}))
        elif op == "Gemm":
            a = _attrs(n)
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise CheckpointError(f"ONNX Gemm {name!r}: transA/alpha/beta unsupported ({a})")
            w = consts.get(n.input[1])
            if w is None:
                raise CheckpointError(f"ONNX Gemm {name!r}: weight is not a constant")
            w = w if a.get("transB", 0) else w.T  # -> (out, in)
            arrays = {"weight": w}
            if len(n.input) > 2 and n.input[2]:
                arrays["bias"] = consts[n.input[2]].reshape(-1)
            params.append(OnnxParam("dense", name, arrays))
        elif op == "MatMul":
            w = consts.get(n.input[1])
            if w is None or w.ndim != 2:
                raise CheckpointError(f"ONNX MatMul {name!r}: weight is not a 2-D constant")
            p = OnnxParam("dense", name, {"weight": w.T})
            params.append(p)
            matmul_out[n.output[0]] = p
        elif op == "Add" and any(i in matmul_out for i in n.input) and any(
                i in consts for i in n.input):
            p = matmul_out[next(i for i in n.input if i in matmul_out)]
            p.arrays["bias"] = consts[next(i for i in n.input if i in consts)].reshape(-1)
        elif op in _NORM_OPS:
            ins = [i for i in n.input if i not in consts]
            cs = [consts[i] for i in n.input if i in consts]
            if len(ins) != 1 or len(cs) != 1 or ins[0] not in data_path or params:
                raise CheckpointError(
                    f"ONNX {op} node {name!r}: only an input normalisation (Sub/Mul/Div by a "
                    f"constant before the first layer) is supported")
            c = np.asarray(cs[0], np.float64).reshape(-1)
            if c.size != 1 and not np.allclose(c, c[0]):
                raise CheckpointError(f"ONNX {op} node {name!r}: per-channel normalisation "
                                      f"{c.tolist()} unsupported (ours is (x-127.5)/127.5)")
            norm.append((op, float(c[0])))
            data_path.add(n.output[0])
        elif op in _PASSIVE_OPS:
            if op == "Add":
                if any(i in consts for i in n.input):
                    raise CheckpointError(
                        f"ONNX Add node {name!r} adds a constant that is not a Gemm/MatMul bias; "
                        f"no counterpart in our backbones")
                residual_adds.append(name)
            if op in ("Identity", "Cast") and n.input[0] in data_path:
                data_path.add(n.output[0])
            continue
        else:
            raise CheckpointError(
                f"ONNX node {name!r}: op {op} has no counterpart in our backbones")
    # input normalisation: none, or x*a+b with a = 1/127.5, b = -1
    scale, shift = 1.0, 0.0
    for op, c in norm:
        if op == "Sub":
            shift -= c
        elif op == "Mul":
            scale, shift = scale * c, shift * c
        else:
            scale, shift = scale / c, shift / c
    if norm and not (np.isclose(scale, 1 / 127.5, rtol=1e-5) and np.isclose(shift, -1.0, atol=1e-5)):
        raise CheckpointError(f"{path}: in-graph input normalisation {norm} is not "
                              f"(x - 127.5) / 127.5")
    convention = {
        "layout": "NCHW",
        "channels": "RGB",
        "normalised_in_graph": bool(norm),
        "mean": 0.0 if norm else 127.5,
        "std": 1.0 if norm else 127.5,
    }
    convention["residual_adds"] = len(residual_adds)
    return params, convention, _input_dims(inp)


def read_onnx_params(onnx_path):
    """The ordered weight-carrying nodes of an ONNX file (for inspection/debugging)."""
    return _parse(onnx_path)[0]


def onnx_input_convention(onnx_path) -> dict:
    """What the ONNX *file* expects: ``{"layout": "NCHW", "channels": "RGB",
    "normalised_in_graph": bool, "mean": m, "std": s}``; feed it ``(rgb - m) / s``.

    Our imported Keras model always takes NHWC RGB 0..255 instead.
    """
    conv = dict(_parse(onnx_path)[1])
    conv.pop("residual_adds", None)
    return conv


# --------------------------------------------------------------------------- Keras side


def _keras_order(model):
    """Our layers in the same depth-first post-order as the ONNX nodes."""
    layers_by_id = {}

    def parents(key):
        layer = layers_by_id[key]
        out = []
        for node in layer._inbound_nodes[:1]:
            for t in node.arguments.keras_tensors:
                op = t._keras_history.operation
                layers_by_id.setdefault(id(op), op)
                out.append(id(op))
        return out

    roots = []
    for t in model.outputs:
        op = t._keras_history.operation
        layers_by_id[id(op)] = op
        roots.append(id(op))
    # _postorder indexes ``items`` by key
    return _postorder(layers_by_id, roots, parents)


def _keras_kind(layer):
    from keras import layers

    from arcface.backbones.common import GroupedConv2D

    if isinstance(layer, layers.DepthwiseConv2D):
        return "dwconv"
    if isinstance(layer, GroupedConv2D):
        return "gconv"
    if isinstance(layer, layers.Conv2D):
        return "conv"
    if isinstance(layer, layers.BatchNormalization):
        return "bn"
    if isinstance(layer, layers.PReLU):
        return "prelu"
    if isinstance(layer, layers.Dense):
        return "dense"
    return None


def _producer(layer):
    t = layer.input
    if isinstance(t, (list, tuple)):
        return None
    return t._keras_history.operation


def _keras_padding(layer):
    from keras import layers

    prev = _producer(layer)
    if isinstance(prev, layers.ZeroPadding2D):
        (t, b), (l, r) = prev.padding
        return [int(t), int(l), int(b), int(r)]
    return [0, 0, 0, 0]


def _flatten_hwc(dense):
    """(H, W, C) flattened before ``dense`` (walking back over Dropout), or None."""
    from keras import layers

    prev = _producer(dense)
    while isinstance(prev, layers.Dropout):
        prev = _producer(prev)
    if isinstance(prev, layers.Flatten):
        shape = tuple(int(d) for d in prev.input.shape[1:])
        if len(shape) == 3:
            return shape
    return None


def _keras_desc(layer):
    shapes = [tuple(int(d) for d in w.shape) for w in layer.weights]
    return f"our {_keras_kind(layer)} layer {layer.name!r} weights {shapes}"


def _mismatch(p: OnnxParam | None, layer, why: str):
    onnx_part = p.describe() if p is not None else "nothing left in the ONNX file"
    ours = _keras_desc(layer) if layer is not None else "no layer left in our model"
    return CheckpointError(f"ONNX graph does not fit the backbone ({why}): {onnx_part} vs {ours}")


def _conv_kernel(p: OnnxParam, layer, kind):
    """Check an ONNX conv against our conv layer; return the channels-last kernel."""
    w = p.arrays["weight"]
    o, ipg, kh, kw = w.shape
    g = int(p.attrs["group"])
    ours = tuple(int(d) for d in layer.weights[0].shape)
    if kind == "dwconv":
        if not (g == o and ipg == 1):
            raise _mismatch(p, layer, "our layer is depthwise, the ONNX conv is not")
        k = w.transpose(2, 3, 0, 1)  # (kh, kw, C, 1)
    else:
        if kind == "conv" and g != 1:
            raise _mismatch(p, layer, f"ONNX conv has group={g}, ours is a plain conv")
        if kind == "gconv" and g != layer.groups:
            raise _mismatch(p, layer, f"groups {g} vs our {layer.groups}")
        k = w.transpose(2, 3, 1, 0)  # (kh, kw, I/g, O)
    if tuple(k.shape) != ours:
        raise _mismatch(p, layer, f"kernel shape {tuple(k.shape)} (from {tuple(w.shape)}) vs "
                                  f"ours {ours}")
    strides = [int(s) for s in p.attrs["strides"]]
    our_strides = list(layer.strides) if kind != "gconv" else [layer.strides] * 2
    if strides != [int(s) for s in our_strides]:
        raise _mismatch(p, layer, f"strides {strides} vs ours {list(our_strides)}")
    pads = [int(v) for v in p.attrs["pads"]]
    pads = [pads[0], pads[1], pads[2], pads[3]]  # ONNX: [top, left, bottom, right]
    if pads != _keras_padding(layer):
        raise _mismatch(p, layer, f"pads {pads} vs our zero padding {_keras_padding(layer)}")
    return k.astype(np.float32)


def _plan(params, model):
    """Match ONNX params to our layers; return ([(layer, weights[, bn_eps])], unfolded) or raise."""
    ours = [layer for layer in _keras_order(model) if _keras_kind(layer) is not None]
    plan = []
    unfolded = []
    i = 0
    j = 0
    while j < len(ours):
        layer = ours[j]
        kind = _keras_kind(layer)
        p = params[i] if i < len(params) else None
        if p is None and kind != "bn":
            raise _mismatch(None, layer, "the ONNX file has fewer weight-carrying layers")
        if kind in ("conv", "dwconv", "gconv"):
            if p.kind != "conv":
                raise _mismatch(p, layer, f"kind {p.kind} vs conv")
            k = _conv_kernel(p, layer, kind)
            plan.append((layer, [k]))
            if "bias" in p.arrays:
                # exporter folded the following BN into this conv: unfold it
                nxt = ours[j + 1] if j + 1 < len(ours) else None
                if nxt is None or _keras_kind(nxt) != "bn" or _producer(nxt) is not layer:
                    raise _mismatch(p, layer, "ONNX conv has a bias, our conv has none and is "
                                              "not followed by a BatchNormalization")
                b = p.arrays["bias"].astype(np.float32).reshape(-1)
                if b.shape != (p.arrays["weight"].shape[0],):
                    raise _mismatch(p, nxt, f"bias shape {b.shape}")
                eps = float(nxt.epsilon)
                c = b.shape[0]
                plan.append((nxt, [np.ones(c, np.float32), b, np.zeros(c, np.float32),
                                   np.full(c, 1.0 - eps, np.float32)]))
                unfolded.append((p.name, nxt.name))
                j += 1
            i += 1
            j += 1
            continue
        if kind == "bn" and (p is None or p.kind != "bn") and plan and \
                plan[-1][0] is _producer(layer) and _keras_kind(plan[-1][0]) == "dense":
            # the exporter folded this BN into the preceding Gemm (weights and bias):
            # identity BN, the Gemm's weights and bias went to our Dense
            c = int(layer.weights[0].shape[0])
            eps = float(layer.epsilon)
            plan.append((layer, [np.ones(c, np.float32), np.zeros(c, np.float32),
                                 np.zeros(c, np.float32), np.full(c, 1.0 - eps, np.float32)]))
            unfolded.append((plan[-2][0].name, layer.name))
            j += 1
            continue
        if p is None:
            raise _mismatch(None, layer, "the ONNX file has fewer weight-carrying layers")
        if kind == "bn":
            if p.kind != "bn":
                raise _mismatch(p, layer, f"kind {p.kind} vs bn")
            ws = [p.arrays[k].astype(np.float32).reshape(-1) for k in ("scale", "bias", "mean", "var")]
            shapes = [tuple(int(d) for d in w.shape) for w in layer.weights]
            if any(s != ws[0].shape for s in shapes) or len(shapes) != 4:
                raise _mismatch(p, layer, f"channels {ws[0].shape} vs ours {shapes}")
            eps = float(p.attrs["epsilon"])
            plan.append((layer, ws, eps))
        elif kind == "prelu":
            if p.kind != "prelu":
                raise _mismatch(p, layer, f"kind {p.kind} vs prelu")
            s = p.arrays["slope"].astype(np.float32)
            ours_shape = tuple(int(d) for d in layer.weights[0].shape)
            c = int(np.prod(ours_shape))
            # NCHW broadcasting: (C, 1, 1) (TorchScript exporter) or (1, C, 1, 1) (dynamo);
            # a single shared slope (nn.PReLU() without num_parameters) is broadcast
            if s.size == 1:
                s = np.full(ours_shape, float(s.reshape(())), np.float32)
            elif s.size != c or s.ndim < 3 or s.shape[-3] != c:
                raise _mismatch(p, layer, f"slope {s.shape} vs ours {ours_shape}")
            plan.append((layer, [s.reshape(ours_shape)]))
        elif kind == "dense":
            if p.kind != "dense":
                raise _mismatch(p, layer, f"kind {p.kind} vs dense")
            w = p.arrays["weight"].astype(np.float32)  # (out, in)
            e, n = w.shape
            ours_shape = [tuple(int(d) for d in v.shape) for v in layer.weights]
            if ours_shape[0] != (n, e):
                raise _mismatch(p, layer, f"weight (out, in)={w.shape} -> {(n, e)} vs ours "
                                          f"{ours_shape[0]}")
            hwc = _flatten_hwc(layer)
            if hwc is not None:
                h, wd, c = hwc
                if h * wd * c != n:
                    raise _mismatch(p, layer, f"in-features {n} vs our flatten {hwc}")
                k = w.reshape(e, c, h, wd).transpose(2, 3, 1, 0).reshape(n, e)
            else:
                k = w.T
            ws = [np.ascontiguousarray(k)]
            has_bias = "bias" in p.arrays
            ours_bias = len(ours_shape) == 2
            nxt = ours[j + 1] if j + 1 < len(ours) else None
            if has_bias and not ours_bias and nxt is not None and _keras_kind(nxt) == "bn" \
                    and _producer(nxt) is layer and (i + 1 >= len(params)
                                                     or params[i + 1].kind != "bn"):
                # Gemm with the following BatchNorm1d folded in: bias -> that BN's beta
                b = p.arrays["bias"].astype(np.float32).reshape(e)
                eps = float(nxt.epsilon)
                plan.append((layer, ws))
                plan.append((nxt, [np.ones(e, np.float32), b, np.zeros(e, np.float32),
                                   np.full(e, 1.0 - eps, np.float32)]))
                unfolded.append((p.name, nxt.name))
                i += 1
                j += 2
                continue
            if has_bias != ours_bias:
                raise _mismatch(p, layer, f"bias {'present' if has_bias else 'absent'} in ONNX, "
                                          f"{'present' if ours_bias else 'absent'} in ours")
            if has_bias:
                ws.append(p.arrays["bias"].astype(np.float32).reshape(e))
            plan.append((layer, ws))
        i += 1
        j += 1
    if i != len(params):
        raise _mismatch(params[i], None, "the ONNX file has more weight-carrying layers")
    return plan, unfolded


def import_onnx(onnx_path, backbone_type: str, embd_shape: int = 512, input_size: int = 112,
                model=None, **backbone_kwargs):
    """Build ``backbone_type`` and load the weights of an arcface_torch ONNX file into it.

    ``model`` (optional) is an already-built backbone to fill instead (e.g. one
    built with non-default kwargs); ``backbone_kwargs`` go to ``build_backbone``
    (e.g. ``scale=``, ``blocks=`` for MobileFaceNet).  The returned model takes
    NHWC RGB images in 0..255; see the module docstring for the input
    convention.  Raises :class:`CheckpointError` on the first structural
    mismatch, before any weight is written.
    """
    params, convention, dims = _parse(onnx_path)
    if len(dims) != 4 or dims[1] not in (None, 3):
        raise CheckpointError(f"{onnx_path}: input shape {dims} is not NCHW RGB")
    for d in dims[2:]:
        if d is not None and d != input_size:
            raise CheckpointError(f"{onnx_path}: input is {dims[2]}x{dims[3]}, "
                                  f"input_size={input_size} requested")
    if model is None:
        from arcface.backbones import build_backbone

        model = build_backbone(backbone_type, embd_shape=embd_shape, input_size=input_size,
                               **backbone_kwargs)
    plan, unfolded = _plan(params, model)
    from keras import layers as klayers

    n_add = sum(isinstance(layer, klayers.Add) for layer in model.layers)
    if n_add != convention["residual_adds"]:
        raise CheckpointError(
            f"{onnx_path}: {convention['residual_adds']} residual Add nodes in the ONNX graph, "
            f"{n_add} Add layers in our {model.name}: shortcuts differ")
    convention = {k: v for k, v in convention.items() if k != "residual_adds"}
    # all checks passed: copy
    eps_changed = []
    for entry in plan:
        layer, ws = entry[0], entry[1]
        if len(entry) == 3:
            eps = entry[2]
            if not np.isclose(eps, float(layer.epsilon), rtol=1e-6, atol=0):
                eps_changed.append((layer.name, float(layer.epsilon), eps))
                layer.epsilon = eps
        layer.set_weights(ws)
    for onnx_name, bn_name in unfolded:
        log.info("ONNX conv %r has the following BN folded in; %r set to identity + bias",
                 onnx_name, bn_name)
    for name, old, new in eps_changed:
        log.info("BN %r epsilon %g -> %g (from the ONNX file)", name, old, new)
    model.onnx_import_report = {
        "source": str(onnx_path),
        "n_params": len(params),
        "unfolded_bn": [b for _, b in unfolded],
        "epsilon_changed": eps_changed,
        "file_input_convention": convention,
    }
    return model


def save(model, path) -> Path:
    """Save an imported model: ``.keras`` (whole model) or ``.weights.h5`` (weights only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".weights.h5"):
        model.save_weights(str(path))
    elif path.suffix == ".keras":
        model.save(str(path))
    else:
        raise CheckpointError(f"save path must end in .keras or .weights.h5, got {path}")
    return path
