"""The guard (learned head against random IoM on held-out identities) and collapse detection.

References: brute-force NumPy TAR/EER over every pair, hand-made verdicts, and two training runs
on synthetic identities: features whose common direction defeats a head that is not told to
centre them (the monitor must name that cause, the guard must warn and ship the random
projection), and the same features with ``input_norm: auto`` (no collapse, a head that wins).
"""

import json

import numpy as np
import pytest

from arcface.config import validate_config
from arcface.errors import ConfigError
from iom.config import STAGE2_FIELDS, finalize_stage2
from iom.hashing import guard as G
from iom.hashing import monitor as M


def cfg_of(**values):
    base = {"sub_name": "guard", "m": 32, "q": 8, "input_norm": "auto", "projection_init": "orthogonal",
            "T": 0.1, "metric_loss_weight": 0, "distill_loss": 1, "classes_per_batch": 20,
            "samples_per_class": 4, "max_steps": 400, "save_steps": 100, "seed": 0, "validation_identities": 60}
    return finalize_stage2(validate_config({**base, **values}, STAGE2_FIELDS, "guard.yaml"))


def identities(n_ids=200, per_id=10, dim=64, offset=0.0, noise=0.6, seed=0):
    """Unit identity centres plus noise, all shifted by a common vector of norm ``offset``."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n_ids, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.repeat(c, per_id, 0) + noise / np.sqrt(dim) * rng.normal(size=(n_ids * per_id, dim))
    common = np.random.default_rng(99).normal(size=dim)
    return (x + offset * common / np.linalg.norm(common)).astype(np.float32), np.repeat(np.arange(n_ids), per_id)


# --------------------------------------------------------------------------- measuring codes
def brute_force(codes, labels, far):
    """TAR at the lowest similarity threshold with FAR <= far, and the EER, over every pair."""
    i, j = np.triu_indices(len(codes), 1)
    sim = (codes[i] == codes[j]).sum(1)
    same = labels[i] == labels[j]
    m = codes.shape[1]
    fars = np.array([(sim[~same] >= k).mean() for k in range(m + 2)])
    tars = np.array([(sim[same] >= k).mean() for k in range(m + 2)])
    k = int(np.flatnonzero(fars <= far)[0])
    return tars[k], fars, 1 - tars


def test_code_scores_match_brute_force():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(20), 6)
    base = rng.integers(0, 4, (20, 12))
    codes = np.where(rng.random((120, 12)) < 0.35, rng.integers(0, 4, (120, 12)), np.repeat(base, 6, 0))
    scores = G.code_scores(codes, 4, labels)
    n_pairs = 120 * 119 // 2
    assert scores["n_genuine"] == 20 * 15 and scores["n_impostor"] == n_pairs - 300
    tar, fars, frrs = brute_force(codes, labels, 1e-3)
    assert scores["tar@0.001"] == pytest.approx(tar)
    assert scores["tar@0.0001"] is None                         # 6,840 impostor pairs do not resolve 1e-4
    k = int(np.flatnonzero(fars - frrs <= 0)[0])                # the EER lies between thresholds k-1 and k
    assert min(fars[k], frrs[k - 1]) - 1e-12 <= scores["eer"] <= max(fars[k - 1], frrs[k]) + 1e-12


def test_eer_from_histograms_hand_computed():
    # thresholds k = 0..2 (+3): FAR 1, 0.5, 0, 0 ; FRR 0, 0, 0.5, 1 -> FAR - FRR = 1, .5, -.5: cross halfway
    # between k=1 (FAR 0.5) and k=2 (FAR 0): EER 0.25
    assert G.eer_from_histograms([0, 2, 2], [2, 2, 0]) == pytest.approx(0.25)
    assert G.eer_from_histograms([0, 0, 4], [4, 0, 0]) == pytest.approx(0.0)   # separated


# --------------------------------------------------------------------------- the split
def test_validation_split_is_one_fixed_draw_of_whole_identities():
    labels = np.repeat(np.arange(50), 3)
    train, val = G.validation_split(labels, 10, min_train=5)
    assert not np.any(train & val) and np.all(train | val)
    assert len(np.unique(labels[val])) == 10
    assert not set(labels[val]) & set(labels[train])
    again = G.validation_split(labels, 10, min_train=5)[1]
    np.testing.assert_array_equal(val, again)                   # same people for every training seed
    assert len(np.unique(labels[G.validation_split(labels, 0.2, 5)[1]])) == 10   # a fraction
    assert not G.validation_split(labels, 0, 5)[1].any()       # 0: guard off
    assert not G.validation_split(labels, 0.5, 40)[1].any()    # a fraction that leaves too few: off
    with pytest.raises(ConfigError, match="validation_identities"):
        G.validation_split(labels, 20, min_train=40)           # an explicit count that leaves too few


def test_config_validates_the_guard_keys():
    with pytest.raises(ConfigError, match="validation_identities"):
        cfg_of(validation_identities=1.5)
    with pytest.raises(ConfigError, match="if_not_better"):
        cfg_of(if_not_better="sometimes")


# --------------------------------------------------------------------------- the verdict
def scores(tar3, tar4, n_genuine=5000, n_impostor=2_000_000, eer=0.1):
    return {"tar@0.001": tar3, "tar@0.0001": tar4, "eer": eer, "n_genuine": n_genuine, "n_impostor": n_impostor}


RANDOM = [scores(0.60, 0.40), scores(0.62, 0.42), scores(0.58, 0.38)]   # merit 0.5 ± 0.0163


def test_decide_learned_must_beat_random_by_its_spread_and_its_start():
    wins = G.decide(scores(0.70, 0.50), scores(0.61, 0.41), RANDOM, "random", "center")
    assert wins.learned_wins and wins.shipped == "learned" and "beats random IoM" in wins.message
    assert wins.report["learned_merit"] == pytest.approx(0.6)
    assert wins.report["random"]["mean"] == pytest.approx(0.5) and wins.report["fars"] == [1e-3, 1e-4]
    within = G.decide(scores(0.61, 0.40), scores(0.60, 0.40), RANDOM, "random", "center")   # 0.505 < 0.516
    assert not within.learned_wins and within.shipped == "random_normalised"
    assert within.message.startswith("WARNING") and "does NOT beat random IoM" in within.message
    below_start = G.decide(scores(0.70, 0.50), scores(0.72, 0.52), RANDOM, "random", "center")
    assert not below_start.learned_wins and "initial projection it started from" in below_start.message
    # the initial projection of the normalised input is below random IoM's mean: plain random ships
    assert G.decide(scores(0.5, 0.3), scores(0.5, 0.3), RANDOM, "random", "center").shipped == "random"
    assert G.decide(scores(0.5, 0.3), scores(0.6, 0.45), RANDOM, "random", "none").shipped == "random"
    kept = G.decide(scores(0.5, 0.3), scores(0.6, 0.4), RANDOM, "learned", "center")
    assert not kept.learned_wins and kept.shipped == "learned" and "if_not_better: learned" in kept.message


def test_decide_uses_the_eer_when_no_far_is_resolved_and_refuses_to_judge_tiny_sets():
    few = [scores(None, None, n_impostor=5000, eer=e) for e in (0.2, 0.21, 0.19)]
    d = G.decide(scores(None, None, n_impostor=5000, eer=0.1), scores(None, None, n_impostor=5000, eer=0.2),
                 few, "random", "center")
    assert d.learned_wins and d.report["metric"] == "-EER"
    tiny = G.decide(scores(0.9, 0.9, n_genuine=10), scores(0.1, 0.1), RANDOM, "random", "center")
    assert tiny.report["inconclusive"] and tiny.shipped == "learned" and "inconclusive" in tiny.message


# --------------------------------------------------------------------------- collapse
def test_code_health_against_numpy():
    probs = np.zeros((4, 2, 4), np.float32)
    codes = np.array([[0, 1], [0, 2], [0, 1], [3, 1]])
    probs[np.arange(4)[:, None], np.arange(2)[None], codes] = 0.7
    probs += 0.1 * (probs == 0)
    h = M.code_health(probs)
    assert h.distinct == pytest.approx(3 / 4)
    assert h.dominant == pytest.approx(np.median([3 / 4, 3 / 4]))
    agree = [(codes[a] == codes[b]).mean() for a in range(4) for b in range(4) if a != b]
    assert h.agreement == pytest.approx(np.mean(agree))
    assert h.saturation == pytest.approx(0.7)
    assert M.collapse_signs(h, 4, None) == []          # pairs agree on 50%: below halfway from 1/q to 1 (62.5%)
    assert M.collapse_signs(M.CodeHealth(0.5, 0.5, 0.63, 0.9), 4, None) == ["codes constant"]
    assert M.collapse_signs(M.CodeHealth(0.04, 0.5, 0.3, 0.9), 4, None) == ["codes constant"]   # 4% distinct
    assert M.collapse_signs(M.CodeHealth(1.0, 0.2, 0.13, 0.9), 8, 0.0001) == ["loss flat"]
    assert M.collapse_signs(M.CodeHealth(1.0, 0.95, 0.13, 0.9), 8, 0.5) == ["one index dominant"]


def train(cfg, x, y, tmp_path, capsys):
    from iom.hashing.train import train_hasher

    hasher, history = train_hasher(cfg, x, y, str(tmp_path / "ck"), str(tmp_path / "logs"), progress=False)
    return hasher, history, capsys.readouterr().out


def test_a_head_defeated_by_a_common_direction_is_caught_and_random_iom_ships(tmp_path, capsys):
    """Features whose common direction is five times their identity spread, with centring off:
    every projection mostly sees that direction. The monitor must report the collapse and its
    cause and stop training; the guard must warn and ship the head's initial (random) projection."""
    from iom.hashing.hasher import DeepIoMHasher

    x, y = identities(offset=5.0)
    cfg = cfg_of(input_norm="none", max_steps=1000)
    hasher, history, out = train(cfg, x, y, tmp_path, capsys)
    report = hasher.spec["training_report"]
    collapse = report["collapse"]
    assert collapse is not None and "codes constant" in collapse["signs"]
    assert "common direction" in collapse["cause"] and "input_norm: center" in collapse["cause"]
    assert "stopped_at" in collapse and len(history["loss"]) < cfg["max_steps"] // cfg["save_steps"]
    assert "WARNING: the hashing head collapsed" in out and "Likely cause: the features share a large" in out
    assert not report["learned_wins"] and report["shipped"] == "random" and report["guard"]["collapsed"]
    assert "WARNING: the learned head does NOT beat" in out and "shipping a random IoM projection" in out
    # what ships is the untrained head: the seed's initial projection, no input normalisation
    initial = DeepIoMHasher.from_config(cfg, x.shape[1])
    np.testing.assert_array_equal(hasher.codes(x), initial.codes(x))
    saved = json.loads((tmp_path / "ck" / "guard" / "hasher.json").read_text())
    assert saved["training_report"]["shipped"] == "random"
    assert saved["training_report"]["guard"]["random"]["mean"] == pytest.approx(report["guard"]["random"]["mean"])
    reloaded = DeepIoMHasher.load(str(tmp_path / "ck" / "guard"))
    np.testing.assert_array_equal(reloaded.codes(x[:50]), hasher.codes(x[:50]))


