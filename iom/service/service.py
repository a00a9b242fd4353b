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

The limits checked before any work are :mod:`iom.service.admission`'s, the identification
gallery is kept by :mod:`iom.service.identification` (both mixins of :class:`TemplateService`),
and the result types are :mod:`iom.service.results`'.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading

import numpy as np

from iom.hashing.keying import CodeKeying
from iom.service.calibration import load_calibration, select_operating_point
from iom.errors import ClusterError, InvalidInputError, PolicyError, TemplateError, UnknownSubjectError
from iom.search.galleries import GallerySpec
from iom.search.packing import count_mismatches, from_bytes, pack_codes, to_bytes
from iom.service.admission import AdmissionMixin, _device_row
from iom.service.identification import IdentificationMixin
from iom.service.policy import ServicePolicy, check_token_strength
from iom.service.rate import CallWindows
from iom.service.results import Candidate, Decision, _Sample
from iom.store.records import TemplateRecord, check_subject_id
from iom.service.template_keys import (admin_verifier, binding_context, device_key, gallery_key,
                                       identification_key, key_version_for, row_key, scrypt_cost,
                                       verification_key)

SALT_BYTES = 16
MAX_TOKEN_BYTES = 1024
ADMIN_SETTING = "admin_verifier"
MAX_TRACKED_CLIENTS = 10_000      # past this, keys idle for a minute are forgotten
audit_log = logging.getLogger("iomface.audit")
audit_log.addHandler(logging.NullHandler())


def _token_bytes(token, what: str = "user_token") -> bytes:
    if isinstance(token, str):
        token = token.encode("utf-8")
    if not isinstance(token, (bytes, bytearray)) or not token:
        raise InvalidInputError(f"{what} must be a non-empty string or bytes")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidInputError(f"{what} is longer than {MAX_TOKEN_BYTES} bytes")
    return bytes(token)


class TemplateService(AdmissionMixin, IdentificationMixin):
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

    # ------------------------------------------------------------------ policy
    def _new_token(self, token, what: str) -> bytes:
        token = _token_bytes(token, what)
        check_token_strength(token, self.policy.min_token_bits, what)
        return token

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
