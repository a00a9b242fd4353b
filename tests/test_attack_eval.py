"""The attack suite in small (synthetic people, m=32): every attack succeeds well above chance
on the legacy scheme and is at chance, or refused with a typed error, on the current service.
Runs under KERAS_BACKEND=tensorflow and =jax (the inversion's gradients come from the backend)."""

import numpy as np
import pytest

DIM, M, Q = 32, 32, 8
SCALE = dict(n_subjects=24, oracle_calls=(40, 120, 300), n_masquerade=6, n_dictionary=50, n_chosen=40,
             n_token_victims=16, n_token_victims_after=4, n_unrelated=20, n_forgery_trials=1, n_pin_victims=1,
             pin_digits=3, max_offline_guesses=1000, offline_seconds=1.0, tokens_per_class=2, inversion_steps=60,
             enrol_samples=3)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from iom.attacks.faces import synthetic_faces
    from iom.attacks.hashers import RandomIoMHasher, calibrate
    from iom.attacks.setting import Scale
    from iom.attacks.suite import run_suite
    from iom.hashing.hasher import DeepIoMHasher
    from iom.service.policy import ServicePolicy

    faces = synthetic_faces(60, 8, DIM, seed=0)
    deep = DeepIoMHasher({"m": M, "q": Q, "dim": DIM, "train_key": "iomface-train", "key_mode": "code",
                          "model_id": "test_deep_32x8"}, seed=0)         # untrained: a public projection
    hashers = {name: (h, calibrate(h, faces.embeddings, faces.labels, n_impostor=20_000))
               for name, h in (("deep", deep), ("random", RandomIoMHasher(M, Q, DIM)))}
    cheap = {"after": {"policy": ServicePolicy(allow_embeddings=True, scrypt_n=2**10)}}   # same rules, fast KDF
    out = run_suite(hashers, faces, [0], Scale(**SCALE), tmp_path_factory.mktemp("attacks"),
                    target_options=cheap, log=lambda _: None)
    return {name: {kind: {a: r[0] for a, r in by_attack.items()} for kind, by_attack in by_kind.items()}
            for name, by_kind in out.items()}


@pytest.mark.parametrize("hasher", ["deep", "random"])
def test_score_oracle(results, hasher):
    before, after = results[hasher]["before"]["score_oracle"], results[hasher]["after"]["score_oracle"]
    if hasher == "deep":                      # the public code: exact recovery once calls >= m(q-1)+1
        assert before["symbols_recovered"]["300"] == 1.0 and before["symbols_recovered"]["40"] > 0.3
        assert before["masquerade_inverted"] == {"identify": 1.0, "verify": 1.0}
        assert after["symbols_recovered"]["300"] < 0.25
        assert after["masquerade_inverted"] == {"identify": 0.0, "verify": 0.0}
        assert before["masquerade_regression"]["verify"] >= 0.8
    assert before["masquerade_regression"]["identify"] >= 0.8     # random IoM: fits the identification key's codes
    assert after["masquerade_regression"] == {"identify": 0.0, "verify": 0.0}
    assert after["answered"] == 300                  # the per-client rate limit, rotated around


@pytest.mark.parametrize("hasher", ["deep", "random"])
def test_one_identification_key(results, hasher):
    before, after = results[hasher]["before"]["relabelling"], results[hasher]["after"]["relabelling"]
    if hasher == "deep":
        assert before["table_entries_recovered"] > 0.95 and before["symbols_recovered"] > 0.95
        assert after["symbols_recovered"] < 0.3 and "table_entries_recovered" not in after
    assert before["linkage_identify"] >= 0.75 and before["linkage_verify"] <= 0.3        # chance 1/24
    assert after["linkage_identify"] <= 0.3 and after["linkage_verify"] <= 0.3


def test_row_forgery(results):
    before, after = results["deep"]["before"]["row_forgery"], results["deep"]["after"]["row_forgery"]
    for name in ("tamper", "substitute", "replay", "rollback_reissue", "rollback_file_running"):
        assert before[name] == 1.0 and after[name] == 0.0, name
    for name in ("rollback_file_restarted", "truncate_log_replay_restarted", "drop_log_replay_restarted"):
        assert before[name] == 1.0 and after[f"{name}_witness"] == 0.0, name


def test_tokens(results):
    before, after = results["deep"]["before"]["tokens"], results["deep"]["after"]["tokens"]
    assert before["offline"]["pin_found"] == 1.0 and after["offline"]["pins_enrolled"] == 0.0
    assert before["offline"]["guesses_per_s"] > 5 * after["offline"]["guesses_per_s"]   # scrypt 2^10 here
    assert after["offline"]["policy_refuses"]["4-digit PIN"] == 1.0
    assert before["offline"]["policy_refuses"]["4-digit PIN"] == 0.0
    assert before["online"]["confirmed"] >= 0.75 and before["online"]["false_confirmed"] <= 0.5
    assert after["online"]["confirmed"] == 0.0 and after["online"]["calls_refused"] > 0


@pytest.mark.parametrize("hasher", ["deep", "random"])
def test_full_key_inversion(results, hasher):
    for kind in ("before", "after"):             # full disclosure defeats any template protection
        r = results[hasher][kind]["full_key"]
        assert r["verify"] == 1.0 and r["cosine_to_enrolment"] > 0.5
        assert r["secret_only_identify"] >= 0.5   # identification templates: the secret alone


def test_relabelling_recovery_is_exact():
    from iom.attacks.relabel import recover_relabelling, unkey
    from iom.hashing.keying import CodeKeying
    from iom.keys import TemplateKey

    rng = np.random.default_rng(0)
    plain = rng.integers(0, Q, (60, M))
    keying = CodeKeying(TemplateKey.from_seed("k"), M, Q)
    order, tables = recover_relabelling(plain, keying.apply(plain), Q)
    assert np.array_equal(order, keying.group_order) and np.array_equal(tables, keying.tables)
    other = rng.integers(0, Q, (5, M))
    assert np.array_equal(unkey(keying.apply(other), order, tables), other)


def test_boundary_walk_with_device_codes(results):
    before, after = results["deep"]["before"]["boundary_walk"], results["deep"]["after"]["boundary_walk"]
    assert before["universal_agreement"] == 1.0 and before["templates_recovered"] == 1.0
    assert after["universal_agreement"] < 0.3 and after["templates_recovered"] == 0.0      # chance 1/8
    assert after["queries_answered"] <= 8 < before["queries_answered"]
    assert "skipped" in results["random"]["after"]["boundary_walk"]                         # no public code
