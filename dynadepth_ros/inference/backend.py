"""What every inference backend provides, and the error they raise.

A backend runs the exported network (design §3) on a batch: `run(image float32 [N,3,H,W] RGB in [0,1])
-> depth float32 [N,1,H,W]` in the model's units (metres for a metric model), with H, W the model's
fixed input size and N between 1 and `max_batch`.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class BackendError(RuntimeError):
    """A backend cannot be created or cannot run; the message says why and what to do."""


@runtime_checkable
class Backend(Protocol):
    name: str          # e.g. 'onnxruntime[CPUExecutionProvider]' or 'tensorrt[fp16]'
    precision: str     # effective precision: 'fp32', 'fp16' or 'int8' (an INT8 QDQ model)
    max_batch: int     # largest N run() accepts in one call

    def run(self, batch: np.ndarray) -> np.ndarray:
        """depth float32 [N,1,H,W] for image float32 [N,3,H,W]."""

    def close(self) -> None:
        """Release sessions, engines and device memory."""
