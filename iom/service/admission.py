"""The template service's limits, counted before any work: calls per client and per subject
in any minute, a subject's failed verifications (reserved atomically in the store's attempt
log, :meth:`AdmissionMixin._reserve_failure`) and a device's identifications with codes that
matched no one. A mixin of :class:`~iom.service.service.TemplateService`, whose ``store``,
``policy``, ``_calls`` and ``_refusals`` it uses."""

from __future__ import annotations

import logging

from iom.errors import InvalidInputError, RateLimitedError, TemplateError
from iom.store.base import check_subject_id

audit_log = logging.getLogger("iomface.audit")     # the service's audit log (iom.service.service.audit_log)


def _device_row(device: str) -> str:
    """The attempt log's subject column for a device's identifications with codes."""
    from iom.store.base import DEVICE_ATTEMPTS

    return f"{DEVICE_ATTEMPTS}{device}"


class AdmissionMixin:
    """Rate limits and the failure lock of :class:`~iom.service.service.TemplateService`."""

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