def test_a_head_that_memorises_its_training_identities_loses_to_random_iom_and_is_replaced(tmp_path, capsys):
    """The mission's batch-hard arc-triplet loss on two hidden layers with a high learning rate
    fits the training identities and codes new faces worse than its own random start: the guard
    must say so and ship that start (a random IoM projection of the normalised input)."""
    from iom.hashing.hasher import DeepIoMHasher

    x, y = identities(offset=3.0)
    cfg = cfg_of(input_norm="center", loss_fun="batch_hard_arc_triplet_loss", metric_loss_weight=1,
                 distill_loss=0, base_lr=0.05, hidden_layer_remark="2", max_steps=600, collapse_check=False)
    hasher, _, out = train(cfg, x, y, tmp_path, capsys)
    report = hasher.spec["training_report"]
    g = report["guard"]
    assert g["learned_merit"] < g["random"]["mean"] < g["initial_merit"]
    assert not report["learned_wins"] and report["shipped"] == "random_normalised"
    assert "WARNING: the learned head does NOT beat random IoM" in out
    initial = DeepIoMHasher.from_config(cfg, x.shape[1])
    train_rows, _ = G.validation_split(y, cfg["validation_identities"], cfg["classes_per_batch"])
    initial.fit_input_normalization(x[train_rows])
    np.testing.assert_array_equal(hasher.codes(x), initial.codes(x))


