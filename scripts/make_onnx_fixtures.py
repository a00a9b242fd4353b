"""Make the small ONNX fixtures of tests/test_onnx_import.py (dev-only; needs PyTorch + onnx).

    python scripts/make_onnx_fixtures.py            # writes tests/data/onnx/*.onnx
    python scripts/make_onnx_fixtures.py --full_r50 /tmp/r50_random.onnx

The PyTorch modules below reproduce arcface_torch's ``iresnet`` and ``mbf``
topologies (same layer order, same padding/stride, same head) with random
weights *and random BatchNorm statistics* (so a wrong mean/var mapping shows).

Fixtures (kept small so they can live in the repository, < 5 MB in all):

* ``ir18_narrow.onnx`` -- IR-ResNet-18 topology with stage widths
  (8, 16, 32, 64) instead of (64, 128, 256, 512) and a 64-d embedding.
  Exported with ``TrainingMode.PRESERVE`` so every BatchNormalization stays a
  BatchNormalization node.  The test builds the matching Keras model with
  ``build_backbone("IR_18", widths=(8, 16, 32, 64), embd_shape=64)``.
* ``mbf_s1.onnx`` -- MobileFaceNet with ``scale=1, blocks=(1, 1, 1, 1)``, 64-d
  embedding, exported in eval mode (the exporter folds conv+BN into conv bias,
  as in the InsightFace model-zoo files) and with the input normalisation
  ``(x - 127.5) / 127.5`` inside the graph (Sub + Mul nodes), so the file takes
  raw 0..255 pixels.  Stage 1 is a depthwise conv (groups 64 == channels).
* ``mbf_s2.onnx`` -- ``scale=2, blocks=(1, 1, 1, 1)``: stage 1 is a grouped
  conv (64 groups of 2 channels, our ``GroupedConv2D``), the expansion widths
  fixed at 128/256/512/256 as in arcface_torch, BN kept.  (``mbf_s1`` has
  ``blocks=(2, 1, 1, 1)``: a residual stage 1.)
* ``ir18_narrow_dynamo.onnx`` -- as ``ir18_narrow`` but exported with torch's
  default (dynamo) exporter: every BN after a conv or Linear folded (including
  ``features`` into the Gemm), PReLU slopes shaped ``(1, C, 1, 1)``.

Each file is written gzipped (``*.onnx.gz``); the weights are rounded to 31
levels per tensor so they compress about 5x.

``--full_r50 PATH`` exports a full-width IR-50 (512-d, ~175 MB) with random
weights to PATH (outside the repository; ``--fold_bn`` for the eval-mode
export, ``--dynamo`` for torch's default exporter) and, with ``--check``,
imports it into our ``IR_50`` and compares 32 random images against
onnxruntime, then checks that ``IR_100`` refuses it::

    KERAS_BACKEND=jax python scripts/make_onnx_fixtures.py --full_r50 /tmp/r50.onnx --check
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "tests" / "data" / "onnx"


# ----------------------------------------------------------------- arcface_torch iresnet


def conv3x3(i, o, stride=1):
    return nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    fc_scale = 7 * 7

    def __init__(self, layers, widths=(64, 128, 256, 512), num_features=512, dropout=0.0):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-05)
        self.prelu = nn.PReLU(widths[0])
        self.layer1 = self._make_layer(widths[0], layers[0], stride=2)
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(widths[3] * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(IBasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.prelu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        x = self.features(x)
        return x


# ----------------------------------------------------------------- arcface_torch mbf


class ConvBlock(nn.Module):
    def __init__(self, i, o, k=1, s=1, p=0, g=1):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(i, o, k, s, p, groups=g, bias=False),
                                    nn.BatchNorm2d(o), nn.PReLU(o))

    def forward(self, x):
        return self.layers(x)


class LinearBlock(nn.Module):
    def __init__(self, i, o, k=1, s=1, p=0, g=1):
        super().__init__()
        self.conv = nn.Conv2d(i, o, k, s, p, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(o)

    def forward(self, x):
        return self.bn(self.conv(x))


class DepthWise(nn.Module):
    def __init__(self, i, o, residual=False, k=(3, 3), s=(2, 2), p=(1, 1), groups=1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(ConvBlock(i, groups, 1, 1, 0),
                                    ConvBlock(groups, groups, k, s, p, g=groups),
                                    LinearBlock(groups, o, 1, 1, 0))

    def forward(self, x):
        y = self.layers(x)
        return y + x if self.residual else y


class Residual(nn.Module):
    def __init__(self, c, num_block, groups, k=(3, 3), s=(1, 1), p=(1, 1)):
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(c, c, True, k, s, p, groups)
                                      for _ in range(num_block)])

    def forward(self, x):
        return self.layers(x)


class GDC(nn.Module):
    def __init__(self, embedding_size):
        super().__init__()
        self.layers = nn.Sequential(LinearBlock(512, 512, (7, 7), 1, 0, g=512), nn.Flatten(),
                                    nn.Linear(512, embedding_size, bias=False),
                                    nn.BatchNorm1d(embedding_size))

    def forward(self, x):
        return self.layers(x)


class MobileFaceNet(nn.Module):
    def __init__(self, num_features=512, blocks=(1, 4, 6, 2), scale=2):
        super().__init__()
        s = scale
        layers = [ConvBlock(3, 64 * s, 3, 2, 1)]
        if blocks[0] == 1:
            layers.append(ConvBlock(64 * s, 64 * s, 3, 1, 1, g=64))
        else:
            layers.append(Residual(64 * s, blocks[0], 128))
        layers += [DepthWise(64 * s, 64 * s, s=(2, 2), groups=128),
                   Residual(64 * s, blocks[1], 128),
                   DepthWise(64 * s, 128 * s, s=(2, 2), groups=256),
                   Residual(128 * s, blocks[2], 256),
                   DepthWise(128 * s, 128 * s, s=(2, 2), groups=512),
                   Residual(128 * s, blocks[3], 256)]
        self.layers = nn.Sequential(*layers)
        self.conv_sep = ConvBlock(128 * s, 512, 1, 1, 0)
        self.features = GDC(num_features)

    def forward(self, x):
        x = self.layers(x)
        x = self.conv_sep(x)
        return self.features(x)


class WithInputNorm(nn.Module):
    """(x - 127.5) * (1/127.5) inside the graph, as some InsightFace exports have."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x - 127.5) * (1.0 / 127.5))


