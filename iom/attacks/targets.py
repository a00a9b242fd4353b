"""The services under attack, behind one interface the attacks call.

:class:`Target` is what an attacker talks to (enroll, verify, identify as any client; revoke
and reissue as the operator does) plus what a stronger attacker may hold: the database file
(:attr:`Target.db_path`, see :mod:`iom.attacks.db`) and, for the full-disclosure scenarios,
the application secret (:meth:`Target.verification_key`, :meth:`Target.identification_codes`:
the scheme is public, so a holder of the secret re-derives keys as the service does).

* ``before``: :class:`~iom.attacks.legacy.LegacyTarget` (the legacy scheme, re-created);
* ``after``: :class:`ServiceTarget`, the real :class:`iom.service.service.TemplateService`
  with the strongest realistic caller — ``ServicePolicy(allow_embeddings=True)`` (embeddings can
  be injected), scores not exposed (the default).

Typed refusals of the service become :class:`Refused` (identify, enroll) or a rejected
:class:`Outcome` with ``refused`` set (verify). :class:`Target`, :class:`Outcome`, :class:`Hit`,
:class:`Refused` and :func:`refusal_kind` live in :mod:`iom.attacks.base` (shared with
:mod:`iom.attacks.legacy`) and are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from iom.attacks.base import Hit, Outcome, Refused, Target, refusal_kind

__all__ = ["Hit", "Outcome", "Refused", "ServiceTarget", "Target", "make_target", "refusal_kind"]


class ServiceTarget(Target):
    """The real template service (the issue's fix), embeddings allowed, scores not exposed."""

    label = "after"
    ADMIN = "operator-credential-0123456789"

    def __init__(self, hasher, calibration: dict, secret: bytes, db_path, policy=None, witness: bool = False):
        """``witness``: keep the head of the event log in ``<db>.witness`` (off-database storage
        in a deployment; beside it here)."""
        from iom.service.policy import ServicePolicy

        super().__init__(hasher, calibration, secret, db_path)
        self.policy = ServicePolicy(allow_embeddings=True) if policy is None else policy
        self.witness = Path(f"{self.db_path}.witness") if witness else None
        self.service = None
        self.restart()

    def _restart(self) -> None:
        from iom.service.service import TemplateService
        from iom.store.sqlite import SQLiteStore

        if self.service is not None:
            self.service.store.close()
        store = SQLiteStore(self.db_path)
        try:
            self.service = TemplateService(self.pipeline, store, self.secret, calibration=self.calibration,
                                           policy=self.policy, admin_secret=self.ADMIN, witness=self.witness)
        except Exception:
            store.close()
            raise

    def close(self) -> None:
        self.service.store.close()

    def _enroll(self, subject, embeddings, token):
        self.service.enroll(subject, embeddings=embeddings, user_token=token)

    def _verify(self, subject, embedding, token, client):
        d = self.service.verify(subject, user_token=token, embedding=embedding, client=client)
        return Outcome(bool(d.accepted), d.similarity)

    def _identify(self, embedding, top_k, client):
        return [Hit(c.subject_id, bool(c.accepted), c.similarity)
                for c in self.service.identify(embedding=embedding, top_k=top_k, client=client)]

    def _revoke(self, subject):
        self.service.revoke(subject, admin_secret=self.ADMIN)

    def _reissue(self, subject, embeddings, new_token):
        self.service.reissue(subject, new_token=new_token, embeddings=embeddings, admin_secret=self.ADMIN)

    def verification_key(self, row, token):
        from iom.service.template_keys import binding_context, scrypt_cost, verification_key

        token = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        context = binding_context(row["subject_id"], "verify", row["key_version"], row["model_id"])
        return verification_key(token, self.secret, row["salt"], context, scrypt_cost(row["key_version"]))

    def identification_key(self):
        from iom.service.template_keys import gallery_key

        return gallery_key(self.secret)

    def identification_codes(self, rows, codes):
        from iom.hashing.keying import CodeKeying
        from iom.service.template_keys import binding_context, identification_key

        return np.stack([CodeKeying(identification_key(self.secret, r["salt"], binding_context(
            r["subject_id"], "identify", r["key_version"], r["model_id"])), self.m, self.q).invert(c[None])[0]
            for r, c in zip(rows, codes)])


def make_target(kind: str, hasher, calibration: dict, secret: bytes, db_path, **kwargs) -> Target:
    """A fresh target: ``before`` (the legacy scheme) or ``after`` (the current service)."""
    if kind == "before":
        from iom.attacks.legacy import LegacyTarget

        return LegacyTarget(hasher, calibration, secret, db_path)
    if kind == "after":
        return ServiceTarget(hasher, calibration, secret, db_path, **kwargs)
    raise ValueError(f"unknown target {kind!r} (before, after)")
