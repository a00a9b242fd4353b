"""Match a foreign network's weight-carrying layers to a Keras backbone, check, then copy.

Shared by the importers (:mod:`arcface.onnx_import`, :mod:`arcface.tflite_import`). An
importer reads its file into an ordered list of :class:`ForeignParam` in a *canonical*
layout (below), in the same depth-first post-order that :func:`keras_order` gives for our
model (:func:`postorder` on both graphs, so residual branches line up when both list an
``Add``'s operands in the same order). :func:`plan_weights` then pairs the two lists one by
one, checking kind, shape, groups, stride and padding, and raises
:class:`~arcface.errors.CheckpointError` naming both sides at the first mismatch, **before**
any weight is written; :func:`apply_plan` copies.

Canonical layouts:

Each may carry attr ``file_shape`` (the weight's shape in the file's own layout, shown in
errors). The kinds:

* ``conv``: ``kernel`` ``(kh, kw, in/groups, out)`` (a depthwise conv is ``(kh, kw, 1, C)``
  with ``groups == C``), optional ``bias`` ``(out,)``; attrs ``groups``, ``strides``
  ``[sh, sw]``, ``pads`` ``[top, left, bottom, right]`` (explicit zero padding).
* ``bn``: ``scale``, ``bias``, ``mean``, ``var`` ``(C,)``; attr ``epsilon``.
* ``prelu``: ``slope`` ``(C,)`` or ``()`` (one shared slope).
* ``dense``: ``kernel`` ``(in, out)``, optional ``bias``; attr ``flatten_order`` ``"CHW"``
  when the input features were flattened channels-first (PyTorch), else ``"HWC"``.

A conv with a bias facing our bias-free conv + BatchNormalization is an exporter's folded
BN: that BN becomes the exact identity plus the bias (gamma 1, beta = bias, mean 0,
var 1 - eps), listed in the plan's ``unfolded`` names (nothing folded silently); likewise
a dense layer with the following BN folded in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arcface.errors import CheckpointError

__all__ = ["ForeignParam", "postorder", "keras_order", "keras_kind", "same_pads",
           "plan_weights", "apply_plan", "count_add_layers", "save"]

log = logging.getLogger(__name__)


@dataclass
class ForeignParam:
    """One weight-carrying layer of a foreign graph, in the canonical layout."""

    kind: str  # conv | bn | prelu | dense
    name: str
    arrays: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    source: str = "foreign"  # "ONNX", "TFLite": names the file format in errors

    def describe(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.arrays.items()}
        extra = {k: v for k, v in self.attrs.items()
                 if k in ("strides", "pads", "groups", "epsilon", "op", "file_shape")}
        return f"{self.source} {self.kind} node {self.name!r} {shapes}{' ' + str(extra) if extra else ''}"


def postorder(items, roots, parents):
    """Iterative depth-first post-order from ``roots``, parents visited in listed order.

    Used on both graphs (foreign nodes, Keras layers): for two graphs of the same
    topology whose multi-input ops (``Add``) list their operands in the same order, it
    gives the same sequence -- unlike creation order or Keras' depth order. The result
    is a topological order; ``items`` is indexed by the keys ``roots``/``parents`` yield.
    """
    order, done, on_stack = [], set(), set()
    for root in roots:
        if root in done:
            continue
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


# --------------------------------------------------------------------------- Keras side


def keras_order(model) -> list:
    """Our model's layers in depth-first post-order from its outputs (see :func:`postorder`)."""
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
    return postorder(layers_by_id, roots, parents)


def keras_kind(layer) -> str | None:
    """``dwconv`` / ``gconv`` / ``conv`` / ``bn`` / ``prelu`` / ``dense``, or None (no weights)."""
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


