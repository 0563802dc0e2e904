"""Choosing a backend, verifying it against ONNX Runtime CPU, and falling back.

Preference for `auto`: TensorRT backend > ONNX Runtime TensorRT EP > ONNX Runtime CUDA EP > ONNX Runtime CPU.
`tensorrt` asks for the TensorRT backend only; `onnxruntime` for the best ONNX Runtime provider.

A backend that is *unavailable* (TensorRT not installed, provider not in this onnxruntime build) is skipped
with a note. A backend that is available but *fails* (engine build error, corrupt or mismatched engine, CUDA
error, or output beyond tolerance) is a failure: with `fallback=True` the next choice is tried and the
reason kept in `Selection.notes`; with `fallback=False` BackendError is raised with that reason.

Verification (every non-CPU backend, before it goes live): the backend and ONNX Runtime CPU run the same
fixed probe input (`probe_input`); the candidate passes when it produces no non-finite value where the
reference is finite and its mean relative depth error |c - r| / max(|r|, min_depth) is <= the tolerance.
This catches fp16 overflow (inf/NaN, black output) and engines that silently compute something else.

INT8: a model quantized by `python -m training quantize` (dynadepth.precision=int8, Q/DQ nodes) runs in int8 on
every backend: ONNX Runtime CPU runs the QDQ graph as it is (and is the reference), TensorRT builds an
explicitly quantized engine from it (`precision:=int8`; an int8 model asked for fp32/fp16 is still built int8,
with a note). `precision:=int8` with a float model is refused by TensorRT (fallback with the reason) and noted
for ONNX Runtime, which runs the float model.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dynadepth_ros.inference.backend import Backend, BackendError
from dynadepth_ros.inference.onnxruntime_backend import (CPU_EP, CUDA_EP, TENSORRT_EP, OnnxRuntimeBackend,
                                                         available_providers)
from dynadepth_ros.model_format import ModelMetadata

BACKENDS = ('auto', 'tensorrt', 'onnxruntime')
PRECISIONS = ('fp32', 'fp16', 'int8')
DEFAULT_TOLERANCE = 0.02


@dataclass(frozen=True)
class ToleranceReport:
    """Candidate vs reference on the probe input."""

    mean_rel: float       # mean of |c - r| / max(|r|, min_depth) over pixels where the reference is finite
    p99_rel: float
    max_abs: float        # metres (model units)
    nonfinite: int        # pixels finite in the reference but not in the candidate
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.nonfinite == 0 and self.mean_rel <= self.tolerance

    def describe(self) -> str:
        return (f'mean relative error {self.mean_rel:.4f} (tolerance {self.tolerance:.4f}), p99 {self.p99_rel:.4f}, '
                f'max abs {self.max_abs:.4g}, non-finite {self.nonfinite}')


def probe_input(height: int, width: int, batch: int = 1) -> np.ndarray:
    """Deterministic image float32 [batch,3,H,W] in [0,1]: smooth gradients, stripes and seeded noise."""
    rng = np.random.default_rng(20240617)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= max(height - 1, 1)
    xx /= max(width - 1, 1)
    base = np.stack([0.25 + 0.5 * yy, 0.5 + 0.3 * np.sin(6 * np.pi * xx), 0.7 - 0.4 * yy * xx])
    imgs = base[None] + 0.08 * rng.standard_normal((batch, 3, height, width)).astype(np.float32)
    return np.clip(imgs, 0.0, 1.0).astype(np.float32)


def compare_outputs(candidate: np.ndarray, reference: np.ndarray, tolerance: float, min_depth: float) -> ToleranceReport:
    """ToleranceReport of candidate vs reference depth arrays of the same shape."""
    c = np.asarray(candidate, np.float64)
    r = np.asarray(reference, np.float64)
    if c.shape != r.shape:
        raise BackendError(f'candidate output shape {c.shape} differs from the reference {r.shape}')
    ok_ref = np.isfinite(r)
    nonfinite = int(np.count_nonzero(ok_ref & ~np.isfinite(c)))
    both = ok_ref & np.isfinite(c)
    if not np.any(both):
        return ToleranceReport(float('inf'), float('inf'), float('inf'), nonfinite, tolerance)
    diff = np.abs(c[both] - r[both])
    rel = diff / np.maximum(np.abs(r[both]), min_depth)
    return ToleranceReport(float(rel.mean()), float(np.percentile(rel, 99)), float(diff.max()), nonfinite, tolerance)


def verify_backend(candidate: Backend, reference: Backend, metadata: ModelMetadata, tolerance: float) -> ToleranceReport:
    """Run both on the probe input; BackendError (with the report) when the candidate is out of tolerance."""
    x = probe_input(metadata.input_height, metadata.input_width, batch=max(1, min(2, candidate.max_batch)))
    try:
        got = candidate.run(x)
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f'{candidate.name} failed on the verification input: {type(exc).__name__}: {exc}') from exc
    report = compare_outputs(got, reference.run(x), tolerance, metadata.min_depth)
    if not report.passed:
        raise BackendError(f'{candidate.name} disagrees with ONNX Runtime CPU on the verification input: '
                           f'{report.describe()}; refusing it (try precision:=fp32, or raise trt_tolerance if '
                           f'this difference is acceptable)')
    return report


def tensorrt_installed() -> bool:
    """True when a `tensorrt` Python package is importable in principle (its libraries may still fail)."""
    return importlib.util.find_spec('tensorrt') is not None


@dataclass
class Selection:
    backend: Backend
    notes: list[str] = field(default_factory=list)        # skipped/failed choices and precision remarks, in order
    verification: ToleranceReport | None = None           # None for ONNX Runtime CPU (the reference itself)
    failures: list[str] = field(default_factory=list)     # the notes of backends that were tried and failed

    @property
    def fallback_reason(self) -> str:
        """Why a preferred backend does not serve ('' when none failed): the first failure, e.g. 'TensorRT
        backend not used: TensorRT 10.13.0 cannot create trt.Builder: ...'."""
        return self.failures[0] if self.failures else ''