# ----------------------------------------------------------------- helpers


def _quantise(t: torch.Tensor) -> torch.Tensor:
    """Round to 31 levels of a power-of-two step, so the file compresses ~5x with gzip."""
    amax = float(t.abs().max())
    if amax == 0:
        return t
    step = 2.0 ** np.ceil(np.log2(amax / 15.0))
    return torch.round(t / step) * step


def randomise(net: nn.Module, seed: int, quantise: bool = True) -> nn.Module:
    """Random weights, BN affine params and running statistics; PReLU slopes random.

    With ``quantise`` every tensor is rounded to 31 power-of-two-spaced levels
    (see :func:`_quantise`) so the gzipped fixtures stay small; the values are
    still all different enough that any layout / reorder mistake shows.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                c = m.num_features
                if m.weight.requires_grad:  # arcface_torch's features BN keeps gamma at 1
                    m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
        if quantise:
            for t in list(net.parameters()) + list(net.buffers()):
                if t.is_floating_point():
                    t.copy_(_quantise(t))
    return net.eval()


def calibrate_bn(net: nn.Module, batches: int = 4, batch: int = 16, seed: int = 0) -> nn.Module:
    """Set every BatchNorm's running statistics to those of its actual input on random
    images (cumulative average over ``batches``), as training would: activations stay at unit
    scale through the depth, so the embeddings have a trained model's magnitude."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d))]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            net(torch.rand((batch, 3, 112, 112), generator=g) * 2 - 1)
    return net.eval()


