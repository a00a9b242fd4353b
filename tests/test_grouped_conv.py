"""GroupedConv2D against a direct NumPy grouped convolution."""

import numpy as np
import pytest
from keras import ops

from arcface.backbones.common import GroupedConv2D


def numpy_grouped_conv(x, kernel, groups, stride):
    n, h, w, cin = x.shape
    kh, kw, ipg, cout = kernel.shape
    opg = cout // groups
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, oh, ow, cout))
    for o in range(cout):
        g = o // opg
        for i in range(ipg):
            c = g * ipg + i
            for a in range(kh):
                for b in range(kw):
                    patch = x[:, a:a + stride * oh:stride, b:b + stride * ow:stride, c]
                    out[..., o] += patch * kernel[a, b, i, o]
    return out


@pytest.mark.parametrize("cin,cout,groups,stride", [(8, 8, 4, 1), (6, 12, 3, 2), (4, 4, 1, 1), (4, 4, 4, 1)])
def test_grouped_conv_matches_numpy(cin, cout, groups, stride):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 9, cin)).astype(np.float32)
    layer = GroupedConv2D(cout, 3, groups, strides=stride)
    got = ops.convert_to_numpy(layer(x))
    ref = numpy_grouped_conv(x, ops.convert_to_numpy(layer.kernel), groups, stride)
    assert got.shape == ref.shape == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_grouped_conv_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="not divisible"):
        GroupedConv2D(6, 3, 4)(np.zeros((1, 5, 5, 8), np.float32))
