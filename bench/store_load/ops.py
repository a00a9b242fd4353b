"""The ops a worker of ``bench/concurrency.py`` draws (the table of that bench's docstring).

Each op method works on the worker's own subjects (:class:`bench.store_load.worker.Worker`
holds them), journals what was acknowledged, and returns ``(outcome counted, seconds)``, or
None when the op is not counted (it found an unexpected error, already reported by ``fail``).
``self.subject`` names the op's subject as soon as it is chosen, so that an exception the op
raises is charged to it."""

from __future__ import annotations

import time
from typing import Optional

from iom.errors import DuplicateEnrollmentError, PolicyError, RateLimitedError, RevokedTemplateError

from bench.store_load.setup import (ADMIN_SHARE, LOCKOUT_FAILURES, RACE_SEED, RACE_SUBJECT, REFUSAL_WINDOW_S,
                                    centre_of, probe_of)

#: what an op returns: (the outcome counted, seconds), or None (not counted)
Outcome = Optional[tuple[str, float]]


class Ops:
    """The op methods (mixed into the worker)."""

    def do(self, op: str) -> Outcome:
        if op in ("verify", "verify_wrong_token"):
            return self.op_verify(op)
        if op in ("revoke", "reissue"):
            return self.op_revoke_or_reissue(op)
        if op in ("enroll_duplicate", "revoke_revoked", "reissue_revoked"):
            return self.op_typed_error(op)
        return getattr(self, f"op_{op}")(op)

    def op_enroll(self, op: str) -> Outcome:
        """A new subject (1 in 5: re-enrol a revoked one of its own) under a fresh token."""
        pick = self.pick
        if self.revoked and pick.random() < 0.2:
            subject = self.subject = pick.choice(list(self.revoked))
            sseed = self.revoked[subject]["seed"]
        else:
            self.n_subjects += 1
            subject, sseed = f"w{self.k}-{self.n_subjects}", self.seed * 1_000_003 + self.n_subjects
            self.subject = subject
        token = self.new_token()
        t0 = time.perf_counter()
        ids = self.service.enroll(subject, embeddings=centre_of(sseed), user_token=token)
        dt = time.perf_counter() - t0
        self.revoked.pop(subject, None)
        self.active[subject] = {"seed": sseed, "token": token}
        self.log({"op": op, "subject": subject, "ids": ids, "seed": sseed, "token": token})
        if len(ids) != 2:
            self.fail(op, subject, f"returned {len(ids)} ids, not 2")
            return None
        return op, dt

    def op_enroll_race(self, op: str) -> Outcome:
        """``race-<j>``: the same ids in every worker, so all compete for each of them."""
        self.n_race += 1
        subject, sseed, token = f"race-{self.n_race}", 7_000_000 + self.n_race, self.new_token()
        self.subject = subject
        t0 = time.perf_counter()
        try:
            ids = self.service.enroll(subject, embeddings=centre_of(sseed), user_token=token)
        except DuplicateEnrollmentError:
            dt = time.perf_counter() - t0
            self.required["DuplicateEnrollmentError"] += 1
            return "enroll_race_lost", dt
        dt = time.perf_counter() - t0
        self.log({"op": op, "subject": subject, "ids": ids, "seed": sseed, "token": token})
        return op, dt

    def op_verify(self, op: str) -> Outcome:
        """An own active subject, a noisy probe, the right token (verify) or another one."""
        subject = self.subject = self.pick.choice(list(self.active))
        info = self.active[subject]
        probe = probe_of(centre_of(info["seed"]), self.rng)
        token = info["token"] if op == "verify" else self.new_token()
        t0 = time.perf_counter()
        d = self.service.verify(subject, user_token=token, embedding=probe, client=self.client)
        dt = time.perf_counter() - t0
        entry = {"op": op, "subject": subject, "accepted": d.accepted}
        if op == "verify_wrong_token":
            entry["attempt"] = "verify"
            self.failures[subject] += 1
        self.log(entry)                         # (a rejected genuine probe: fail() marks the count unsure)
        if not self.check_decision(d, op, subject, op == "verify"):
            return None
        return op, dt

    def op_identify(self, op: str) -> Outcome:
        """A noisy probe of an own active subject (1 in 4: of the shared race subject)."""
        from iom.service.service import Candidate

        if self.pick.random() < 0.25 and RACE_SUBJECT not in self.unsure_failures:
            subject, sseed = RACE_SUBJECT, RACE_SEED
        else:
            subject = self.pick.choice(list(self.active))
            sseed = self.active[subject]["seed"]
        self.subject = subject
        probe = probe_of(centre_of(sseed), self.rng)
        t0 = time.perf_counter()
        hits = self.service.identify(embedding=probe, top_k=5, client=self.client)
        dt = time.perf_counter() - t0
        found = [c.subject_id for c in hits]
        self.log({"op": op, "subject": subject, "top": found})
        if not all(isinstance(c, Candidate) and c.accepted and c.similarity is None for c in hits):
            self.fail(op, subject, f"candidates not accepted or with scores: {hits!r:.200}")
            return None
        if found.count(subject) != 1:
            self.fail(op, subject, f"found {found.count(subject)} times among the accepted {found}")
            return None
        stale = sorted(set(found) & set(self.revoked))
        if stale:
            self.fail(op, subject, f"revoked subjects {stale} among the candidates")
            return None
        self.counts["identify_top1"] += found[0] == subject
        return op, dt

    def op_revoke_or_reissue(self, op: str) -> Outcome:
        """An own active subject, with the user's proof or (1 in ADMIN_SHARE) the admin secret;
        half of them with the ``expected_version`` read just before."""
        subject = self.subject = self.pick.choice(list(self.active))
        info = self.active[subject]
        by_admin = self.pick.randrange(ADMIN_SHARE) == 0
        version = self.service.get(subject)[0]["version"] if self.pick.random() < 0.5 else None
        kwargs = dict(expected_version=version, client=self.client, **self.proof(info, by_admin))
        entry = {"op": op, "subject": subject, "by": "admin" if by_admin else "user",
                 "expected_version": version}
        t0 = time.perf_counter()
        if op == "revoke":
            n = self.service.revoke(subject, **kwargs)
            dt = time.perf_counter() - t0
            self.revoked[subject] = self.active.pop(subject)
            self.log({**entry, "n": n})
            if n != 2:
                self.fail(op, subject, f"revoked {n} templates, not 2")
                return None
        else:
            token = self.new_token()
            ids = self.service.reissue(subject, new_token=token, embeddings=centre_of(info["seed"]), **kwargs)
            dt = time.perf_counter() - t0
            info["token"] = token
            self.log({**entry, "ids": ids, "seed": info["seed"], "token": token})
            if len(ids) != 2:
                self.fail(op, subject, f"returned {len(ids)} ids, not 2")
                return None
        return op, dt

    def op_verify_revoked(self, op: str) -> Outcome:
        """An own revoked subject, its last token and face: rejected."""
        subject = self.subject = self.pick.choice(list(self.revoked))
        info = self.revoked[subject]
        t0 = time.perf_counter()
        d = self.service.verify(subject, user_token=info["token"], embedding=centre_of(info["seed"]),
                                client=self.client)
        dt = time.perf_counter() - t0
        self.failures[subject] += 1
        self.log({"op": op, "subject": subject, "accepted": d.accepted, "attempt": "verify"})
        if not self.check_decision(d, op, subject, False):
            return None
        return op, dt

    def op_verify_unknown(self, op: str) -> Outcome:
        """A subject never enrolled: rejected (not an error)."""
        subject = self.subject = f"w{self.k}-never-{self.pick.getrandbits(40):x}"
        t0 = time.perf_counter()
        d = self.service.verify(subject, user_token=self.new_token(), embedding=centre_of(0), client=self.client)
        dt = time.perf_counter() - t0
        self.log({"op": op, "subject": subject, "accepted": d.accepted, "attempt": "verify"})
        if not self.check_decision(d, op, subject, False):
            return None
        return op, dt

    def op_lockout(self, op: str) -> Outcome:
        """Through the strict service: a wrong token while the subject has fewer than
        LOCKOUT_FAILURES failures (rejected), else the right one (RateLimitedError)."""
        # half the time the own subject with the most failures (driven into lockout and kept
        # there), else a random one (mostly the rejection path)
        candidates = [s for s in self.active if s not in self.unsure_failures]
        if not candidates:
            return None
        subject = max(candidates, key=lambda s: self.failures[s]) if self.pick.random() < 0.5 \
            else self.pick.choice(candidates)
        self.subject = subject
        info = self.active[subject]
        locked = self.failures[subject] >= LOCKOUT_FAILURES
        token = info["token"] if locked else self.new_token()
        n_written = len(self.refusals_written)
        start = time.monotonic()
        t0 = time.perf_counter()
        try:
            d = self.strict.verify(subject, user_token=token, embedding=probe_of(centre_of(info["seed"]), self.rng),
                                   client=self.client)
        except RateLimitedError:
            dt = time.perf_counter() - t0
            return self.lockout_refused(op, subject, locked, (start, time.monotonic()), dt,
                                        self.refusals_written[n_written:])
        dt = time.perf_counter() - t0
        self.log({"op": op, "subject": subject, "locked": False, "accepted": d.accepted,
                  "attempt": None if d.accepted else "verify"})
        self.failures[subject] += not d.accepted
        if locked:
            self.fail(op, subject, f"no RateLimitedError after {self.failures[subject]} failures "
                                   f"(accepted={d.accepted})")
            return None
        if not self.check_decision(d, op, subject, False):
            return None
        return "lockout_rejected", dt

    def lockout_refused(self, op: str, subject: str, locked: bool, span: tuple[float, float], dt: float,
                        written: list[tuple]) -> Outcome:
        """The strict service refused (RateLimitedError) during ``span`` (monotonic start, end);
        ``written``: the refusals the store acknowledged meanwhile. The service logs a refusal at
        most once per REFUSAL_WINDOW_S per (subject, client, op): the journal records the one
        written, if any, and the rule is checked (either answer allowed only where the two calls'
        spans straddle the window's edge)."""
        want = (subject, self.client, "rate-limited", "refused")
        last = self.refusal_logged.get(subject)
        must = last is None or span[0] - last[1] > REFUSAL_WINDOW_S
        may = last is None or span[1] - last[0] > REFUSAL_WINDOW_S
        logged = written == [want]
        self.log({"op": op, "subject": subject, "locked": True, "attempt": "rate-limited" if logged else None,
                  "refusal_logged": logged})
        if written not in ([], [want]):
            self.fail(op, subject, f"refusal logged as {written}, not {[want]}")
            return None
        if logged:
            self.refusal_logged[subject] = span
        if not locked:
            self.fail(op, subject, f"RateLimitedError after {self.failures[subject]} failures")
            return None
        if (must and not logged) or (logged and not may):
            self.fail(op, subject, f"refusal {'logged' if logged else 'not logged'} "
                                   f"{'within' if logged else 'after'} {REFUSAL_WINDOW_S:g} s of the last")
            return None
        self.required["RateLimitedError"] += 1
        return "lockout_locked", dt

    def op_typed_error(self, op: str) -> Outcome:
        """The ops that must raise: enroll_duplicate (DuplicateEnrollmentError), revoke_revoked
        and reissue_revoked (PolicyError with the user's proof, RevokedTemplateError as admin)."""
        service, by_admin = self.service, False
        if op == "enroll_duplicate":
            subject = self.subject = self.pick.choice(list(self.active))
            want = "DuplicateEnrollmentError"
            call = lambda: service.enroll(subject, embeddings=centre_of(self.active[subject]["seed"]),  # noqa: E731
                                          user_token=self.new_token())
        else:                                # revoke_revoked, reissue_revoked
            subject = self.subject = self.pick.choice(list(self.revoked))
            info = self.revoked[subject]
            by_admin = self.pick.random() < 0.5
            want = "RevokedTemplateError" if by_admin else "PolicyError"
            kwargs = dict(client=self.client, **self.proof(info, by_admin, exact=True))
            call = {"revoke_revoked": lambda: service.revoke(subject, **kwargs),
                    "reissue_revoked": lambda: service.reissue(
                        subject, new_token=self.new_token(), embeddings=centre_of(info["seed"]), **kwargs)}[op]
        t0 = time.perf_counter()
        try:
            call()
        except (RevokedTemplateError, DuplicateEnrollmentError, PolicyError) as e:
            dt = time.perf_counter() - t0
            if type(e).__name__ != want:
                self.fail(op, subject, f"expected {want}", e)
                return None
            self.required[want] += 1
            entry = {"op": op, "subject": subject, "error": want}
            if want == "PolicyError":        # the refused proof is a rejected verification
                entry["attempt"] = "verify"
                self.failures[subject] += 1
            self.log(entry)
            return op, dt
        self.log({"op": op, "subject": subject, "unexpected_success": True})
        self.fail(op, subject, f"returned instead of raising {want}")
        return None
