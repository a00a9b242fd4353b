"""Identification metrics against hand-computed CMC ranks, AP and open-set DIR."""

import math

import numpy as np
import pytest

from arcface.errors import DataFormatError
from iom.evaluation import identification as ident
from iom.evaluation.identification import (
    format_identification_table,
    identification_report,
    split_gallery_probes,
)

# Gallery: two entries of "a", one of "b", one of "c".  Probes 0-3 are mated, 4-5 are not.
GALLERY = ["a", "a", "b", "c"]
PROBES = ["a", "b", "c", "a", "z", "y"]
SIM = np.array([
    [0.9, 0.1, 0.5, 0.3],  # a: rank 1; order a b c a -> AP (1/1 + 2/4)/2 = 3/4
    [0.6, 0.2, 0.6, 0.7],  # b: 0.6 ties with a's 0.6, c is above -> rank 3 (pessimistic), AP 1/3
    [0.2, 0.3, 0.1, 0.4],  # c: rank 1, AP 1, best mated 0.4
    [0.5, 0.5, 0.5, 0.2],  # a: ties with b -> rank 2; order b a a c -> AP (1/2 + 2/3)/2 = 7/12
    [0.4, 0.0, 0.2, 0.1],  # non-mated, top 0.4
    [0.3, 0.8, 0.1, 0.0],  # non-mated, top 0.8 (above most mated scores)
])


def test_cmc_and_map_by_hand():
    r = identification_report(SIM, GALLERY, PROBES, far=0.5, ranks=(1, 2, 3, 5))
    assert r.mated_ranks.tolist() == [1, 3, 1, 2]
    assert r.mated_ap == pytest.approx([3 / 4, 1 / 3, 1.0, 7 / 12])
    assert r.cmc == pytest.approx({1: 0.5, 2: 0.75, 3: 1.0, 5: 1.0})
    assert r.mean_ap == pytest.approx((3 / 4 + 1 / 3 + 1 + 7 / 12) / 4)  # = 2/3
    assert (r.n_gallery, r.n_mated, r.n_nonmated) == (4, 4, 2)


@pytest.mark.parametrize(
    "far, threshold, fpir, dir_",
    [
        # One false positive allowed: reject 0.4, accept the non-mated 0.8 -> t = 0.5.
        # Rank-1 probes: best 0.9 (accepted) and 0.4 (rejected).
        (0.5, 0.5, 0.5, 0.25),
        # None allowed: t must exceed 0.8; the smallest observed score above is 0.9.
        (0.0, 0.9, 0.0, 0.25),
        # All allowed: t = lowest observed score 0.4, both rank-1 probes are detected.
        (1.0, 0.4, 1.0, 0.5),
    ],
)
def test_open_set_dir_by_hand(far, threshold, fpir, dir_):
    r = identification_report(SIM, GALLERY, PROBES, far=far)
    assert r.threshold == pytest.approx(threshold)
    assert r.fpir == pytest.approx(fpir)
    assert r.dir_at_far == pytest.approx(dir_)
    assert r.dir_reason is None


def test_threshold_inf_when_nothing_beats_nonmated():
    sim = np.array([[0.5, 0.1], [0.9, 0.0]])  # probe "a" (best 0.5), non-mated top 0.9
    r = identification_report(sim, ["a", "b"], ["a", "x"], far=0.0)
    assert r.threshold == math.inf and r.dir_at_far == 0.0 and r.fpir == 0.0
    assert r.to_dict()["threshold"] is None


def test_no_nonmated_probes():
    r = identification_report(SIM[:4], GALLERY, PROBES[:4])
    assert r.dir_at_far is None and r.fpir is None and r.threshold is None
    assert "non-mated" in r.dir_reason
    assert r.to_dict()["dir_at_far"] is None


def _brute_force(sim, gallery, probes):
    """Per-probe reference: explicit pessimistic sort (others before own within a tie)."""
    gallery = np.asarray(gallery)
    ranks, aps = [], []
    for s, lab in zip(sim, probes):
        own = gallery == lab
        if not own.any():
            continue
        order = np.lexsort((own, -s))  # score descending, then other-identity first
        rel = own[order]
        ranks.append(int(np.argmax(rel)) + 1)
        hits = np.cumsum(rel)
        aps.append(np.mean((hits / np.arange(1, len(s) + 1))[rel]))
    return np.array(ranks), np.array(aps)


def test_matches_brute_force_with_ties_and_chunks(monkeypatch):
    monkeypatch.setattr(ident, "_CHUNK_ELEMENTS", 50)  # force many small chunks
    rng = np.random.default_rng(3)
    gallery = rng.integers(0, 6, size=15)  # uneven entries per identity
    probes = rng.integers(0, 8, size=40)  # labels 6, 7 (and any absent) are non-mated
    sim = rng.integers(0, 5, size=(40, 15)) / 4.0  # heavy ties
    r = identification_report(sim, gallery, probes, ranks=(1, 3))
    ranks, aps = _brute_force(sim, gallery, probes)
    assert r.mated_ranks.tolist() == ranks.tolist()
    np.testing.assert_allclose(r.mated_ap, aps)
    assert r.cmc[3] == pytest.approx(np.mean(ranks <= 3))


def test_errors():
    with pytest.raises(DataFormatError):
        identification_report(SIM[:, :3], GALLERY, PROBES)  # shape mismatch
    bad = SIM.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataFormatError):
        identification_report(bad, GALLERY, PROBES)
    with pytest.raises(DataFormatError):
        identification_report(SIM[4:], GALLERY, PROBES[4:])  # no mated probe


def test_format_table():
    r = identification_report(SIM, GALLERY, PROBES, far=0.5)
    text = format_identification_table([r, r], ["iom", "cos"])
    lines = text.splitlines()
    assert "Rank-1" in lines[0] and "mAP" in lines[0] and "DIR@FAR=5e-01" in lines[0]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert "0.6667" in lines[2]
    with pytest.raises(DataFormatError):
        format_identification_table([r], ["a", "b"])


def test_split_gallery_probes_first_in_order():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    g, m, n = split_gallery_probes(labels)
    assert g.tolist() == [0, 3, 6]
    assert m.tolist() == [1, 2, 4, 7, 8, 9]
    assert n.tolist() == [5]  # class 2 has a single sample: not enrolled
    g, m, n = split_gallery_probes(labels, gallery_per_class=2)
    assert g.tolist() == [0, 1, 6, 7]
    assert m.tolist() == [2, 8, 9]
    assert n.tolist() == [3, 4, 5]


def test_split_gallery_probes_random():
    labels = np.array(["x"] * 5 + ["y"] * 3 + ["z"])
    g, m, n = split_gallery_probes(labels, gallery_per_class=2, seed=7)
    assert sorted(np.concatenate((g, m, n)).tolist()) == list(range(9))
    assert sorted(labels[g].tolist()) == ["x", "x", "y", "y"]
    assert len(m) == 4 and n.tolist() == [8]
    again = split_gallery_probes(labels, gallery_per_class=2, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip((g, m, n), again))
    with pytest.raises(DataFormatError):
        split_gallery_probes(labels, gallery_per_class=0)