def select_backend(model_path: str | Path, metadata: ModelMetadata, backend: str = 'auto', precision: str = 'fp32',
                   fallback: bool = True, trt_tolerance: float = DEFAULT_TOLERANCE,
                   engine_cache_dir: str | Path | None = None, engine_path: str | Path | None = None,
                   max_batch: int = 4, intra_op_threads: int = 0, intra_op_spinning: bool = True,
                   log: Callable[[str], None] = print,
                   tensorrt_factory: Callable[..., Backend] | None = None,
                   providers: list[str] | None = None,
                   progress: Callable[[str], None] | None = None) -> Selection:
    """Create, verify and return the backend to use (see module docstring for the rules).

    tensorrt_factory: builds the TensorRT backend (default TensorRTBackend; tests substitute one).
    providers: onnxruntime execution providers to consider (default: what this onnxruntime build offers).
    progress: told what is being done when a step that can take long starts (creating a backend, a TensorRT
    engine build, the check against ONNX Runtime CPU); the node reports it on /diagnostics.
    """
    def stage(text: str) -> None:
        if progress is not None:
            progress(text)

    if backend not in BACKENDS:
        raise BackendError(f'backend {backend!r} is not one of {BACKENDS}')
    if precision not in PRECISIONS:
        raise BackendError(f'precision {precision!r} is not one of {PRECISIONS}')
    if not trt_tolerance > 0:
        raise BackendError(f'trt_tolerance must be > 0, got {trt_tolerance}')
    notes: list[str] = []
    failures: list[str] = []
    reference: list[OnnxRuntimeBackend] = []

    def get_reference() -> OnnxRuntimeBackend:
        if not reference:
            reference.append(OnnxRuntimeBackend(model_path, metadata, CPU_EP, 'fp32',
                                                intra_op_threads=intra_op_threads, max_batch=max_batch,
                                                intra_op_spinning=intra_op_spinning))
        return reference[0]

    def release_reference() -> None:
        if reference:
            reference.pop().close()

    def failed(what: str, exc: Exception) -> None:
        if not fallback:
            release_reference()
            raise BackendError(f'{what} failed and fallback is disabled: {exc}') from exc
        notes.append(f'{what} not used: {exc}')
        failures.append(notes[-1])
        log(f'{what} not used: {exc}; trying the next backend')

    def verified(what: str, make: Callable[[], Backend]) -> Selection | None:
        """make() a GPU candidate and check it against the ONNX Runtime CPU reference: the Selection when it
        passes, None (after `failed`) when building or verifying raises (any exception: a GPU backend that
        breaks in an unforeseen way must not take the node down when ONNX Runtime CPU can serve)."""
        stage('loading the ONNX Runtime CPU reference')
        ref = get_reference()   # validates the ONNX file first: a corrupt model fails here, clearly
        try:
            stage(f'creating the {what}')
            cand = make()
            try:
                stage(f'checking the {what} against ONNX Runtime CPU')
                report = verify_backend(cand, ref, metadata, trt_tolerance)
            except BackendError:
                cand.close()
                raise
        except BackendError as exc:
            failed(what, exc)
            return None
        except Exception as exc:
            failed(what, BackendError(f'{type(exc).__name__}: {exc}'))
            return None
        release_reference()
        return Selection(cand, notes, report, failures)

    if backend in ('auto', 'tensorrt'):
        if backend == 'auto' and tensorrt_factory is None and not tensorrt_installed():
            notes.append('TensorRT is not installed; using ONNX Runtime')
        else:
            def make_tensorrt() -> Backend:
                factory = tensorrt_factory
                if factory is None:
                    from dynadepth_ros.inference.tensorrt_backend import TensorRTBackend as factory
                extra = {} if progress is None else {'progress': progress}
                return factory(model_path, metadata, precision=precision, engine_cache_dir=engine_cache_dir,
                               engine_path=engine_path, max_batch=max_batch, log=log, **extra)
            chosen = verified('TensorRT backend', make_tensorrt)
            if chosen is not None:
                return chosen

    offered = available_providers() if providers is None else list(providers)
    for provider in (TENSORRT_EP, CUDA_EP):
        if provider not in offered:
            continue
        chosen = verified(f'ONNX Runtime {provider}', lambda provider=provider: OnnxRuntimeBackend(
            model_path, metadata, provider, precision, engine_cache_dir=engine_cache_dir,
            intra_op_threads=intra_op_threads, max_batch=max_batch, intra_op_spinning=intra_op_spinning))
        if chosen is not None:
            return chosen
    stage('loading ONNX Runtime CPU')
    cpu = get_reference()
    notes.extend(cpu_precision_notes(model_path, metadata, precision))
    return Selection(cpu, notes, None, failures)


def cpu_precision_notes(model_path: str | Path, metadata: ModelMetadata, precision: str) -> list[str]:
    """What a user who asked for `precision` should know when ONNX Runtime CPU runs the model."""
    if metadata.precision == 'int8':
        from dynadepth_ros.model_format import graph_precision
        import onnx

        notes = []
        if graph_precision(onnx.load(str(model_path), load_external_data=False))[1] == 'qdq-symmetric':
            notes.append('this INT8 model is quantized for TensorRT (symmetric int8 activations), which ONNX Runtime '
                         'CPU runs slower than the float model; for CPU use one made with `python -m training '
                         'quantize ... --target cpu`')
        if precision == 'fp16':
            notes.append('precision fp16 applies to TensorRT only; ONNX Runtime CPU runs this INT8 model in int8')
        return notes
    if precision == 'fp16':
        return ['precision fp16 applies to TensorRT only; ONNX Runtime CPU runs fp32']
    if precision == 'int8':
        return [f'precision int8 needs an INT8 model (`python -m training quantize {Path(model_path).name} --calib '
                f'DATA`); this model is fp32 and runs fp32']
    return []
