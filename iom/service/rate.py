"""Sliding-window call counting: at most N calls per key in any window of W seconds.

One :class:`CallWindows` holds the recent call times of many keys (a client, a subject, an
operation) in memory; :meth:`CallWindows.admit` records a call or says how long to wait.
Keys idle for longer than the window are forgotten once more than ``max_keys`` are tracked,
so a caller inventing a new name each call cannot grow it without bound.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Hashable


class CallWindows:
    """Per-key sliding windows of call times (thread-safe)."""

    def __init__(self, window_s: float = 60.0, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, got {window_s!r}")
        self.window_s, self.max_keys, self._clock = float(window_s), int(max_keys), clock
        self._calls: dict[Hashable, deque] = {}
        self._lock = threading.Lock()

    def admit(self, key: Hashable, limit: int) -> float | None:
        """Record a call of ``key`` if fewer than ``limit`` were made in the last window and
        return ``None``; otherwise record nothing and return the seconds until one more call
        would be admitted."""
        now = self._clock()
        with self._lock:
            if len(self._calls) > self.max_keys:
                self._calls = {k: v for k, v in self._calls.items() if v and now - v[-1] <= self.window_s}
            calls = self._calls.setdefault(key, deque())
            while calls and now - calls[0] > self.window_s:
                calls.popleft()
            if len(calls) >= limit:
                return max(0.0, self.window_s - (now - calls[0]))
            calls.append(now)
            return None

    def __len__(self) -> int:
        return len(self._calls)


class WorkBudget:
    """Per-key sliding windows of *work* (seconds spent on a key's behalf), thread-safe: a key
    that spent ``budget`` seconds in the last window waits until enough of it leaves the window.
    Bounds the share of a shared resource (the face detectors) that one key can hold however it
    paces its requests."""

    def __init__(self, window_s: float = 60.0, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, got {window_s!r}")
        self.window_s, self.max_keys, self._clock = float(window_s), int(max_keys), clock
        self._work: dict[Hashable, deque] = {}
        self._lock = threading.Lock()

    def _trimmed(self, key: Hashable, now: float) -> deque:
        if len(self._work) > self.max_keys:
            self._work = {k: v for k, v in self._work.items() if v and now - v[-1][0] <= self.window_s}
        work = self._work.setdefault(key, deque())
        while work and now - work[0][0] > self.window_s:
            work.popleft()
        return work

    def wait(self, key: Hashable, budget: float) -> float | None:
        """``None`` if ``key`` spent less than ``budget`` seconds in the last window, else the
        seconds until it will have (nothing recorded)."""
        now = self._clock()
        with self._lock:
            work = self._trimmed(key, now)
            spent = sum(s for _, s in work)
            if spent < budget:
                return None
            for end, seconds in work:              # the oldest work leaves the window first
                spent -= seconds
                if spent < budget:
                    return max(0.0, self.window_s - (now - end))
            return self.window_s

    def charge(self, key: Hashable, seconds: float) -> None:
        """Record ``seconds`` of work done for ``key`` now."""
        now = self._clock()
        with self._lock:
            self._trimmed(key, now).append((now, float(seconds)))
