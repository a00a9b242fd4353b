"""The template service: enroll, verify, identify, revoke and reissue protected templates.

Keys: each *verification* template has a key derived by HKDF-SHA256 from the user's token,
the application secret and a fresh random 16-byte salt; the store keeps only that salt, the
key version, the model identifier and the packed code — never the token, the secret, an
embedding or a photo. *Identification* templates (optional) are all under one application
key (HKDF over the secret alone), as open-set IoM identification needs one key per gallery.
Several enrollment samples are fused at feature level (the normalised mean embedding) before
hashing. Decision thresholds come from the calibration file written by
``scripts/test_twostage_iom.py --calibration`` (a target FAR), never from a constant.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from iom.keys import TemplateKey
from iom.service.errors import InvalidInputError, TemplateError
from iom.service.packing import count_mismatches, from_bytes, pack_codes, to_bytes
from iom.service.store import TemplateRecord

KEY_VERSION = 1
SALT_BYTES = 16
MAX_TOKEN_BYTES = 1024
_IDENTIFY_SALT = b"iomface/identify"      # 16 bytes: the application key is one per secret


@dataclass(frozen=True)
class Decision:
    """A verification result."""

    similarity: float
    accepted: bool
    threshold: float


def load_calibration(source, m: int, q: int) -> dict:
    """A calibration dict (or its JSON file) for a hasher of size (m, q), checked."""
    cal = source
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source) as f:
                cal = json.load(f)
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"calibration file {source}: {e}") from None
    if not isinstance(cal, dict) or cal.get("threshold") is None:
        raise InvalidInputError("calibration needs a 'threshold' (none was reachable at its FAR?)")
    if (cal.get("m"), cal.get("q")) != (m, q):
        raise InvalidInputError(f"calibration is for m={cal.get('m')}, q={cal.get('q')}, "
                                f"the hasher is m={m}, q={q}")
    return cal


def _token_bytes(token, what: str = "user_token") -> bytes:
    if isinstance(token, str):
        token = token.encode("utf-8")
    if not isinstance(token, (bytes, bytearray)) or not token:
        raise InvalidInputError(f"{what} must be a non-empty string or bytes")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidInputError(f"{what} is longer than {MAX_TOKEN_BYTES} bytes")
    return bytes(token)


class TemplateService:
    """Protected-template operations over a :class:`~iom.service.store.TemplateStore`."""

    def __init__(self, pipeline, store, app_secret, calibration=None, identification: bool = True):
        self.pipeline, self.store = pipeline, store
        self.secret = _token_bytes(app_secret, "app_secret")
        hasher = pipeline.hasher
        self.m, self.q = hasher.m, hasher.q
        if calibration is None:
            from arcface.pretrained import MODELS_DIR
            calibration = os.path.join(MODELS_DIR, pipeline.model_id, "calibration.json")
        self.calibration = load_calibration(calibration, self.m, self.q)
        self.threshold = float(self.calibration["threshold"])
        self.identification = identification
        self._app_key = TemplateKey.derive(b"iomface-identification", self.secret, _IDENTIFY_SALT)
        self._gallery = None

    # ------------------------------------------------------------------ helpers
    def _code(self, embedding: np.ndarray, key: TemplateKey) -> np.ndarray:
        return self.pipeline.hasher.encode(embedding, key)

    def _records(self, subject_id: str, embedding: np.ndarray, token: bytes, n: int) -> list[TemplateRecord]:
        salt = os.urandom(SALT_BYTES)
        key = TemplateKey.derive(token, self.secret, salt)
        common = dict(subject_id=subject_id, key_version=KEY_VERSION, model_id=self.pipeline.model_id,
                      m=self.m, q=self.q, n_photos=n)
        records = [TemplateRecord(purpose="verify", salt=salt, code=self._pack(self._code(embedding, key)), **common)]
        if self.identification:
            records.append(TemplateRecord(purpose="identify", salt=_IDENTIFY_SALT,
                                          code=self._pack(self._code(embedding, self._app_key)), **common))
        return records

    def _pack(self, code: np.ndarray) -> bytes:
        return to_bytes(pack_codes(code, self.q)[0])

    def _sample(self, photos, embeddings):
        return self.pipeline.fused_embedding(photos, embeddings)

    # ------------------------------------------------------------------ operations
    def enroll(self, subject_id: str, photos=None, embeddings=None, user_token=None) -> list[int]:
        """Enroll a subject from photos or embeddings (fused); returns the template ids."""
        token = _token_bytes(user_token)
        embedding, n = self._sample(photos, embeddings)
        ids = self.store.enroll(self._records(subject_id, embedding, token, n))
        self._gallery = None
        return ids

    def verify(self, subject_id: str, probe=None, user_token=None, embedding=None) -> Decision:
        """Compare a probe (photo or embedding) with the subject's template under the key of
        ``user_token``; a wrong token gives an unrelated code (an impostor-like score)."""
        token = _token_bytes(user_token)
        record = self.store.active(subject_id).get("verify")
        if record is None:
            raise TemplateError(f"subject {subject_id!r} has no verification template")
        self._check_model(record)
        x, _ = self._sample(None if probe is None else [probe], embedding)
        code = self._code(x, TemplateKey.derive(token, self.secret, record.salt))
        try:
            stored = from_bytes(record.code, self.m, self.q)
        except ValueError as e:
            raise TemplateError(f"stored template of {subject_id!r} is unreadable: {e}") from None
        similarity = float(1.0 - int(count_mismatches(stored, pack_codes(code, self.q)[0])) / self.m)
        return Decision(similarity, similarity >= self.threshold, self.threshold)

    def identify(self, probe=None, top_k: int = 5, embedding=None) -> list[tuple[str, float, bool]]:
        """The ``top_k`` enrolled subjects closest to the probe: (subject, similarity, accepted)."""
        if not self.identification:
            raise TemplateError("this service keeps no identification templates")
        if not isinstance(top_k, int) or top_k < 1:
            raise InvalidInputError(f"top_k must be a positive integer, got {top_k!r}")
        x, _ = self._sample(None if probe is None else [probe], embedding)
        gallery, subjects = self._load_gallery()
        hits = gallery.search(self._code(x, self._app_key)[0], top_k)
        return [(subjects[tid], float(sim), bool(sim >= self.threshold)) for tid, sim in hits]

    def revoke(self, subject_id: str) -> int:
        """Revoke every active template of the subject; revoked templates never match."""
        n = self.store.revoke(subject_id)
        self._gallery = None
        return n

    def reissue(self, subject_id: str, photos=None, new_token=None, embeddings=None) -> list[int]:
        """Revoke the subject's templates and enroll new ones under a new token, atomically."""
        token = _token_bytes(new_token, "new_token")
        embedding, n = self._sample(photos, embeddings)
        ids = self.store.reissue(subject_id, self._records(subject_id, embedding, token, n))
        self._gallery = None
        return ids

    def list(self, include_revoked: bool = False) -> list[str]:
        return self.store.subjects(include_revoked)

    def get(self, subject_id: str) -> list[dict]:
        """Metadata of the subject's templates (no codes)."""
        return self.describe(self.store, subject_id)

    @staticmethod
    def describe(store, subject_id: str) -> list[dict]:
        """Metadata of a subject's templates in ``store`` (no codes, no salts)."""
        return [{"template_id": r.template_id, "purpose": r.purpose, "model_id": r.model_id,
                 "key_version": r.key_version, "m": r.m, "q": r.q, "n_photos": r.n_photos,
                 "created_at": r.created_at, "revoked_at": r.revoked_at}
                for r in store.history(subject_id)]

    def refresh(self) -> None:
        """Forget the cached identification gallery (see changes made by other processes)."""
        self._gallery = None

    # ------------------------------------------------------------------ internals
    def _check_model(self, record: TemplateRecord) -> None:
        if record.model_id != self.pipeline.model_id or (record.m, record.q) != (self.m, self.q):
            raise TemplateError(f"template of {record.subject_id!r} was made by model {record.model_id!r} "
                                f"(m={record.m}, q={record.q}); this service runs {self.pipeline.model_id!r}")

    def _load_gallery(self):
        if self._gallery is None:
            from iom.service.search import PackedGallery

            ids, subjects, codes = self.store.identify_gallery(self.pipeline.model_id)
            gallery = PackedGallery(self.m, self.q)
            if ids:
                gallery.add_packed(np.asarray(ids, np.int64),
                                   np.stack([from_bytes(c, self.m, self.q) for c in codes]))
            self._gallery = (gallery, dict(zip(ids, subjects)))
        return self._gallery
