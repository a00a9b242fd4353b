"""Device codes cannot be walked into universal templates (issue 24, finding 1).

The adaptive boundary walk (:mod:`iom.attacks.boundary_walk`) is checked on a simulated accept
oracle (it recovers the code exactly, in the predicted number of queries, and stops cleanly when
refused), then against the real template service: with the walker holding the device's key and
no lock (the state before the fix) it recovers enrolled templates whole; with the default policy
identification with codes is refused after a few queries and what was walked, read as a
universal code, agrees with the victim's at chance (1/q); a compromised device (its key known)
is stopped by the lock.
"""

import numpy as np
import pytest

from iom.attacks.boundary_walk import Stopped, walk


def oracle(victim: np.ndarray, k: int, budget: int | None = None):
    """accepts(code): at least ``k`` groups agree with ``victim``; refuses after ``budget`` calls."""
    calls = {"n": 0}

    def accepts(code):
        calls["n"] += 1
        if budget is not None and calls["n"] > budget:
            raise Stopped("rate limited")
        return int(np.sum(np.asarray(code) == victim)) >= k

    return accepts, calls


@pytest.mark.parametrize("m, q, k", [(64, 8, 24), (512, 8, 164), (32, 4, 15)])
def test_the_walk_recovers_the_code_from_one_accepted_start(m, q, k):
    rng = np.random.default_rng(m)
    victim = rng.integers(0, q, m)
    start = victim.copy()
    change = rng.choice(m, m - k - 3, replace=False)                 # accepted: k + 3 groups agree
    start[change] = (start[change] + rng.integers(1, q, len(change))) % q
    accepts, calls = oracle(victim, k)
    result = walk(accepts, start, q, np.random.default_rng(1))
    np.testing.assert_array_equal(result.code, victim)
    assert result.stopped is None and result.known.all() and result.queries == calls["n"]
    # bisection + one flip per group + at most q - 2 symbols per disagreeing group
    assert result.queries <= int(np.ceil(np.log2(m))) + 1 + m + (m - k) * (q - 2)


def test_a_refused_walk_returns_what_it_has():
    rng = np.random.default_rng(0)
    victim = rng.integers(0, 8, 64)
    start = victim.copy()
    start[:30] = (start[:30] + 1) % 8
    accepts, calls = oracle(victim, 24, budget=20)
    result = walk(accepts, start, 8, np.random.default_rng(2))
    assert result.stopped == "rate limited" and result.queries == 20
    assert np.mean(result.code == victim) <= np.mean(start == victim) + 1e-9   # nothing learnt beyond the start


def settings(tmp_path):
    """``before`` and ``after`` settings of the attack suite: synthetic people, an untrained
    (public) 64x8 deep IoM head, fast token stretching."""
    from iom.attacks.faces import synthetic_faces
    from iom.attacks.hashers import calibrate
    from iom.attacks.setting import Scale, Setting
    from iom.hashing.hasher import DeepIoMHasher

    faces = synthetic_faces(40, 8, 32, seed=0)
    hasher = DeepIoMHasher({"m": 64, "q": 8, "dim": 32, "train_key": "iomface-train", "key_mode": "code",
                            "model_id": "test_deep_64x8"}, seed=0)
    calibration = calibrate(hasher, faces.embeddings, faces.labels, n_impostor=20_000)
    scale = Scale(n_walk_victims=2, enrol_samples=3)
    return [Setting(kind, hasher, calibration, faces, 0, scale, tmp_path) for kind in ("before", "after")]


def test_walk_against_the_service_before_and_after(tmp_path):
    from iom.attacks import boundary_walk

    before_setting, after_setting = settings(tmp_path)
    before = boundary_walk.run(before_setting)["scenarios"]["before"]
    result = boundary_walk.run(after_setting)
    s = result["scenarios"]
    chance = result["chance"]
    # before: the walk recovers every walked template whole, in minutes at the old limit
    assert before["walked"] >= 1 and before["templates_recovered"] == before["walked"]
    assert before["mean_agreement_universal"] == 1.0 and before["mean_hours_at_default_limits"] < 0.5
    # after, default policy: refused after a handful of queries, with or without the device's key
    for name in ("after", "after_key_known"):
        assert s[name]["walked"] >= 1 and s[name]["mean_queries"] <= 8, name
        assert s[name]["mean_agreement_universal"] <= s[name]["mean_start_agreement"] + 1e-9, name
    # waiting the limits out: the whole walk, but without the key what it recovers is the device's
    # code, at chance as a universal template; with the key, hours of it
    patient, leaked = s["after_patient"], s["after_key_known_patient"]
    assert patient["mean_agreement_universal"] == pytest.approx(chance, abs=0.1)
    assert patient["templates_recovered"] == 0
    assert leaked["templates_recovered"] == leaked["walked"] and leaked["mean_hours_at_default_limits"] > 1