def test_auto_input_norm_trains_on_the_same_features_and_the_learned_head_ships(tmp_path, capsys):
    x, y = identities(offset=5.0)
    hasher, history, out = train(cfg_of(input_norm="auto"), x, y, tmp_path, capsys)
    report = hasher.spec["training_report"]
    assert hasher.spec["input_norm_auto"]["centred"]
    assert report["collapse"] is None and "collapsed" not in out
    assert history["distillation"][-1] < history["distillation"][0]
    assert report["learned_wins"] and report["shipped"] == "learned"
    assert report["guard"]["learned_merit"] > report["guard"]["random"]["mean"] + report["guard"]["random"]["std"]


def test_guard_off_says_so(tmp_path, capsys):
    x, y = identities(n_ids=40, per_id=4, offset=0.0)
    hasher, _, out = train(cfg_of(validation_identities=0, max_steps=50, save_steps=50), x, y, tmp_path, capsys)
    assert "guard off" in out and "guard" not in hasher.spec["training_report"]


def test_describe_training_report_for_the_test_script():
    g = {"metric": "mean TAR at FAR 0.001 and 0.0001", "learned_merit": 0.4, "initial_merit": 0.5,
         "random": {"mean": 0.45, "std": 0.01}}
    lost = G.describe_training_report({"training_report": {"guard": g, "learned_wins": False,
                                                           "shipped": "random_normalised", "collapse": None}})
    assert len(lost) == 1 and lost[0].startswith("WARNING: the learned head did NOT beat random IoM")
    assert "learned 0.4000, random IoM 0.4500 ± 0.0100" in lost[0] and "normalised input" in lost[0]
    won = G.describe_training_report({"training_report": {"guard": g, "learned_wins": True, "shipped": "learned"}})
    assert won[0].startswith("guard: the learned head beat random IoM")
    collapsed = G.describe_training_report({"training_report": {
        "collapse": {"step": 50, "signs": ["codes constant"], "cause": "the features share ..."},
        "guard": g, "learned_wins": False, "shipped": "random"}})
    assert collapsed[0].startswith("WARNING: the head collapsed in training at step 50 (codes constant)")
    assert "features as given" in collapsed[1]
    assert "no training report" in G.describe_training_report({})[0]
