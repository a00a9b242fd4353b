"""The template service: enroll, verify, identify, revoke and reissue protected templates.

Keys (:mod:`iom.service.template_keys`): a *verification* template is under a key derived
from the user's token (stretched by scrypt), the application secret and a fresh 16-byte
salt; an *identification* template is the code in the secret gallery space, relabelled by
its own per-template key (the secret and a fresh salt), so every stored template is
under a different key, renewed on reissue. Both keys bind the subject id, purpose, key
version and model. The store keeps only salts, key versions, model ids and packed codes,
each row authenticated by an HMAC under a key from the secret, with an HMAC-chained event
log that makes a revocation rollback evident (:mod:`iom.store.base`).

What a caller learns (:class:`~iom.service.policy.ServicePolicy`): by default decisions and
ranks, never similarities; photos, never raw embeddings; a verification of an unknown or
revoked subject is a rejection like any other (same type, same work); failed
verifications of a subject are limited per time window and logged in the store; revoke
and reissue need the current token with a matching face, or the administrator credential,
and refuse to overwrite a change made meanwhile (:class:`~iom.errors.ConflictError`).

Several enrollment samples are fused at feature level (the normalised mean embedding)
before hashing. The 1:1 threshold comes from the hasher's calibration file (a target FAR);
identification accepts at the 1:N threshold of the gallery's size (a target FPIR).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from iom.hashing.keying import CodeKeying
from iom.service.calibration import identification_threshold, load_calibration, select_operating_point
from iom.errors import (ClusterError, InvalidInputError, PolicyError, RateLimitedError, TemplateError,
                                UnknownSubjectError)
from iom.search.galleries import GallerySpec
from iom.search.packing import count_mismatches, from_bytes, pack_codes, to_bytes, unpack_codes
from iom.service.policy import ServicePolicy, check_token_strength
from iom.service.rate import CallWindows
from iom.store.base import TemplateRecord, check_subject_id
from iom.service.template_keys import (admin_verifier, binding_context, device_key, gallery_key,
                                       identification_key, key_version_for, row_key, scrypt_cost,
                                       verification_key)

SALT_BYTES = 16
MAX_TOKEN_BYTES = 1024
ADMIN_SETTING = "admin_verifier"
MAX_TRACKED_CLIENTS = 10_000      # past this, keys idle for a minute are forgotten
audit_log = logging.getLogger("iomface.audit")
audit_log.addHandler(logging.NullHandler())


def _device_row(device: str) -> str:
    """The attempt log's subject column for a device's identifications with codes."""
    from iom.store.base import DEVICE_ATTEMPTS

    return f"{DEVICE_ATTEMPTS}{device}"


class _Sample:
    """What a request brings to be hashed: a fused embedding, or a device's un-keyed code
    (which a key relabels as the hasher would: key_mode 'code')."""

    def __init__(self, hasher, embedding: np.ndarray | None = None, code: np.ndarray | None = None):
        self.hasher, self.embedding, self.code = hasher, embedding, code

    def encode(self, key) -> np.ndarray:
        """The sample's code (1, m) under ``key`` (``None``: un-keyed)."""
        if self.code is None:
            return self.hasher.encode(self.embedding, key)
        return self.code if key is None else self.hasher.keying(key).apply(self.code)


@dataclass(frozen=True)
class Decision:
    """A verification result; ``similarity`` and ``threshold`` only when the policy exposes scores."""

    accepted: bool
    similarity: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Candidate:
    """An identification candidate (best first, ``rank`` from 1); ``similarity`` only when
    the policy exposes scores."""

    subject_id: str
    rank: int
    accepted: bool
    similarity: float | None = None


def _token_bytes(token, what: str = "user_token") -> bytes:
    if isinstance(token, str):
        token = token.encode("utf-8")
    if not isinstance(token, (bytes, bytearray)) or not token:
        raise InvalidInputError(f"{what} must be a non-empty string or bytes")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidInputError(f"{what} is longer than {MAX_TOKEN_BYTES} bytes")
    return bytes(token)


