"""Keep /diagnostics alive while a lifecycle transition blocks the executor (a TensorRT engine build in
on_configure takes minutes on a Jetson).

A lifecycle transition must not report SUCCESS before the node can work, so on_configure stays synchronous
and returns only once the backend is ready. While it runs, the executor that called it is blocked (with
autostart the transition even runs before the executor spins), so no timer fires and the node's periodic
/diagnostics would go silent for the whole build: a monitor could not tell a building node from a hung one.
ConfigureProgress runs a plain thread of its own next to the transition that calls `publish` every `period_s`
(rclpy publishers may be used from any thread) and tells what the transition is doing and for how long:
`describe()` -> 'building TensorRT engine, 43 s'. The steps are named by the code doing them through
`stage(text)`, which the inference backends call when a long step starts (`progress` arguments of
DepthEstimator, select_backend, TensorRTBackend and ensure_engine).
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class ConfigureProgress:
    """Context manager: while inside, `publish()` is called every `period_s` seconds from a background thread
    (once right at the start too); `stage(text)` names the current step, `describe()` reports it with its
    elapsed time. `publish` must not raise; if it does, the error is passed to `on_error` and reporting
    carries on (the transition itself is never disturbed)."""

    def __init__(self, period_s: float, publish: Callable[[], None], first_stage: str = 'loading the model',
                 on_error: Callable[[BaseException], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.period_s = max(0.01, float(period_s))
        self._publish = publish
        self._on_error = on_error
        self._clock = clock
        self._lock = threading.Lock()
        self._stage = first_stage
        self._stage_t0 = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def stage(self, text: str) -> None:
        """The transition starts the step `text` now (its elapsed time restarts from 0)."""
        with self._lock:
            self._stage, self._stage_t0 = str(text), self._clock()

    def describe(self) -> str:
        """The current step and how long it has been running, e.g. 'building TensorRT engine, 43 s'."""
        with self._lock:
            stage, t0 = self._stage, self._stage_t0
        return f'{stage}, {self._clock() - t0:.0f} s'

    def elapsed_s(self) -> float:
        """Seconds since the current step started."""
        with self._lock:
            return self._clock() - self._stage_t0

    def _run(self) -> None:
        while True:
            try:
                self._publish()
            except Exception as exc:              # reporting must never kill the thread or the transition
                if self._on_error is not None:
                    self._on_error(exc)
            if self._stop.wait(self.period_s):
                return

    def __enter__(self) -> 'ConfigureProgress':
        self._thread = threading.Thread(target=self._run, name='dynadepth-configure-progress', daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.period_s))
            self._thread = None
