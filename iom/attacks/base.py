"""What every attacked service is: :class:`Target`, the interface the attacks call, and what its
calls give back (:class:`Outcome`, :class:`Hit`, :class:`Refused`).

Shared by both targets: :mod:`iom.attacks.targets` (``after``, and :func:`~iom.attacks.targets.make_target`,
which re-exports these) and :mod:`iom.attacks.legacy` (``before``).
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iom.keys import TemplateKey


@dataclass(frozen=True)
class Outcome:
    """A verification answer: ``similarity`` only where the target exposes it; ``refused``
    names why nothing was compared (``policy``, ``rate-limited``, ``store``, ``unknown``)."""

    accepted: bool
    similarity: float | None = None
    refused: str | None = None


@dataclass(frozen=True)
class Hit:
    """An identification candidate."""

    subject: str
    accepted: bool
    similarity: float | None = None


class Refused(Exception):
    """The service refused the call with a typed error (``kind`` as in :class:`Outcome`)."""

    def __init__(self, kind: str, message: str = ""):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def refusal_kind(error: Exception) -> str | None:
    """The refusal a typed service error stands for (``None``: not a refusal)."""
    from iom import errors

    for name, kind in (("PolicyError", "policy"), ("RateLimitedError", "rate-limited"),
                       ("StoreError", "store"), ("UnknownSubjectError", "unknown"),
                       ("ConflictError", "conflict")):
        cls = getattr(errors, name, None)
        if cls is not None and isinstance(error, cls):
            return kind
    return None


class Target(abc.ABC):
    """One template service on a fresh SQLite file, as attacked."""

    label = ""

    def __init__(self, hasher, calibration: dict, secret: bytes, db_path: str | os.PathLike):
        from iom.service.pipeline import Pipeline

        self.hasher, self.calibration, self.secret = hasher, calibration, bytes(secret)
        self.threshold = float(calibration["threshold"])
        self.db_path = Path(db_path)
        self.pipeline = Pipeline(None, hasher)
        self.model_id = self.pipeline.model_id
        self.m, self.q = hasher.m, hasher.q

    # ------------------------------------------------------------------ as a client
    @abc.abstractmethod
    def _enroll(self, subject: str, embeddings: np.ndarray, token: str) -> None: ...

    @abc.abstractmethod
    def _verify(self, subject: str, embedding: np.ndarray, token: str, client: str) -> Outcome: ...

    @abc.abstractmethod
    def _identify(self, embedding: np.ndarray, top_k: int, client: str) -> list[Hit]: ...

    def enroll(self, subject: str, embeddings: np.ndarray, token: str) -> None:
        self._call(self._enroll, subject, embeddings, token)

    def verify(self, subject: str, embedding: np.ndarray, token: str, client: str = "") -> Outcome:
        try:
            return self._call(self._verify, subject, embedding, token, client)
        except Refused as r:
            return Outcome(False, None, r.kind)

    def identify(self, embedding: np.ndarray, top_k: int, client: str = "") -> list[Hit]:
        return self._call(self._identify, embedding, top_k, client)

    # ------------------------------------------------------------------ as the operator
    @abc.abstractmethod
    def _revoke(self, subject: str) -> None: ...

    @abc.abstractmethod
    def _reissue(self, subject: str, embeddings: np.ndarray, new_token: str) -> None: ...

    def revoke(self, subject: str) -> None:
        self._call(self._revoke, subject)

    def reissue(self, subject: str, embeddings: np.ndarray, new_token: str) -> None:
        self._call(self._reissue, subject, embeddings, new_token)

    @abc.abstractmethod
    def _restart(self) -> None: ...

    def restart(self) -> None:
        """Replace the service object by a fresh one on the same database (a new process)."""
        self._call(self._restart)

    @abc.abstractmethod
    def close(self) -> None: ...

    @staticmethod
    def _call(fn, *args):
        try:
            return fn(*args)
        except Exception as e:          # typed service errors only; anything else propagates
            kind = refusal_kind(e)
            if kind is None:
                raise
            raise Refused(kind, str(e)) from e

    # ------------------------------------------------------------------ holding the secret
    @abc.abstractmethod
    def verification_key(self, row: dict, token: str) -> TemplateKey:
        """The key of a verification row given its token (needs the secret)."""

    @abc.abstractmethod
    def identification_key(self) -> TemplateKey:
        """The key of the space identification compares in (needs the secret)."""

    def identification_codes(self, rows: list[dict], codes: np.ndarray) -> np.ndarray:
        """The codes of identification rows in that space, ``hasher.encode(x, key)`` (needs
        the secret); by default as stored."""
        return codes
