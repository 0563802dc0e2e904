"""Rolling rates and latency percentiles over a time window (plain Python, thread-safe).

Used by the node's /diagnostics: input/output rate (Hz) and stamp→publish / inference latency p50/p95/p99 (ms)
over the last `window_s` seconds.
"""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class RollingWindow:
    """(time, value) samples of the last `window_s` seconds, at most `max_samples`."""

    def __init__(self, window_s: float = 5.0, max_samples: int = 20000):
        if window_s <= 0:
            raise ValueError(f'window must be > 0 s, got {window_s}')
        self.window_s = float(window_s)
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()
        self.total = 0

    def add(self, value: float = 0.0, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._samples.append((now, float(value)))
            self.total += 1

    def _recent(self, now: float | None) -> list[tuple[float, float]]:
        now = time.monotonic() if now is None else now
        cutoff = now - self.window_s
        with self._lock:
            while self._samples and self._samples[0][0] < cutoff:
                self._samples.popleft()
            return list(self._samples)

    def count(self, now: float | None = None) -> int:
        return len(self._recent(now))

    def rate(self, now: float | None = None) -> float:
        """Events per second over the window (0 when fewer than two events)."""
        s = self._recent(now)
        if len(s) < 2:
            return 0.0
        span = s[-1][0] - s[0][0]
        return (len(s) - 1) / span if span > 0 else 0.0

    def percentiles(self, qs=(50, 95, 99), now: float | None = None) -> dict[int, float] | None:
        """{q: value} of the samples in the window, None when empty."""
        s = self._recent(now)
        if not s:
            return None
        vals = np.percentile(np.fromiter((v for _, v in s), np.float64, len(s)), qs)
        return {int(q): float(v) for q, v in zip(qs, vals)}