class TemplateService:
    """Protected-template operations over a :class:`~iom.store.base.TemplateStore`.

    ``app_secret`` derives every key and authenticates the store (it is never stored);
    ``far`` / ``threshold`` (optional) choose the 1:1 operating point: a target FAR the
    calibration holds, or an explicit similarity (default: the calibration's own,
    :attr:`operating_point` says which, with its expected TAR and FAR);
    ``admin_secret`` (optional) configures the administrator credential that may revoke and
    reissue without the user's proof — from the deployment's configuration, never from a
    request; without it the credential set with :meth:`set_admin_credential` (kept in the
    store as an authenticated HMAC verifier) is used; ``witness`` (optional) a file off the database's storage that
    records the head of the event log, so a rollback of the whole database is detected by
    processes started after it too; ``gallery_spec`` (optional) where the identification gallery
    lives: in this process (the default) or sharded over a Ray cluster
    (:class:`~iom.search.galleries.GallerySpec`; enrolments and revocations reach the shard of
    each template id).
    """

    def __init__(self, pipeline, store, app_secret, calibration=None, identification: bool = True,
                 policy: ServicePolicy | None = None, admin_secret=None, witness=None,
                 far: float | None = None, threshold: float | None = None,
                 gallery_spec: GallerySpec | None = None):
        self.pipeline, self.store = pipeline, store
        self.secret = _token_bytes(app_secret, "app_secret")
        self.policy = ServicePolicy() if policy is None else policy
        if not isinstance(self.policy, ServicePolicy):
            raise InvalidInputError(f"policy must be a ServicePolicy, got {type(self.policy).__name__}")
        hasher = pipeline.hasher
        self.m, self.q = hasher.m, hasher.q
        if calibration is None:
            from arcface.pretrained import MODELS_DIR
            calibration = os.path.join(MODELS_DIR, pipeline.model_id, "calibration.json")
        calibration = load_calibration(calibration, self.m, self.q)
        self.operating_point = select_operating_point(calibration, far, threshold)
        self.threshold = self.operating_point.threshold
        # the 1:N threshold is never below the 1:1 threshold in use
        self.calibration = {**calibration, "threshold": self.threshold}
        self.identification = identification
        self.gallery_spec = GallerySpec() if gallery_spec is None else gallery_spec
        if not isinstance(self.gallery_spec, GallerySpec):
            raise InvalidInputError(f"gallery_spec must be a GallerySpec, got {type(self.gallery_spec).__name__}")
        self.key_version = key_version_for(self.policy.scrypt_n)
        self._gallery_key = gallery_key(self.secret)
        store.authenticate(row_key(self.secret), witness)
        self._admin = store.get_setting(ADMIN_SETTING) if admin_secret is None else \
            admin_verifier(self.secret, _token_bytes(admin_secret, "admin_secret"))
        self._gallery = None                    # (log head, gallery, {template id: subject})
        self._gallery_lock = threading.Lock()
        self._calls = CallWindows(60.0, MAX_TRACKED_CLIENTS)  # call times per (operation, client or subject)
        self._refusals = CallWindows(60.0, MAX_TRACKED_CLIENTS)  # refusals written to the store

    # ------------------------------------------------------------------ keys and codes
    def _context(self, subject_id: str, purpose: str, key_version: int) -> bytes:
        return binding_context(subject_id, purpose, key_version, self.pipeline.model_id)

    def _verification_key(self, token: bytes, salt: bytes, subject_id: str, key_version: int):
        try:
            cost = scrypt_cost(key_version)
        except ValueError as e:
            raise TemplateError(f"template of {subject_id!r}: {e}") from None
        return verification_key(token, self.secret, salt, self._context(subject_id, "verify", key_version), cost)

    def _identification_keying(self, subject_id: str, salt: bytes, key_version: int) -> CodeKeying:
        key = identification_key(self.secret, salt, self._context(subject_id, "identify", key_version))
        return CodeKeying(key, self.m, self.q)

    def _gallery_code(self, sample: "_Sample") -> np.ndarray:
        """Codes in the secret gallery space, where identification compares."""
        return sample.encode(self._gallery_key)

    def _records(self, subject_id: str, sample: "_Sample", token: bytes, n: int) -> list[TemplateRecord]:
        kv = self.key_version
        common = dict(subject_id=subject_id, key_version=kv, model_id=self.pipeline.model_id,
                      m=self.m, q=self.q, n_photos=n)
        salt = os.urandom(SALT_BYTES)
        code = sample.encode(self._verification_key(token, salt, subject_id, kv))
        records = [TemplateRecord(purpose="verify", salt=salt, code=self._pack(code), **common)]
        if self.identification:
            salt = os.urandom(SALT_BYTES)
            relabelled = self._identification_keying(subject_id, salt, kv).apply(self._gallery_code(sample))
            records.append(TemplateRecord(purpose="identify", salt=salt, code=self._pack(relabelled), **common))
        return records

    def _pack(self, code: np.ndarray) -> bytes:
        return to_bytes(pack_codes(code, self.q)[0])

    def _stored(self, record: TemplateRecord) -> np.ndarray:
        """The record's packed code; :class:`TemplateError` if it is unreadable."""
        try:
            return from_bytes(record.code, self.m, self.q)
        except ValueError as e:
            raise TemplateError(f"stored template {record.template_id} is unreadable: {e}") from None

    def _sample(self, photos, embeddings, code=None, device: str | None = None) -> tuple["_Sample", int]:
        """The sample of a request (photos fused, embeddings, or one device code) and how many
        photos or embeddings went in."""
        if code is not None:
            if photos is not None or embeddings is not None:
                raise InvalidInputError("give photos, embeddings or a code, not several")
            return _Sample(self.pipeline.hasher, code=self._device_code(code, device)), 1
        if embeddings is not None and not self.policy.allow_embeddings:
            raise PolicyError("this service takes photos, not raw embeddings "
                              "(ServicePolicy(allow_embeddings=True) enables them for trusted callers)")
        embedding, n = self.pipeline.fused_embedding(photos, embeddings)
        return _Sample(self.pipeline.hasher, embedding=embedding), n

    def _device_code(self, code, device: str | None) -> np.ndarray:
        """The un-keyed code of a device's code: m symbols in [0, q), the exported model's output
        relabelled on the device by its key (:func:`~iom.service.template_keys.device_key` of the
        device's name), checked and un-relabelled here. A code is never taken as un-keyed: that
        code is the same in every deployment of the model, a universal template."""
        if not self.policy.allow_codes:
            raise PolicyError("this service takes photos, not device codes (ServicePolicy(allow_codes=True), "
                              "iomface serve --device_codes, enables them for devices running the exported model)")
        if self.pipeline.hasher.key_mode != "code":
            raise InvalidInputError("device codes need a hasher keyed on its code (key_mode 'code')")
        if not isinstance(device, str) or not device:
            raise InvalidInputError("a device code needs the name of the device that sent it (the name its key "
                                    "was provisioned for: iomface device-key NAME)")
        try:
            values = np.asarray(code)
        except (TypeError, ValueError):
            values = np.asarray([])
        if values.dtype.kind not in "iu" or values.size != self.m or values.ndim > 2 or \
                (values.ndim == 2 and values.shape[0] != 1):
            raise InvalidInputError(f"a code is {self.m} integers in [0, {self.q}) (the exported model's "
                                    f"'code' output for one face), got {values.dtype} of shape {values.shape}")
        if values.min() < 0 or values.max() >= self.q:
            raise InvalidInputError(f"code symbols must lie in [0, {self.q})")
        keyed = values.reshape(1, self.m).astype(np.int64)
        return self._device_keying(device).invert(keyed).astype(np.int64)

    def _device_keying(self, device: str) -> CodeKeying:
        return CodeKeying(device_key(self.secret, device), self.m, self.q)

    # ------------------------------------------------------------------ operations
    def enroll(self, subject_id: str, photos=None, embeddings=None, user_token=None, code=None,
               device: str | None = None) -> list[int]:
        """Enroll a subject from photos (or, if the policy allows, embeddings, several fused, or
        one code of the named ``device``, :meth:`_device_code`); returns the template ids."""
        subject_id = check_subject_id(subject_id)
        token = self._new_token(user_token, "user_token")
        sample, n = self._sample(photos, embeddings, code, device)
        ids = self.store.enroll(self._records(subject_id, sample, token, n))
        audit_log.info("enroll subject=%r templates=%s", subject_id, ids)
        return ids

    def verify(self, subject_id: str, probe=None, user_token=None, embedding=None, client: str = "",
               admitted: bool = False, code=None) -> Decision:
        """Whether the probe (a photo; an embedding if the policy allows) matches the subject's
        template under the key of ``user_token``. An unknown or revoked subject, a wrong
        token and a different face are all one answer: not accepted. After
        ``policy.max_failures`` rejections of a subject within ``policy.failure_window_s``,
        :class:`RateLimitedError` until the window has passed. The limits are checked before
        any work (:meth:`admit`; ``admitted=True``: the caller already did, before its own work
        such as decoding and aligning the photo), and the failure limit once more, atomically,
        before the comparison, which reserves one of the subject's ``max_failures`` slots
        (:meth:`_reserve_failure`): concurrent calls never get more answers than that."""
        subject_id = check_subject_id(subject_id)
        token = _token_bytes(user_token)
        if not admitted:
            self.admit("verify", client, subject_id)
        sample, _ = self._sample(None if probe is None else [probe], embedding, code, device=client)
        attempt = self._reserve_failure(subject_id, client)
        try:
            similarity = self._similarity(subject_id, sample, token)
        except BaseException:
            self._cancel_reservation(subject_id, attempt)
            raise
        accepted = similarity >= self.threshold
        self._resolve_reservation(subject_id, client, attempt, accepted)
        if self.policy.expose_scores:
            return Decision(accepted, similarity, self.threshold)
        return Decision(accepted)

    def _similarity(self, subject_id: str, sample: "_Sample", token: bytes) -> float:
        """The sample's similarity to the subject's verification template under the token's
        key; 0.0 for an unknown or revoked subject, after the same work."""
        try:
            record = self.store.active(subject_id).get("verify")
        except UnknownSubjectError:
            record = None
        if record is None:       # the same work as a real comparison, then a rejection
            sample.encode(self._verification_key(token, os.urandom(SALT_BYTES), subject_id, self.key_version))
            return 0.0
        self._check_model(record)
        keyed = sample.encode(self._verification_key(token, record.salt, subject_id, record.key_version))
        mismatches = int(count_mismatches(self._stored(record), pack_codes(keyed, self.q)[0]))
        return float(1.0 - mismatches / self.m)

    def identify(self, probe=None, top_k: int = 5, embedding=None, client: str = "",
                 admitted: bool = False, code=None, device: str | None = None) -> list[Candidate]:
        """Enrolled subjects matching the probe, best first (at most ``top_k``).

        By default only candidates accepted at the 1:N threshold for the gallery's size
        (target FPIR ``policy.fpir``), without similarities; with ``expose_scores`` the
        ``top_k`` closest with their similarity and decision. A device ``code`` (of ``device``,
        default ``client``) is a freely chosen probe: such identifications are limited per
        device and, after ``policy.max_code_misses`` that match no one within
        ``policy.code_miss_window_s``, refused (:meth:`admit`, ``"identify-code"``)."""
        if not self.identification:
            raise TemplateError("this service keeps no identification templates")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidInputError(f"top_k must be a positive integer, got {top_k!r}")
        device = client if device is None else device
        if not admitted:
            self.admit("identify", client)
        if code is not None:
            self.admit("identify-code", device)
        sample, _ = self._sample(None if probe is None else [probe], embedding, code, device)
        probe_code = self._gallery_code(sample)[0]
        # the search holds the gallery lock: no update (another thread's identify applying the
        # event log) moves rows or drops subjects while it reads them
        with self._gallery_lock:
            gallery, subjects = self._updated_gallery()
            if not len(gallery):
                return []
            threshold = self.identification_threshold(len(gallery))
            try:
                hits = gallery.search(probe_code, top_k)
            except ClusterError:
                self._gallery = None                # a lost shard: the next call rebuilds from the store
                raise
            out = [Candidate(subjects[tid], rank, bool(sim >= threshold),
                             float(sim) if self.policy.expose_scores else None)
                   for rank, (tid, sim) in enumerate(hits, 1)]
        if code is not None and not any(c.accepted for c in out):
            self.store.record_attempt(_device_row(device), device, "identify-code", "no-match")
            audit_log.warning("identify with a device code matched no one device=%r", device)
        return out if self.policy.expose_scores else [c for c in out if c.accepted]

    def identification_point(self) -> dict:
        """The 1:N operating point of an identification now: the gallery's size, the FPIR
        target, the threshold and the TAR the calibration set expects at it (``None`` for an
        empty gallery or a calibration without genuine histogram)."""
        from iom.service.calibration import rates_at

        gallery, _ = self._current_gallery()
        n = len(gallery)
        threshold = self.identification_threshold(n) if n else None
        tar = rates_at(self.calibration, threshold)[0] if threshold is not None else None
        return {"gallery_size": n, "fpir_target": self.policy.fpir, "threshold": threshold,
                "expected_tar": tar, "calibration_set": str(self.calibration.get("dataset", ""))}

    def identification_threshold(self, gallery_size: int) -> float:
        """The similarity a candidate needs in a gallery of ``gallery_size`` (FPIR policy);
        :class:`TemplateError` when the calibration cannot bound that FPIR at that size
        (identification then refuses rather than accept at an uncertified threshold)."""
        try:
            return identification_threshold(self.calibration, gallery_size, self.policy.fpir)
        except InvalidInputError as e:
            raise TemplateError(f"identification at policy fpir={self.policy.fpir:g}: {e}") from None

    def revoke(self, subject_id: str, *, user_token=None, proof_photo=None, proof_embedding=None,
               admin_secret=None, expected_version: int | None = None, client: str = "") -> int:
        """Revoke every active template of the subject; needs the current token with a
        matching face, or the administrator credential. :class:`ConflictError` if the
        subject changed since ``expected_version`` (or since the proof was checked)."""
        subject_id = check_subject_id(subject_id)
        version = self._authorise(subject_id, user_token, proof_photo, proof_embedding, admin_secret, client)
        n = self.store.revoke(subject_id, expected_version=version if expected_version is None
                              else expected_version)
        audit_log.info("revoke subject=%r templates=%d by=%s", subject_id, n,
                       "admin" if admin_secret is not None else "user")
        return n

    def reissue(self, subject_id: str, photos=None, new_token=None, embeddings=None, *, user_token=None,
                proof_photo=None, proof_embedding=None, admin_secret=None,
                expected_version: int | None = None, client: str = "", code=None,
                device: str | None = None) -> list[int]:
        """Revoke the subject's templates and enroll new ones under ``new_token`` (from photos,
        embeddings or a device code, as :meth:`enroll`), atomically; the same proof as
        :meth:`revoke`."""
        subject_id = check_subject_id(subject_id)
        token = self._new_token(new_token, "new_token")
        sample, n = self._sample(photos, embeddings, code, device)
        version = self._authorise(subject_id, user_token, proof_photo, proof_embedding, admin_secret, client)
        ids = self.store.reissue(subject_id, self._records(subject_id, sample, token, n),
                                 expected_version=version if expected_version is None else expected_version)
        audit_log.info("reissue subject=%r templates=%s by=%s", subject_id, ids,
                       "admin" if admin_secret is not None else "user")
        return ids

    def set_admin_credential(self, new_secret, current_secret=None) -> None:
        """Set the administrator credential kept in the store (its HMAC verifier under the
        application secret). Replacing one needs the current credential."""
        new = self._new_token(new_secret, "admin credential")
        if self._admin is not None:
            if current_secret is None or not hmac.compare_digest(
                    admin_verifier(self.secret, _token_bytes(current_secret, "current admin credential")),
                    self._admin):
                self.store.record_attempt("", "", "admin", "refused")
                raise PolicyError("replacing the administrator credential needs the current one")
        verifier = admin_verifier(self.secret, new)
        self.store.put_setting(ADMIN_SETTING, verifier)
        self._admin = verifier
        audit_log.info("administrator credential set")

    def list(self, include_revoked: bool = False) -> list[str]:
        return self.store.subjects(include_revoked)

    def get(self, subject_id: str) -> list[dict]:
        """Metadata of the subject's templates (no codes, no salts), each with the subject's
        current ``version`` (what ``expected_version`` refers to)."""
        return self.describe(self.store, subject_id)

    @staticmethod
    def describe(store, subject_id: str) -> list[dict]:
        """Metadata of a subject's templates in ``store`` (no codes, no salts)."""
        history = store.history(subject_id)
        version = store.version(subject_id)
        return [{"template_id": r.template_id, "purpose": r.purpose, "model_id": r.model_id,
                 "key_version": r.key_version, "m": r.m, "q": r.q, "n_photos": r.n_photos,
                 "created_at": r.created_at, "revoked_at": r.revoked_at, "version": version}
                for r in history]

    @staticmethod
    def subject_rows(store, include_revoked: bool = False) -> list:
        """The subjects of ``store``: their ids (active ones), or with ``include_revoked`` one row
        per subject with its status, enrolment and revocation dates, template count and version."""
        if not include_revoked:
            return store.subjects(False)
        rows = []
        for subject in store.subjects(True):
            history = TemplateService.describe(store, subject)
            active = [t for t in history if t["revoked_at"] is None]
            revoked = [t["revoked_at"] for t in history if t["revoked_at"] is not None]
            rows.append({"subject": subject, "status": "active" if active else "revoked",
                         "enrolled_at": min(t["created_at"] for t in (active or history)),
                         "revoked_at": None if active else max(revoked), "templates": len(active),
                         "version": history[0]["version"] if history else 0})
        return rows

    def refresh(self) -> None:
        """Forget the identification gallery (rebuilt from the store on the next identify;
        changes of other processes are picked up anyway from the event log). A sharded
        gallery's shards stop once no search uses them any more."""
        with self._gallery_lock:
            self._gallery = None

    # ------------------------------------------------------------------ policy
    def _new_token(self, token, what: str) -> bytes:
        token = _token_bytes(token, what)
        check_token_strength(token, self.policy.min_token_bits, what)
        return token

    def _check_failures(self, subject_id: str, client: str) -> None:
        """The early check of :meth:`admit`, before any work: :class:`RateLimitedError` if the
        subject's failed (and in-flight) verifications reached ``policy.max_failures``. The
        binding check is the reservation :meth:`verify` makes (:meth:`_reserve_failure`)."""
        failures = self.store.count_attempts(subject_id, "verify", self.policy.failure_window_s)
        if failures >= self.policy.max_failures:
            raise self._failure_limit_reached(subject_id, client)

    def _failure_limit_reached(self, subject_id: str, client: str) -> RateLimitedError:
        """Record and log a refusal for too many failures; the error to raise."""
        self._record_refusal(subject_id, client, "rate-limited", "refused")
        audit_log.warning("verify refused (rate limit) subject=%r client=%r", subject_id, client)
        return RateLimitedError(f"too many failed verifications of {subject_id!r}: try again later",
                                retry_after=self.policy.failure_window_s)

    def _reserve_failure(self, subject_id: str, client: str) -> int:
        """Reserve one of the subject's ``policy.max_failures`` verifications in the window,
        atomically (counted with the failures and other reservations in one store
        transaction); its attempt id. :class:`RateLimitedError` when none is left. Until
        resolved the reservation counts as a failure (a crash leaves it so: fail closed)."""
        attempt = self.store.reserve_attempt(subject_id, client, "verify", self.policy.failure_window_s,
                                             self.policy.max_failures)
        if attempt is None:
            raise self._failure_limit_reached(subject_id, client)
        return attempt

    def _resolve_reservation(self, subject_id: str, client: str, attempt: int, accepted: bool) -> None:
        """A rejection keeps the reservation as a failure (and is logged); an acceptance frees it."""
        self.store.finish_attempt(subject_id, attempt, "accepted" if accepted else "rejected")
        if not accepted:
            audit_log.warning("verify rejected subject=%r client=%r", subject_id, client)

    def _cancel_reservation(self, subject_id: str, attempt: int) -> None:
        """Free the reservation of a verification that failed with an error before any decision
        (as before reservations, an error is not a failed attempt); if even that fails the
        reservation stays pending, counted as a failure."""
        try:
            self.store.finish_attempt(subject_id, attempt, "cancelled")
        except TemplateError:
            pass

    def admit(self, op: str, client: str = "", subject_id: str | None = None) -> None:
        """Count one call of ``op`` by ``client`` against the policy's limits, before any work:
        ``"verify"`` (per client, per subject whoever calls, and the subject's failed
        verifications), ``"identify"`` (per client), ``"identify-code"`` (an identification with
        a device code, ``client`` the device: per device, and its identifications that matched no
        one), ``"compare"`` (two photos, no template: the client's verification budget).
        :class:`RateLimitedError` past a limit."""
        if op == "verify":
            subject_id = check_subject_id(subject_id)
            self._check_call_rate(client, "verify", self.policy.verify_per_minute)
            self._check_call_rate(client, "verify", self.policy.subject_verify_per_minute, subject_id)
            self._check_failures(subject_id, client)
        elif op == "identify":
            self._check_call_rate(client, "identify", self.policy.identify_per_minute)
        elif op == "identify-code":
            self._check_call_rate(client, "identify-code", self.policy.code_identify_per_minute)
            self._check_code_misses(client)
        elif op == "compare":
            self._check_call_rate(client, "verify", self.policy.verify_per_minute)
        else:
            raise InvalidInputError(f"op must be verify, identify, identify-code or compare, got {op!r}")

    def _check_code_misses(self, device: str) -> None:
        """:class:`RateLimitedError` once the device's identifications with codes that matched no
        one reached ``policy.max_code_misses`` in ``policy.code_miss_window_s`` (kept in the
        store's authenticated attempt log, like failed verifications): a boundary walk with
        chosen codes misses at almost every other query."""
        misses = self.store.count_attempts(_device_row(device), "identify-code", self.policy.code_miss_window_s)
        if misses >= self.policy.max_code_misses:
            self._record_refusal(_device_row(device), device, "rate-limited", "refused")
            audit_log.warning("identify with codes refused (misses) device=%r", device)
            raise RateLimitedError(f"device {device!r}: {misses} identifications with codes matched no one in "
                                   f"the last {self.policy.code_miss_window_s:g} s: try again later",
                                   retry_after=self.policy.code_miss_window_s)

    def _record_refusal(self, subject_id: str, client: str, op: str, outcome: str) -> None:
        """A refusal in the store's attempt log, at most once a minute per (subject, client, op):
        a flood of refused calls must not become a flood of writes."""
        if self._refusals.admit((subject_id, str(client), op), 1) is None:
            self.store.record_attempt(subject_id, client, op, outcome)

    def _check_call_rate(self, client: str, op: str, per_minute: int, subject_id: str = "") -> None:
        """At most ``per_minute`` calls of ``op`` per client (or, with ``subject_id``, about
        that subject whoever calls) in any 60 s (this service object)."""
        key = (op, "subject", subject_id) if subject_id else (op, "client", str(client))
        wait = self._calls.admit(key, per_minute)
        if wait is None:
            return
        self._record_refusal(subject_id, client, op, "rate-limited")
        audit_log.warning("%s refused (rate limit) subject=%r client=%r", op, subject_id, client)
        who = f"{per_minute} {op} calls about {subject_id!r} were made" if subject_id else \
            f"client {client!r} made {per_minute} {op} calls"
        raise RateLimitedError(f"{who} in the last minute: try again later", retry_after=wait)

    def _authorise(self, subject_id: str, user_token, proof_photo, proof_embedding, admin_secret,
                   client: str) -> int:
        """The subject's version once the caller proved the right to change it."""
        if admin_secret is not None:
            given = admin_verifier(self.secret, _token_bytes(admin_secret, "admin_secret"))
            if self._admin is None or not hmac.compare_digest(given, self._admin):
                self.store.record_attempt(subject_id, client, "admin", "refused")
                audit_log.warning("administrator credential refused subject=%r client=%r", subject_id, client)
                raise PolicyError("administrator credential refused")
            return self.store.version(subject_id)
        if user_token is None or (proof_photo is None and proof_embedding is None):
            raise PolicyError("revoke and reissue need the current token with a matching face "
                              "(user_token and proof_photo), or the administrator credential")
        version = self.store.version(subject_id)
        if not self.verify(subject_id, proof_photo, user_token, proof_embedding, client).accepted:
            raise PolicyError(f"proof refused: the token and face do not match {subject_id!r}")
        return version

    # ------------------------------------------------------------------ internals
    def _made_here(self, record: TemplateRecord) -> bool:
        """Whether the record was made by this service's model at its code size."""
        return record.model_id == self.pipeline.model_id and (record.m, record.q) == (self.m, self.q)

    def _check_model(self, record: TemplateRecord) -> None:
        if not self._made_here(record):
            raise TemplateError(f"template of {record.subject_id!r} was made by model {record.model_id!r} "
                                f"(m={record.m}, q={record.q}); this service runs {self.pipeline.model_id!r}")

    def _gallery_entries(self, records: list[TemplateRecord]) -> tuple[np.ndarray, np.ndarray, dict]:
        """Ids, gallery-space codes and subjects of identification records of this model."""
        keep = [r for r in records if r.purpose == "identify" and r.active and self._made_here(r)]
        if not keep:
            return np.zeros(0, np.int64), np.zeros((0, self.m), np.uint8), {}
        codes = np.concatenate([
            self._identification_keying(r.subject_id, r.salt, r.key_version).invert(
                unpack_codes(self._stored(r)[None], self.m, self.q))
            for r in keep])
        return (np.asarray([r.template_id for r in keep], np.int64), codes,
                {r.template_id: r.subject_id for r in keep})

    def _current_gallery(self):
        """The gallery (in this process, or its shards on a cluster: :attr:`gallery_spec`),
        brought up to date with the event log (other processes' changes included)."""
        with self._gallery_lock:
            return self._updated_gallery()

    def _updated_gallery(self):
        """:meth:`_current_gallery` for a caller that holds ``_gallery_lock``."""
        if self._gallery is None:
            head, records = self.store.identify_gallery(self.pipeline.model_id)
            ids, codes, subjects = self._gallery_entries(records)
            gallery = self.gallery_spec.make(self.m, self.q, capacity=len(ids))
            if len(ids):
                gallery.add(ids, codes)
            self._gallery = (head, gallery, subjects)
        elif (head := self.store.head()) != self._gallery[0]:
            seen, gallery, subjects = self._gallery
            events = self.store.events_since(seen)
            gone = {i for e in events for i in e.revoked_ids if i in subjects}
            new = [i for e in events for i in e.new_ids]
            ids, codes, added = self._gallery_entries(self.store.templates(new) if new else [])
            try:                                # each id reaches its shard (sharded gallery)
                if gone:
                    gallery.remove(np.asarray(sorted(gone), np.int64))
                if len(ids):
                    gallery.add(ids, codes)
            except ClusterError:
                self._gallery = None            # half applied: rebuilt from the store next time
                raise
            for i in gone:
                subjects.pop(i)
            subjects.update(added)
            self._gallery = (events[-1].seq if events else head, gallery, subjects)
        return self._gallery[1], self._gallery[2]
