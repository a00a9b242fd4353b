"""Request counters and latency histograms in the Prometheus text format (``GET /metrics``).

Labels are the route template and the status code, never a subject or a credential, so the
number of series is bounded by the API, not by its users.
"""

from __future__ import annotations

import threading
from collections import defaultdict

#: latency histogram bucket bounds, seconds
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(**labels) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


class Metrics:
    """Thread-safe counters: requests by (route, status), latency by route, rate limits."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.seconds: dict[str, float] = defaultdict(float)
        self.rate_limited: dict[str, int] = defaultdict(int)

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            counts = self.buckets[route]
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self.seconds[route] += seconds
            if status == 429:
                self.rate_limited[route] += 1

    def render(self, gauges: dict[str, float] | None = None) -> str:
        """The Prometheus text exposition of every counter (and ``gauges``)."""
        lines = ["# HELP iomface_requests_total HTTP requests by route template and status.",
                 "# TYPE iomface_requests_total counter"]
        with self._lock:
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f"iomface_requests_total{_labels(route=route, status=status)} {n}")
            lines += ["# HELP iomface_request_seconds Request latency by route template.",
                      "# TYPE iomface_request_seconds histogram"]
            for route, counts in sorted(self.buckets.items()):
                for bound, n in zip(BUCKETS, counts):
                    lines.append(f"iomface_request_seconds_bucket{_labels(route=route, le=bound)} {n}")
                lines.append(f"iomface_request_seconds_bucket{_labels(route=route, le='+Inf')} {counts[-1]}")
                lines.append(f"iomface_request_seconds_sum{_labels(route=route)} {self.seconds[route]:.6f}")
                lines.append(f"iomface_request_seconds_count{_labels(route=route)} {counts[-1]}")
            lines += ["# HELP iomface_rate_limited_total Requests refused with 429 by route template.",
                      "# TYPE iomface_rate_limited_total counter"]
            for route, n in sorted(self.rate_limited.items()):
                lines.append(f"iomface_rate_limited_total{_labels(route=route)} {n}")
        for name, value in (gauges or {}).items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"
