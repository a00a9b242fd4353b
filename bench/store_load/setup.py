"""The set-up of ``bench/concurrency.py``: its constants, the policy, the subjects' embeddings
and tokens, the store of a back end and the service on it (the same in every worker process
and in the audit)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import string

import numpy as np

from bench.common import postgres_url

# The hasher the recorded figures (docs/BENCHMARKS.md) were measured with; its 512-d embeddings are
# what centre_of draws. The store and concurrency behaviour measured here do not depend on the model.
HASHER = "iom_mbfn_celeba299_512x8"
SECRET = b"bench-concurrency-application-secret"
ADMIN_SECRET = b"bench-concurrency-administrator-credential"
PROBE_NOISE = 0.3            # norm of the noise added to a unit embedding (cosine ~0.96)
STARTUP_TIMEOUT = 300        # s the workers may take to load the hasher and connect
ROUND_TIMEOUT = 120          # s a worker waits at a race round's barrier for the others
SCRYPT_N = 2**10             # the cheapest the policy accepts (default 2**14): see the module doc
LOCKOUT_FAILURES = 3         # max_failures of the strict service (the lockout op)
FAILURE_WINDOW_S = 24 * 3600.0   # longer than any run: every failure of a run counts
ADMIN_SHARE = 3              # one revoke/reissue in ADMIN_SHARE uses the admin secret
REFUSAL_WINDOW_S = 60.0      # the service logs a refusal at most once in this window per subject, client, op
TOKEN_ALPHABET = string.ascii_letters + string.digits
RACE_SUBJECT = "reissue-race"
RACE_SEED = 9_000_001

#: op → weight of the random draw
WEIGHTS = {
    "enroll": 24, "verify": 24, "verify_wrong_token": 12, "revoke": 8, "reissue": 10,
    "identify": 3, "enroll_race": 4, "verify_revoked": 4, "revoke_revoked": 2,
    "reissue_revoked": 2, "enroll_duplicate": 3, "verify_unknown": 2, "lockout": 3,
}
#: every outcome counted, with what it requires (for the report)
OUTCOMES = {
    "enroll": "2 template ids", "verify": "accepted", "verify_wrong_token": "rejected",
    "revoke": "2 revoked", "reissue": "2 new ids", "identify": "subject accepted, once",
    "enroll_race": "ids (won)", "enroll_race_lost": "DuplicateEnrollmentError",
    "verify_revoked": "rejected", "revoke_revoked": "PolicyError (proof) / RevokedTemplateError (admin)",
    "reissue_revoked": "PolicyError (proof) / RevokedTemplateError (admin)",
    "enroll_duplicate": "DuplicateEnrollmentError", "verify_unknown": "rejected",
    "lockout_rejected": "rejected (fewer than 3 failures)", "lockout_locked": "RateLimitedError",
    "reissue_race_won": "one winner per round", "reissue_race_lost": "ConflictError (or PolicyError: stale proof)",
}
WRITES = ("enroll", "revoke", "reissue")
#: counted outcomes that wrote to the templates (for writes/s)
WRITE_OUTCOMES = ("enroll", "enroll_race", "revoke", "reissue", "reissue_race_won")
#: journal op → event-log op
EVENT_OP = {"enroll": "enroll", "enroll_race": "enroll", "revoke": "revoke", "reissue": "reissue",
            "reissue_race": "reissue"}


#: the main service's policy: see the module doc (max_failures and the call-rate limits out of
#: reach: the bench measures the store under load, not the limiter; lockout is the lockout op's)
POLICY_ARGS = {"allow_embeddings": True, "scrypt_n": SCRYPT_N, "max_failures": 10**9,
               "failure_window_s": FAILURE_WINDOW_S, "identify_per_minute": 10**9,
               "verify_per_minute": 10**9, "subject_verify_per_minute": 10**9}
#: the strict service of the lockout op
LOCKOUT_POLICY_ARGS = {**POLICY_ARGS, "max_failures": LOCKOUT_FAILURES}


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def centre_of(seed: int) -> np.ndarray:
    """The subject's embedding: a random unit 512-d vector from its seed."""
    return unit(np.random.default_rng(seed).normal(size=512))


def probe_of(centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A noisy copy of ``centre`` (cosine about 0.96)."""
    return unit(centre + PROBE_NOISE * unit(rng.normal(size=centre.shape[0])))


def round_token(seed: int, r: int) -> str:
    """The token the race subject gets in round ``r`` (0: its enrollment); known to every worker."""
    return hashlib.sha256(f"iomface-bench-race-{seed}-{r}".encode()).hexdigest()[:32]


def open_backend_store(backend: str, location: str):
    """A store on ``location``: a SQLite path, or a ``postgresql://`` URL."""
    from iom.store.factory import open_store

    return open_store(location if backend == "postgres" else os.fspath(location))


def make_service(store, max_failures: int | None = None):
    """A TemplateService on ``store`` with the bench's policy (``max_failures``: the strict one)."""
    from arcface.pretrained import MODELS_DIR
    from iom.hashing.hasher import DeepIoMHasher
    from iom.service.pipeline import Pipeline
    from iom.service.policy import ServicePolicy
    from iom.service.service import TemplateService

    hasher = _hasher_cache.get(HASHER)
    if hasher is None:
        hasher = _hasher_cache[HASHER] = DeepIoMHasher.load(os.path.join(MODELS_DIR, HASHER))
    args = POLICY_ARGS if max_failures is None else {**POLICY_ARGS, "max_failures": max_failures}
    return TemplateService(Pipeline(_NoEmbedder(), hasher), store, SECRET,
                           calibration=os.path.join(MODELS_DIR, HASHER, "calibration.json"),
                           policy=ServicePolicy(**args), admin_secret=ADMIN_SECRET)


_hasher_cache: dict = {}


class _NoEmbedder:
    """The pipeline's stage-1 slot: never used (the bench passes embeddings)."""

    input_size = 112

    def embed_arrays(self, images):
        raise AssertionError("no photos expected")


@contextlib.contextmanager
def backend_location(backend: str, folder: str):
    """A fresh, migrated store for the back end; yields its location (path or URL)."""
    if backend == "sqlite":
        path = os.path.join(folder, "templates.db")
        open_backend_store("sqlite", path).close()
        yield path
        return
    with postgres_url(prefix="iombench") as url:
        open_backend_store("postgres", url).close()
        yield url
