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

5. :func:`import_and_check` (``scripts/import_onnx.py --out models/NAME``) also checks the
   SHA-256, compares the import with onnxruntime on real faces and writes a model folder
   (``backbone.weights.h5``, ``config.yaml``, ``import.json``, optionally onnxruntime's
   reference embeddings of a few faces), as :mod:`arcface.tflite_import` does.

InsightFace's buffalo_s ``w600k_mbf.onnx`` has our MobileFaceNet body with a fully connected
head (1x1 ConvBlock 512 -> 64, Flatten, Gemm with bias, BatchNorm1d) instead of the GDC:
import it into ``MobileFaceNet_FC``; ``MobileFaceNet`` refuses it at the head.

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
onnxruntime accordingly).  The file's normalisation must be the target backbone's
``PixelNormalization`` (InsightFace's 127.5/127.5; MXNet InsightFace's 127.5/128 for
``FMobileNet``), else the import is refused.  The channel order is not in a graph: files
that take **BGR** (OpenCV zoo's SFace) are imported with ``channels="BGR"``, which reverses
the first convolution's input channels, so the Keras model still takes RGB.

Quantised files
---------------
Weights stored as int8 blocks (``DequantizeLinear`` with ``block_size``, then ``Reshape``;
OpenCV zoo's ``*_int8bq.onnx``) are dequantised with NumPy exactly as onnxruntime does
(:mod:`arcface.onnx_graph`), and the import is float from there.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from arcface.errors import CheckpointError
from arcface.onnx_graph import (input_dims, is_folded, load_graph, node_attrs, onnx_modules,
                                onnxruntime_session)
from arcface.weight_mapping import ForeignParam, apply_plan, count_add_layers, plan_weights, save

__all__ = ["import_onnx", "save", "onnx_input_convention", "read_onnx_params", "onnx_op_counts",
           "onnx_output_width", "run_onnx", "compare_with_onnxruntime", "import_and_check", "REFERENCE_FILE"]

log = logging.getLogger(__name__)

# Ops that carry no weights and may appear in arcface_torch exports.
_PASSIVE_OPS = {
    "Add", "Flatten", "Reshape", "Identity", "Dropout", "Pad", "Shape", "Gather",
    "Unsqueeze", "Squeeze", "Concat", "Constant", "Cast", "Slice", "ConstantOfShape",
}
_NORM_OPS = {"Sub", "Mul", "Div"}
SOURCE = "ONNX"


def _param(kind: str, name: str, arrays: dict, attrs: dict | None = None) -> ForeignParam:
    return ForeignParam(kind, name, arrays, attrs or {}, source=SOURCE)


def _parse(onnx_path):
    """Return (params, input_convention, input_dims, op_counts) of an ONNX file, parsed once."""
    path, graph, inp, nodes, consts = load_graph(onnx_path)
    params: list[ForeignParam] = []
    norm = []  # (op, constant) applied to the raw input, in order
    data_path = {inp.name}  # tensors still on the input-normalisation chain
    residual_adds = []
    matmul_out = {}
    for n in nodes:
        op = n.op_type
        name = n.name or (n.output[0] if n.output else op)
        if op == "Constant" or is_folded(n, consts):
            continue
        if op == "Conv":
            a = node_attrs(n)
            w = consts.get(n.input[1])
            if w is None:
                raise CheckpointError(f"ONNX Conv {name!r}: weight is not a constant")
            arrays = {"kernel": np.ascontiguousarray(np.asarray(w).transpose(2, 3, 1, 0))}
            if len(n.input) > 2 and n.input[2]:
                arrays["bias"] = consts[n.input[2]]
            if "auto_pad" in a and a["auto_pad"] not in (b"NOTSET", "NOTSET"):
                raise CheckpointError(f"ONNX Conv {name!r}: auto_pad={a['auto_pad']!r} unsupported")
            a.setdefault("strides", [1, 1])
            a.setdefault("pads", [0, 0, 0, 0])
            a.setdefault("group", 1)
            if list(a.get("dilations", [1, 1])) != [1, 1]:
                raise CheckpointError(f"ONNX Conv {name!r}: dilation unsupported")
            attrs = {"groups": int(a["group"]), "strides": [int(v) for v in a["strides"]],
                     "pads": [int(v) for v in a["pads"]], "file_shape": tuple(w.shape)}  # ONNX pads: [top, left, bottom, right]
            params.append(_param("conv", name, arrays, attrs))
        elif op == "BatchNormalization":
            a = node_attrs(n)
            a.setdefault("epsilon", 1e-5)
            try:
                arrays = {k: consts[n.input[i]] for i, k in
                          enumerate(("scale", "bias", "mean", "var"), start=1)}
            except KeyError as exc:
                raise CheckpointError(f"ONNX BatchNormalization {name!r}: non-constant "
                                      f"parameter {exc}") from None
            params.append(_param("bn", name, arrays, {"epsilon": float(a["epsilon"])}))
        elif op == "PRelu":
            slope = consts.get(n.input[1])
            if slope is None:
                raise CheckpointError(f"ONNX PRelu {name!r}: slope is not a constant")
            # NCHW broadcasting: (C, 1, 1) (TorchScript exporter) or (1, C, 1, 1) (dynamo);
            # a single shared slope (nn.PReLU() without num_parameters) stays a scalar
            if slope.size != 1 and (slope.ndim < 3 or slope.shape[-3] != slope.size):
                raise CheckpointError(f"ONNX PRelu {name!r}: slope of shape {slope.shape} is "
                                      f"not one value per channel")
            params.append(_param("prelu", name, {"slope": np.asarray(slope).reshape(-1)
                                                 if slope.size != 1 else np.asarray(slope).reshape(())}))
        elif op == "Gemm":
            a = node_attrs(n)
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise CheckpointError(f"ONNX Gemm {name!r}: transA/alpha/beta unsupported ({a})")
            w = consts.get(n.input[1])
            if w is None:
                raise CheckpointError(f"ONNX Gemm {name!r}: weight is not a constant")
            w = w.T if a.get("transB", 0) else w  # -> (in, out)
            arrays = {"kernel": w}
            if len(n.input) > 2 and n.input[2]:
                arrays["bias"] = consts[n.input[2]].reshape(-1)
            params.append(_param("dense", name, arrays, {"flatten_order": "CHW"}))
        elif op == "MatMul":
            w = consts.get(n.input[1])
            if w is None or w.ndim != 2:
                raise CheckpointError(f"ONNX MatMul {name!r}: weight is not a 2-D constant")
            p = _param("dense", name, {"kernel": w}, {"flatten_order": "CHW"})
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
    # input normalisation in the graph: none, or x * scale + shift = (x - mean) / std
    scale, shift = 1.0, 0.0
    for op, c in norm:
        if op == "Sub":
            shift -= c
        elif op == "Mul":
            scale, shift = scale * c, shift * c
        else:
            scale, shift = scale / c, shift / c
    convention = {
        "layout": "NCHW",
        "channels": "RGB",
        "normalised_in_graph": bool(norm),
        "mean": 0.0 if norm else 127.5,
        "std": 1.0 if norm else 127.5,
        # what the network's first layer sees: (x - pixel_mean) / pixel_std of 0..255 pixels
        "pixel_mean": float(-shift / scale) if norm else 127.5,
        "pixel_std": float(1.0 / scale) if norm else 127.5,
    }
    convention["residual_adds"] = len(residual_adds)
    return params, convention, input_dims(inp), _op_counts(nodes)


def read_onnx_params(onnx_path):
    """The ordered weight-carrying nodes of an ONNX file (for inspection/debugging)."""
    return _parse(onnx_path)[0]


CHANNEL_ORDERS = ("RGB", "BGR")


def _check_channels(channels: str) -> str:
    if channels not in CHANNEL_ORDERS:
        raise CheckpointError(f"channels must be one of {CHANNEL_ORDERS}, got {channels!r}")
    return channels


def onnx_input_convention(onnx_path, channels: str = "RGB") -> dict:
    """What the ONNX *file* expects: ``{"layout": "NCHW", "channels": channels,
    "normalised_in_graph": bool, "mean": m, "std": s, "pixel_mean": pm, "pixel_std": ps}``;
    feed it ``(pixels - m) / s`` in ``channels`` order; its first layer sees
    ``(pixels - pm) / ps``. The channel order is not in the graph: it is the file's
    documentation (InsightFace: RGB; OpenCV zoo's SFace: BGR).

    Our imported Keras model always takes NHWC RGB 0..255 instead.
    """
    conv = dict(_parse(onnx_path)[1])
    conv.pop("residual_adds", None)
    conv["channels"] = _check_channels(channels)
    return conv


def _op_counts(nodes) -> dict:
    from collections import Counter

    return dict(sorted(Counter(n.op_type for n in nodes).items()))


def onnx_op_counts(onnx_path) -> dict:
    """``{op_type: count}`` of the file's graph nodes (recorded in ``import.json``)."""
    return _op_counts(load_graph(onnx_path)[3])


def onnx_output_width(onnx_path) -> int | None:
    """The last dimension of the file's first output (its embedding width), if fixed."""
    onnx, _ = onnx_modules()
    dims = onnx.load(str(onnx_path), load_external_data=False).graph.output[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value) if dims and dims[-1].HasField("dim_value") else None


def run_onnx(onnx_path, images, batch_size: int = 32, threads: int = 0,
             channels: str = "RGB", convention: dict | None = None, session=None) -> np.ndarray:
    """The ONNX file's own outputs (onnxruntime) on RGB NHWC 0..255 ``images``, fed as the
    file expects (:func:`onnx_input_convention`: NCHW, in ``channels`` order, normalised
    unless the graph does it). ``convention`` (the file's, e.g. an import report's
    ``file_input_convention``) and ``session`` (:func:`onnxruntime_session` of the file) spare
    parsing the graph again."""
    conv = onnx_input_convention(onnx_path, channels) if convention is None else convention
    sess = onnxruntime_session(onnx_path, threads) if session is None else session
    name = sess.get_inputs()[0].name
    images = np.asarray(images, np.float32)
    outs = []
    for i in range(0, len(images), batch_size):
        x = (images[i:i + batch_size] - conv["mean"]) / conv["std"]
        if channels == "BGR":
            x = x[..., ::-1]
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        outs.append(np.asarray(sess.run(None, {name: x})[0], np.float32).reshape(len(x), -1))
    return np.concatenate(outs)


def compare_with_onnxruntime(model, onnx_path, images, reference=None, channels: str = "RGB",
                             **run_kwargs) -> dict:
    """Embed RGB 0..255 ``images`` with the imported model and with onnxruntime (or compare
    with ``reference``, onnxruntime's outputs made before): min/mean cosine, max diff.
    ``run_kwargs`` go to :func:`run_onnx`."""
    from arcface.import_check import agreement

    return agreement(model, images, run_onnx(onnx_path, images, channels=channels, **run_kwargs)
                     if reference is None else reference)


#: onnxruntime's embeddings of a few faces, written beside the weights by :func:`import_and_check`
REFERENCE_FILE = "reference_embeddings.npz"


def import_and_check(onnx_path, out_dir, backbone_type: str, embd_shape: int | None = None,
                     input_size: int = 112, expected_sha256: str | None = None, source: str = "",
                     check_data: str | None = None, check_n: int = 32, reference_n: int = 0,
                     overwrite: bool = False, test_dataset: str | None = None,
                     channels: str = "RGB") -> dict:
    """Import ``onnx_path``, check it against onnxruntime, write a model folder.

    The folder gets ``backbone.weights.h5``, ``config.yaml`` and ``import.json`` (the
    returned report); with ``reference_n`` (needs ``check_data``) also
    :data:`REFERENCE_FILE`: onnxruntime's outputs on that many faces of ``check_data``
    (``names`` relative to it, ``embeddings``), so the shipped weights can be checked
    against the file without the file. Nothing is written when the SHA-256 differs from
    ``expected_sha256``, the graph does not fit, or the check fails (cosine <= 0.9999 or
    max diff >= 1e-3). ``check_n=0`` skips the check. ``embd_shape`` defaults to the
    file's output width. The backbone is built by name with its defaults (a model folder's
    ``config.yaml`` names only ``backbone_type``): a variant of other widths or heads is a
    registered name (e.g. ``MobileFaceNet_FC``). ``channels`` is the file's channel order
    (:func:`import_onnx`); onnxruntime is fed in it.
    """
    import datetime
    import io
    import json

    import keras

    from arcface.import_check import check_images, checked_file, require_agreement, stage1_config
    from arcface.pretrained import write_model_folder

    path, digest = checked_file(onnx_path, "ONNX", expected_sha256)
    if reference_n and not check_data:
        raise CheckpointError("reference embeddings (--reference_n) need --check_data (real faces)")
    if embd_shape is None:
        embd_shape = onnx_output_width(path) or 512
    model = import_onnx(path, backbone_type, embd_shape=embd_shape, input_size=input_size,
                        channels=channels)
    report = {k: v for k, v in model.onnx_import_report.items() if k != "source"}
    # the graph is parsed once (in import_onnx); onnxruntime runs one session of the file
    run = {"channels": channels, "convention": report["file_input_convention"], "session": None}
    report["unfolded_bn"] = list(report["unfolded_bn"])
    report["epsilon_changed"] = [list(e) for e in report["epsilon_changed"]]
    report.update(file=path.name, size=path.stat().st_size, sha256=digest, source=source,
                  backbone_type=backbone_type, embd_shape=embd_shape, input_size=input_size,
                  parameters=int(model.count_params()), residual_adds=count_add_layers(model),
                  keras=keras.__version__,
                  backend=keras.backend.backend(), date=datetime.date.today().isoformat())
    if check_n or reference_n:
        run["session"] = onnxruntime_session(path)
    if check_n:
        images, _ = check_images(check_data, check_n, input_size)
        check = compare_with_onnxruntime(model, path, images, **run)
        import onnxruntime

        check["images"] = f"images of {check_data}" if check_data else "random images"
        check["reference"] = f"onnxruntime {onnxruntime.__version__} (CPU)"
        report["check"] = check
        require_agreement(check, path, "onnxruntime")
    extra = {}
    if reference_n:
        images, names = check_images(check_data, reference_n, input_size)
        ref = run_onnx(path, images, **run)
        ours = compare_with_onnxruntime(model, path, images, reference=ref)
        buf = io.BytesIO()
        np.savez_compressed(buf, names=np.asarray(names), embeddings=ref.astype(np.float32),
                            sha256=np.asarray(digest))
        extra[REFERENCE_FILE] = buf.getvalue()
        report["reference"] = {"file": REFERENCE_FILE, "n_images": len(names),
                               "images": f"of {check_data}, spread evenly over its sorted files "
                                         f"(names relative to it; the faces are not stored)",
                               "min_cosine": ours["min_cosine"]}
    name = os.path.basename(os.path.normpath(os.fspath(out_dir)))
    config = stage1_config(name, path, "scripts/import_onnx.py", digest, source=source, input_size=input_size,
                           embd_shape=embd_shape, backbone_type=backbone_type, test_dataset=test_dataset)
    extra["import.json"] = (json.dumps(report, indent=2) + "\n").encode()
    write_model_folder(model, out_dir, config, extra, overwrite=overwrite)
    return report


def _pixel_normalisation(model) -> tuple[float, float] | None:
    from arcface.backbones.common import PixelNormalization, iter_layers

    for layer in iter_layers(model):
        if isinstance(layer, PixelNormalization):
            return float(layer.mean), float(layer.std)
    return None


def import_onnx(onnx_path, backbone_type: str, embd_shape: int = 512, input_size: int = 112,
                model=None, channels: str = "RGB", **backbone_kwargs):
    """Build ``backbone_type`` and load the weights of an arcface_torch ONNX file into it.

    ``model`` (optional) is an already-built backbone to fill instead (e.g. one
    built with non-default kwargs); ``backbone_kwargs`` go to ``build_backbone``
    (e.g. ``scale=``, ``blocks=`` for MobileFaceNet).  ``channels`` is the channel order
    the file takes (``"BGR"`` for OpenCV zoo's models): a BGR file's first convolution gets
    its input channels reversed, so the returned model takes NHWC **RGB** images in 0..255
    whatever the file takes; see the module docstring for the input convention.  The
    file's input normalisation (in the graph, else InsightFace's ``(x - 127.5) / 127.5``)
    must be our model's :class:`~arcface.backbones.common.PixelNormalization`.  Raises
    :class:`CheckpointError` on the first structural mismatch, before any weight is written.
    """
    _check_channels(channels)
    params, convention, dims, ops = _parse(onnx_path)
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
    ours = _pixel_normalisation(model)
    theirs = (convention["pixel_mean"], convention["pixel_std"])
    if ours is not None and not np.allclose(ours, theirs, rtol=1e-5, atol=1e-4):
        where = "in the graph" if convention["normalised_in_graph"] else "assumed (none in the graph)"
        raise CheckpointError(
            f"{onnx_path}: the file normalises pixels as (x - {theirs[0]:g}) / {theirs[1]:g} ({where}); "
            f"our {model.name} as (x - {ours[0]:g}) / {ours[1]:g}")
    if channels == "BGR":
        first = next((p for p in params if p.kind == "conv"), None)
        if first is None or first.arrays["kernel"].shape[2] != 3:
            raise CheckpointError(f"{onnx_path}: channels='BGR' needs a first convolution on the 3 "
                                  f"input channels")
        first.arrays["kernel"] = np.ascontiguousarray(first.arrays["kernel"][:, :, ::-1, :])
    plan, unfolded = plan_weights(params, model, SOURCE)
    n_add = count_add_layers(model)
    if n_add != convention["residual_adds"]:
        raise CheckpointError(
            f"{onnx_path}: {convention['residual_adds']} residual Add nodes in the ONNX graph, "
            f"{n_add} Add layers in our {model.name}: shortcuts differ")
    convention = {k: v for k, v in convention.items() if k != "residual_adds"}
    convention["channels"] = channels
    # all checks passed: copy
    eps_changed = apply_plan(plan)
    for onnx_name, bn_name in unfolded:
        log.info("ONNX conv %r has the following BN folded in; %r set to identity + bias",
                 onnx_name, bn_name)
    model.onnx_import_report = {
        "source": str(onnx_path),
        "n_params": len(params),
        "unfolded_bn": [b for _, b in unfolded],
        "epsilon_changed": eps_changed,
        "file_input_convention": convention,
        "ops": ops,
    }
    return model