def export(net: nn.Module, path: Path, preserve_bn) -> Path:
    """TorchScript exporter (``preserve_bn`` True/False) or ``"dynamo"`` (torch's default
    exporter since 2.9; needs ``onnxscript``; folds every BN that follows a conv or Linear)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    if preserve_bn == "dynamo":
        torch.onnx.export(net, (x,), str(path), dynamo=True, external_data=False,
                          input_names=["input"], output_names=["embedding"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        return path
    mode = torch.onnx.TrainingMode.PRESERVE if preserve_bn else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(net, x, str(path), input_names=["input.1"], output_names=["embedding"],
                      opset_version=13, training=mode, do_constant_folding=True,
                      dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
                      dynamo=False)
    return path


FIXTURES = {
    # name: (builder, preserve_bn)
    "ir18_narrow.onnx": (lambda: IResNet((2, 2, 2, 2), widths=(8, 16, 32, 64),
                                         num_features=64), True),
    "mbf_s1.onnx": (lambda: WithInputNorm(MobileFaceNet(64, blocks=(2, 1, 1, 1), scale=1)), False),
    "mbf_s2.onnx": (lambda: MobileFaceNet(64, blocks=(1, 1, 1, 1), scale=2), True),
    "ir18_narrow_dynamo.onnx": (lambda: IResNet((2, 2, 2, 2), widths=(8, 16, 32, 64),
                                                num_features=64), "dynamo"),
}


def check_full_r50(path: Path) -> None:
    import keras
    import onnxruntime as ort

    sys.path.insert(0, str(REPO))
    from arcface.errors import CheckpointError
    from arcface.onnx_import import import_onnx, onnx_input_convention

    model = import_onnx(path, "IR_50")
    images = np.random.default_rng(0).integers(0, 256, (32, 112, 112, 3), dtype=np.uint8)
    conv = onnx_input_convention(path)
    x = ((images.astype(np.float32) - conv["mean"]) / conv["std"]).transpose(0, 3, 1, 2).copy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ours = np.asarray(model.predict(images.astype(np.float32), batch_size=16, verbose=0))

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    cos = (unit(ours) * unit(ref)).sum(1)
    print(f"[{keras.backend.backend()}] IR_50 vs onnxruntime: min cosine {cos.min():.8f}, "
          f"max abs diff {np.abs(ours - ref).max():.3e} (max |ref| {np.abs(ref).max():.1f}), "
          f"BNs unfolded: {len(model.onnx_import_report['unfolded_bn'])}")
    try:
        import_onnx(path, "IR_100")
        print("IR_100: NOT refused (bug)")
    except CheckpointError as exc:
        print(f"IR_100 refused: {exc}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out_dir", type=Path, default=OUT_DIR)
    ap.add_argument("--full_r50", type=Path, default=None,
                    help="export a full-width random IR-50 to this path instead of the fixtures")
    ap.add_argument("--fold_bn", action="store_true",
                    help="with --full_r50: export in eval mode (conv+BN folded, as the model zoo)")
    ap.add_argument("--dynamo", action="store_true",
                    help="with --full_r50: use torch's default (dynamo) exporter")
    ap.add_argument("--check", action="store_true",
                    help="with --full_r50: import into IR_50, compare with onnxruntime")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.full_r50 is not None:
        net = calibrate_bn(randomise(IResNet((3, 4, 14, 3)), seed=50, quantise=False))
        mode = "dynamo" if args.dynamo else not args.fold_bn
        path = export(net, args.full_r50, preserve_bn=mode)
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
        if args.check:
            check_full_r50(path)
        return
    total = 0
    for i, (name, (build, preserve)) in enumerate(FIXTURES.items()):
        path = export(randomise(build(), seed=i), args.out_dir / name, preserve)
        gz = path.with_name(path.name + ".gz")
        gz.write_bytes(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
        raw = path.stat().st_size
        path.unlink()
        size = gz.stat().st_size
        total += size
        print(f"{gz}: {size / 1e6:.2f} MB ({raw / 1e6:.2f} MB uncompressed)")
    print(f"total {total / 1e6:.2f} MB")
    if total > 5e6:
        raise SystemExit("fixtures exceed 5 MB")


if __name__ == "__main__":
    np.random.seed(0)
    main()
