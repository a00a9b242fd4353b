"""Unlinkability (Gomez-Barrero et al. 2018) and decidability against hand-computed values."""

import math

import numpy as np
import pytest

from arcface.errors import DataFormatError
from iom.evaluation.unlinkability import decidability, save_unlinkability_plot, unlinkability


def test_two_bin_example_by_hand():
    # Discrete scores {0, 1}: one bin each, edges -0.5, 0.5, 1.5.
    # p(0|Hm) = 1/4, p(0|Hnm) = 3/4 -> LR = 1/3 <= 1 -> D = 0
    # p(1|Hm) = 3/4, p(1|Hnm) = 1/4 -> LR = 3 -> D = 2*3/4 - 1 = 1/2
    # D_sys = 3/4 * 1/2 = 3/8
    r = unlinkability([0, 1, 1, 1], [0, 0, 0, 1])
    np.testing.assert_allclose(r.bin_edges, [-0.5, 0.5, 1.5])
    np.testing.assert_allclose(r.bin_centers, [0.0, 1.0])
    np.testing.assert_allclose(r.mated_density, [0.25, 0.75])
    np.testing.assert_allclose(r.nonmated_density, [0.75, 0.25])
    np.testing.assert_allclose(r.d_local, [0.0, 0.5])
    assert r.d_sys == pytest.approx(3 / 8)
    assert (r.n_mated, r.n_nonmated) == (4, 4)
    # omega = 3: bin 0 has omega*LR = 1 (not > 1) -> 0; bin 1: 2*9/10 - 1 = 0.8 -> D_sys = 0.6
    assert unlinkability([0, 1, 1, 1], [0, 0, 0, 1], omega=3).d_sys == pytest.approx(0.6)


def test_discrete_bins_are_not_aliased():
    # Unevenly spaced values: one bin per value, end bins symmetric about their value.
    r = unlinkability([0.0, 0.25, 1.0], [0.25])
    np.testing.assert_allclose(r.bin_edges, [-0.125, 0.125, 0.625, 1.375])
    np.testing.assert_allclose(r.d_local, [1.0, 0.0, 1.0])  # no non-mated mass -> 1
    assert r.d_sys == pytest.approx(2 / 3)


def test_same_distribution_is_unlinkable():
    rng = np.random.default_rng(0)
    r = unlinkability(rng.normal(size=200_000), rng.normal(size=200_000))
    assert len(r.bin_centers) == 100  # continuous: min(max(n//10, 10), 100) bins
    assert r.d_sys < 0.01
    hamming = rng.binomial(512, 0.5, size=(2, 200_000)) / 512  # discrete scores
    assert unlinkability(hamming[0], hamming[1]).d_sys < 0.01


def test_separated_distributions_are_fully_linkable():
    rng = np.random.default_rng(1)
    r = unlinkability(rng.uniform(0.8, 1.0, 5000), rng.uniform(0.0, 0.2, 5000))
    assert r.d_sys == pytest.approx(1.0)
    assert unlinkability([0.9, 1.0], [0.0, 0.1], bins=4).d_sys == pytest.approx(1.0)


def test_int_bins_and_errors():
    r = unlinkability([0.0, 1.0], [0.0, 1.0], bins=5)
    assert len(r.d_local) == 5 and r.d_sys == 0.0
    with pytest.raises(DataFormatError):
        unlinkability([], [0.5])
    with pytest.raises(DataFormatError):
        unlinkability([0.5, np.nan], [0.5])
    with pytest.raises(DataFormatError):
        unlinkability([0.5], [0.5], bins=0)
    with pytest.raises(DataFormatError):
        unlinkability([0.5], [0.5], omega=0)
    with pytest.raises(ValueError):  # DataFormatError is a ValueError
        unlinkability([0.5], [0.5], bins="fd")


def test_decidability_by_hand():
    # genuine [1, 3]: mean 2, var 1; impostor [-2, 2]: mean 0, var 4 -> 2 / sqrt(2.5)
    assert decidability([1, 3], [-2, 2]) == pytest.approx(2 / math.sqrt(2.5))
    assert decidability([1, 1], [0, 0]) == math.inf
    with pytest.raises(DataFormatError):
        decidability([], [1.0])


def test_to_dict_plain():
    d = unlinkability([0, 1, 1, 1], [0, 0, 0, 1]).to_dict()
    assert d["d_sys"] == pytest.approx(0.375)
    assert d["d_local"] == [0.0, 0.5] and isinstance(d["bin_edges"], list)
    assert type(d["n_mated"]) is int


def test_plot_writes_png(tmp_path):
    rng = np.random.default_rng(2)
    r = unlinkability(rng.binomial(64, 0.6, 500) / 64, rng.binomial(64, 0.5, 500) / 64)
    out = save_unlinkability_plot(r, tmp_path / "sub" / "unlink.png", title="test")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["unlink.png"]  # no tmp left
