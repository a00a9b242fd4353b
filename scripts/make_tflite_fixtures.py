"""Make the small TFLite fixtures of tests/test_tflite_import.py (dev-only; needs TensorFlow).

    python scripts/make_tflite_fixtures.py          # writes tests/data/tflite/*.tflite

The network is written the way TF-slim wrote sirius-ai/MobileFaceNet_TF (the lineage of
the ``MobileFaceNet.tflite`` we import): raw ``tf.nn`` convolutions with TF ``SAME``
padding, inference-mode BatchNorm after each conv (random gamma/beta *and* random moving
statistics, so a wrong mapping shows) which the TFLite converter folds into the conv bias,
and PReLU written out as ``relu(x) + (alpha / 2) * (x - |x|)`` (one unit in three in TF-slim's
literal ``relu(x) + alpha * (x - |x|) * 0.5``, two MULs). Topology: the paper's
bottlenecks at reduced width (``NARROW`` below), built by our ``MobileFaceNet_TF`` backbone
with the same arguments.

Fixtures:

* ``mbf_tf_narrow.tflite`` -- batch fixed at 2 and a final ``RESHAPE`` to ``[2, E]``, as in
  the released file; PReLU written out (ops RELU/ABS/SUB/MUL/ADD).
* ``mbf_tf_narrow_prelu.tflite`` -- the same weights with PReLU written as
  ``relu(x) + neg(alpha) * relu(-x)``, which the converter fuses into the ``PRELU`` op, and a
  dynamic batch with a final ``SQUEEZE``.
* ``conv_int8.tflite`` -- one integer-quantised conv (the importer must refuse it).

Weights are rounded to 31 levels per tensor, so the files stay small and compressible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "tests" / "data" / "tflite"
sys.path.insert(0, str(REPO))

#: keyword arguments of build_backbone("MobileFaceNet_TF", ...) matching the fixtures
NARROW = {"embd_shape": 16, "stem_channels": 8, "conv_channels": 32,
          "bottlenecks": ((2, 8, 2, 2), (2, 16, 1, 2), (2, 16, 2, 1), (2, 16, 1, 2), (2, 16, 2, 1))}
BN_EPS = 1e-3  # TF-slim's default


def _rounded(rng, shape, scale):
    w = rng.normal(0.0, scale, size=shape)
    levels = np.linspace(w.min(), w.max(), 31) if w.size > 1 else w.reshape(-1)
    return levels[np.abs(w.reshape(-1, 1) - levels.reshape(1, -1)).argmin(1)].reshape(shape)


class SlimMobileFaceNet:
    """Random weights for the narrow network and a TF forward written like TF-slim."""

    def __init__(self, seed: int = 0, embd_shape=16, stem_channels=8, conv_channels=32,
                 bottlenecks=NARROW["bottlenecks"]):
        self.rng = np.random.default_rng(seed)
        self.layers = []  # (kind, params) in forward order, see forward()
        self.embd_shape, self.stem, self.conv_channels = embd_shape, stem_channels, conv_channels
        self.bottlenecks = bottlenecks

    def _conv(self, cin, cout, k, depthwise=False):
        fan = k * k * (1 if depthwise else cin)
        shape = (k, k, cin, 1) if depthwise else (k, k, cin, cout)
        c = cin if depthwise else cout
        return {"w": _rounded(self.rng, shape, (2.0 / fan) ** 0.5).astype(np.float32),
                "gamma": self.rng.uniform(0.6, 1.4, c).astype(np.float32),
                "beta": self.rng.normal(0, 0.1, c).astype(np.float32),
                "mean": self.rng.normal(0, 0.1, c).astype(np.float32),
                "var": self.rng.uniform(0.6, 1.4, c).astype(np.float32),
                "alpha": self.rng.uniform(0.05, 0.4, c).astype(np.float32)}

    def build(self):
        """Draw every weight, in forward order."""
        P = []
        P.append(self._conv(3, self.stem, 3))
        P.append(self._conv(self.stem, self.stem, 3, depthwise=True))
        P.append(self._conv(self.stem, self.stem, 1))
        cin = self.stem
        for t, c, n, s in self.bottlenecks:
            for j in range(n):
                P.append(self._conv(cin, t * cin, 1))
                P.append(self._conv(t * cin, t * cin, 3, depthwise=True))
                P.append(self._conv(t * cin, c, 1))
                cin = c
        P.append(self._conv(cin, self.conv_channels, 1))
        P.append(self._conv(self.conv_channels, self.conv_channels, 7, depthwise=True))
        P.append(self._conv(self.conv_channels, self.conv_channels, 1))
        P.append(self._conv(self.conv_channels, self.embd_shape, 1))
        P[-1]["gamma"] *= np.float32(0.05)  # embeddings of order 10, like a trained model's
        self.params = P
        return self

    def forward(self, x, prelu_form: str, batch: int | None):
        """The TF graph: ``prelu_form`` 'slim' (written out) or 'op' (-> PRELU)."""
        import tensorflow as tf

        it = iter(self.params)
        counter = [0]

        def unit(x, stride=1, depthwise=False, act=True, padding="SAME"):
            p = next(it)
            w = tf.constant(p["w"])
            if depthwise:
                y = tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], padding)
            else:
                y = tf.nn.conv2d(x, w, stride, padding)
            y = tf.nn.batch_normalization(y, p["mean"], p["var"], p["beta"], p["gamma"], BN_EPS)
            if not act:
                return y
            a = p["alpha"]
            if prelu_form == "op":  # the pattern the converter fuses into PRELU
                return tf.nn.relu(y) + (-tf.constant(a.reshape(1, 1, -1))) * tf.nn.relu(-y)
            counter[0] += 1
            if counter[0] % 3:  # as in the released file: one MUL by alpha / 2
                return tf.nn.relu(y) + tf.constant(a * 0.5) * (y - tf.abs(y))
            # TF-slim's literal form: MUL by alpha, then by 0.5
            return tf.nn.relu(y) + tf.constant(a) * (y - tf.abs(y)) * 0.5

        # like the released file, the graph takes input already normalised as (x - 127.5) / 128
        x = unit(x, 2)
        x = unit(x, 1, depthwise=True)
        x = unit(x, act=False)
        for t, c, n, s in self.bottlenecks:
            for j in range(n):
                stride = s if j == 0 else 1
                y = unit(x)
                y = unit(y, stride, depthwise=True)
                y = unit(y, act=False)
                x = y + x if stride == 1 else y
        x = unit(x)
        x = unit(x, depthwise=True, act=False, padding="VALID")
        x = unit(x, act=False)
        x = unit(x, act=False)
        if batch is not None:
            return tf.reshape(x, [batch, self.embd_shape])
        return tf.squeeze(x, [1, 2])


def convert(net: SlimMobileFaceNet, prelu_form: str, batch: int | None) -> bytes:
    import tensorflow as tf

    spec = tf.TensorSpec([batch, 112, 112, 3], tf.float32, name="input")
    fn = tf.function(lambda x: net.forward(x, prelu_form, batch), input_signature=[spec])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    return converter.convert()


def int8_conv() -> bytes:
    import tensorflow as tf

    rng = np.random.default_rng(1)
    w = tf.constant(rng.normal(0, 0.3, (3, 3, 3, 4)).astype(np.float32))
    spec = tf.TensorSpec([1, 16, 16, 3], tf.float32, name="input")
    fn = tf.function(lambda x: tf.nn.conv2d(x, w, 1, "SAME"), input_signature=[spec])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def data():
        for _ in range(8):
            yield [rng.normal(0, 1, (1, 16, 16, 3)).astype(np.float32)]

    converter.representative_dataset = data
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default=str(OUT_DIR))
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = SlimMobileFaceNet(seed=0, **{k: v for k, v in NARROW.items()}).build()
    files = {"mbf_tf_narrow.tflite": convert(net, "slim", 2),
             "mbf_tf_narrow_prelu.tflite": convert(net, "op", None),
             "conv_int8.tflite": int8_conv()}
    for name, data in files.items():
        (out / name).write_bytes(data)
        print(f"{out / name}: {len(data):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