def same_pads(size_hw, kernel_hw, strides_hw) -> list[int]:
    """TensorFlow's ``"SAME"`` padding as explicit ``[top, left, bottom, right]`` (the extra
    pixel of an odd total goes to the bottom/right)."""
    pads = []
    for size, k, s in zip(size_hw, kernel_hw, strides_hw):
        out = -(-int(size) // int(s))
        total = max((out - 1) * int(s) + int(k) - int(size), 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return [top, left, bottom, right]


def _keras_pads(layer) -> list[int]:
    """The explicit zero padding our conv applies: a preceding ZeroPadding2D and/or 'same'."""
    from keras import layers

    pads = [0, 0, 0, 0]
    prev = _producer(layer)
    if isinstance(prev, layers.ZeroPadding2D):
        (t, b), (l, r) = prev.padding
        pads = [int(t), int(l), int(b), int(r)]
    if getattr(layer, "padding", "valid") == "same":
        h, w = (int(d) for d in layer.input.shape[1:3])
        kh, kw = (int(d) for d in layer.kernel_size)
        extra = same_pads((h, w), (kh, kw), tuple(int(s) for s in layer.strides))
        pads = [a + b for a, b in zip(pads, extra)]
    return pads


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


def _keras_desc(layer) -> str:
    shapes = [tuple(int(d) for d in w.shape) for w in layer.weights]
    return f"our {keras_kind(layer)} layer {layer.name!r} weights {shapes}"


def _mismatch(p: ForeignParam | None, layer, why: str, source: str = "foreign") -> CheckpointError:
    theirs = p.describe() if p is not None else f"nothing left in the {source} file"
    ours = _keras_desc(layer) if layer is not None else "no layer left in our model"
    return CheckpointError(f"{source} graph does not fit the backbone ({why}): {theirs} vs {ours}")


def _identity_bn(channels: int, eps: float, beta=None) -> list[np.ndarray]:
    """BN weights computing ``x + beta`` exactly: gamma 1, mean 0, var 1 - eps."""
    beta = np.zeros(channels, np.float32) if beta is None else np.asarray(beta, np.float32)
    return [np.ones(channels, np.float32), beta, np.zeros(channels, np.float32),
            np.full(channels, 1.0 - eps, np.float32)]


def _conv_kernel(p: ForeignParam, layer, kind: str, source: str) -> np.ndarray:
    """Check a canonical conv against our conv layer; return the kernel in our layout."""
    k = p.arrays["kernel"]
    kh, kw, ipg, o = k.shape
    g = int(p.attrs["groups"])
    ours = tuple(int(d) for d in layer.weights[0].shape)
    if kind == "dwconv":
        if not (g == o and ipg == 1):
            raise _mismatch(p, layer, "our layer is depthwise, theirs is not", source)
        k = k.transpose(0, 1, 3, 2)  # (kh, kw, C, 1)
    elif kind == "conv" and g != 1:
        raise _mismatch(p, layer, f"theirs has groups={g}, ours is a plain conv", source)
    elif kind == "gconv" and g != layer.groups:
        raise _mismatch(p, layer, f"groups {g} vs our {layer.groups}", source)
    if tuple(k.shape) != ours:
        raise _mismatch(p, layer, f"kernel shape {tuple(k.shape)} vs ours {ours}", source)
    strides = [int(s) for s in p.attrs["strides"]]
    our_strides = list(layer.strides) if kind != "gconv" else [layer.strides] * 2
    if strides != [int(s) for s in our_strides]:
        raise _mismatch(p, layer, f"strides {strides} vs ours {list(our_strides)}", source)
    pads = [int(v) for v in p.attrs["pads"]]
    if pads != _keras_pads(layer):
        raise _mismatch(p, layer, f"pads {pads} vs our zero padding {_keras_pads(layer)}", source)
    return k.astype(np.float32)


def plan_weights(params: list[ForeignParam], model, source: str = "foreign"):
    """Pair ``params`` with our weight-carrying layers; return ``(plan, unfolded)``.

    ``plan`` is a list of ``(layer, weights)`` or ``(layer, weights, bn_epsilon)``;
    ``unfolded`` lists ``(their name, our BN name)`` for BNs set to identity + bias.
    Raises :class:`CheckpointError` at the first mismatch; nothing is written.
    """
    ours = [layer for layer in keras_order(model) if keras_kind(layer) is not None]
    plan, unfolded = [], []
    i = j = 0
    while j < len(ours):
        layer = ours[j]
        kind = keras_kind(layer)
        p = params[i] if i < len(params) else None
        nxt = ours[j + 1] if j + 1 < len(ours) else None
        if p is None and kind != "bn":
            raise _mismatch(None, layer, f"the {source} file has fewer weight-carrying layers", source)
        if kind in ("conv", "dwconv", "gconv"):
            if p.kind != "conv":
                raise _mismatch(p, layer, f"kind {p.kind} vs conv", source)
            plan.append((layer, [_conv_kernel(p, layer, kind, source)]))
            if "bias" in p.arrays:
                # the exporter folded the following BN into this conv: unfold it
                if nxt is None or keras_kind(nxt) != "bn" or _producer(nxt) is not layer:
                    raise _mismatch(p, layer, "theirs has a bias, our conv has none and is not "
                                              "followed by a BatchNormalization", source)
                b = p.arrays["bias"].astype(np.float32).reshape(-1)
                if b.shape != (p.arrays["kernel"].shape[-1],):
                    raise _mismatch(p, nxt, f"bias shape {b.shape}", source)
                plan.append((nxt, _identity_bn(b.shape[0], float(nxt.epsilon), b)))
                unfolded.append((p.name, nxt.name))
                j += 1
            i += 1
            j += 1
            continue
        if kind == "bn" and (p is None or p.kind != "bn") and plan and \
                plan[-1][0] is _producer(layer) and keras_kind(plan[-1][0]) == "dense":
            # the exporter folded this BN into the preceding dense layer (weights and bias)
            c = int(layer.weights[0].shape[0])
            plan.append((layer, _identity_bn(c, float(layer.epsilon))))
            unfolded.append((plan[-2][0].name, layer.name))
            j += 1
            continue
        if p is None:
            raise _mismatch(None, layer, f"the {source} file has fewer weight-carrying layers", source)
        if kind == "bn":
            if p.kind != "bn":
                raise _mismatch(p, layer, f"kind {p.kind} vs bn", source)
            ws = [p.arrays[k].astype(np.float32).reshape(-1) for k in ("scale", "bias", "mean", "var")]
            shapes = [tuple(int(d) for d in w.shape) for w in layer.weights]
            if len(shapes) != 4 or any(s != ws[0].shape for s in shapes):
                raise _mismatch(p, layer, f"channels {ws[0].shape} vs ours {shapes}", source)
            plan.append((layer, ws, float(p.attrs["epsilon"])))
        elif kind == "prelu":
            if p.kind != "prelu":
                raise _mismatch(p, layer, f"kind {p.kind} vs prelu", source)
            s = np.asarray(p.arrays["slope"], np.float32)
            ours_shape = tuple(int(d) for d in layer.weights[0].shape)
            c = int(np.prod(ours_shape))
            if s.size == 1:  # one shared slope, broadcast
                s = np.full(ours_shape, float(s.reshape(())), np.float32)
            elif s.size != c:
                raise _mismatch(p, layer, f"slope {s.shape} vs ours {ours_shape}", source)
            plan.append((layer, [s.reshape(ours_shape)]))
        elif kind == "dense":
            if p.kind != "dense":
                raise _mismatch(p, layer, f"kind {p.kind} vs dense", source)
            k = p.arrays["kernel"].astype(np.float32)  # (in, out)
            n, e = k.shape
            ours_shape = [tuple(int(d) for d in v.shape) for v in layer.weights]
            if ours_shape[0] != (n, e):
                raise _mismatch(p, layer, f"kernel (in, out)={(n, e)} vs ours {ours_shape[0]}", source)
            hwc = _flatten_hwc(layer)
            if hwc is not None and p.attrs.get("flatten_order", "HWC") == "CHW":
                h, wd, c = hwc
                if h * wd * c != n:
                    raise _mismatch(p, layer, f"in-features {n} vs our flatten {hwc}", source)
                k = k.reshape(c, h, wd, e).transpose(1, 2, 0, 3).reshape(n, e)
            ws = [np.ascontiguousarray(k)]
            has_bias, ours_bias = "bias" in p.arrays, len(ours_shape) == 2
            if has_bias and not ours_bias and nxt is not None and keras_kind(nxt) == "bn" \
                    and _producer(nxt) is layer and (i + 1 >= len(params)
                                                     or params[i + 1].kind != "bn"):
                # dense with the following BN folded in: its bias -> that BN's beta
                b = p.arrays["bias"].astype(np.float32).reshape(e)
                plan.append((layer, ws))
                plan.append((nxt, _identity_bn(e, float(nxt.epsilon), b)))
                unfolded.append((p.name, nxt.name))
                i += 1
                j += 2
                continue
            if has_bias != ours_bias:
                raise _mismatch(p, layer, f"bias {'present' if has_bias else 'absent'} in theirs, "
                                          f"{'present' if ours_bias else 'absent'} in ours", source)
            if has_bias:
                ws.append(p.arrays["bias"].astype(np.float32).reshape(e))
            plan.append((layer, ws))
        i += 1
        j += 1
    if i != len(params):
        raise _mismatch(params[i], None, f"the {source} file has more weight-carrying layers", source)
    return plan, unfolded


def count_add_layers(model) -> int:
    """How many ``Add`` layers (residual shortcuts) the model has."""
    from keras import layers

    return sum(isinstance(layer, layers.Add) for layer in model.layers)


def apply_plan(plan) -> list[tuple[str, float, float]]:
    """Copy a checked plan into the layers; return the BN epsilons changed from the file."""
    eps_changed = []
    for entry in plan:
        layer, ws = entry[0], entry[1]
        if len(entry) == 3:
            eps = entry[2]
            if not np.isclose(eps, float(layer.epsilon), rtol=1e-6, atol=0):
                eps_changed.append((layer.name, float(layer.epsilon), eps))
                layer.epsilon = eps
        layer.set_weights(ws)
    for name, old, new in eps_changed:
        log.info("BN %r epsilon %g -> %g (from the file)", name, old, new)
    return eps_changed


def save(model, path) -> Path:
    """Save an imported model: ``.keras`` (whole model) or ``.weights.h5`` (weights only)."""
    path = Path(path)
    if path.name.endswith(".weights.h5"):
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(str(path))
    elif path.suffix == ".keras":
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(str(path))
    else:
        raise CheckpointError(f"save path must end in .keras or .weights.h5, got {path}")
    return path
