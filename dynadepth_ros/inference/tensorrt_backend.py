"""TensorRT backend (TensorRT 10 Python API + cuda-python): engine cache, build from ONNX, execution.

NOT RUN ON A GPU. The project's machines have no GPU and TensorRT cannot be installed there, so the code in
`TensorRTRuntime` (the only part that imports `tensorrt` / `cuda`) has never executed. It is written against
the documented TensorRT 10 API: trt.Builder, create_network(0) (explicit batch is the only mode in 10.x),
trt.OnnxParser.parse_from_file, create_builder_config, set_memory_pool_limit(MemoryPoolType.WORKSPACE),
BuilderFlag.FP16, create_optimization_profile/set_shape for the dynamic batch, build_serialized_network,
trt.Runtime.deserialize_cuda_engine, engine.num_io_tensors/get_tensor_name/get_tensor_mode,
IExecutionContext.set_input_shape/set_tensor_address/execute_async_v3, and cuda-python's runtime API
(cudaMalloc, cudaMemcpyAsync, cudaStreamCreate/Synchronize, cudaGetDeviceProperties) as the TensorRT 10
samples use it. Everything around it is plain Python and is tested here with a substitute runtime: the cache
key and file name (TensorRT version, GPU compute capability, precision, input shape, ONNX hash), the sidecar
that detects corrupt or mismatched engines, rebuild-on-mismatch, and (in backend_selection) the fallback
decisions and the tolerance check against ONNX Runtime.

Cache layout: <cache_dir>/<model stem>-<onnx sha256[:16]>-trt<version>-sm<major><minor>-<precision>-b<max
batch>x3x<H>x<W>.engine plus a `.json` sidecar recording the same key and the engine's sha256.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dynadepth_ros.atomic_files import file_sha256, write_bytes_atomic, write_json_atomic
from dynadepth_ros.inference.backend import BackendError
from dynadepth_ros.model_format import INPUT_NAME, OUTPUT_NAME, ModelMetadata

SIDECAR_FORMAT = 1
DEFAULT_WORKSPACE_BYTES = 1 << 30


class EngineError(BackendError):
    """An engine file that cannot be used (corrupt, or built for another TensorRT / GPU / model / precision)."""


class TensorRTUnavailable(BackendError):
    """TensorRT or CUDA cannot run in this process (not installed, no GPU, too old)."""


def default_engine_cache_dir() -> Path:
    """$DYNADEPTH_ENGINE_CACHE, else $XDG_CACHE_HOME/dynadepth_ros/engines, else ~/.cache/dynadepth_ros/engines."""
    if os.environ.get('DYNADEPTH_ENGINE_CACHE'):
        return Path(os.environ['DYNADEPTH_ENGINE_CACHE'])
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'dynadepth_ros' / 'engines'


@dataclass(frozen=True)
class EngineKey:
    """Everything that invalidates a serialized engine."""

    onnx_sha256: str
    tensorrt_version: str
    compute_capability: tuple[int, int]
    precision: str                  # 'fp32' | 'fp16'
    input_hw: tuple[int, int]       # model input H, W
    max_batch: int                  # optimisation profile: batch 1..max_batch

    def file_name(self, model_stem: str) -> str:
        h, w = self.input_hw
        major, minor = self.compute_capability
        return (f'{model_stem}-{self.onnx_sha256[:16]}-trt{self.tensorrt_version}-sm{major}{minor}-'
                f'{self.precision}-b{self.max_batch}x3x{h}x{w}.engine')

    def to_json(self) -> dict:
        d = asdict(self)
        d['compute_capability'] = list(self.compute_capability)
        d['input_hw'] = list(self.input_hw)
        return d

    @classmethod
    def from_json(cls, d: dict) -> 'EngineKey':
        return cls(onnx_sha256=str(d['onnx_sha256']), tensorrt_version=str(d['tensorrt_version']),
                   compute_capability=tuple(int(v) for v in d['compute_capability']),
                   precision=str(d['precision']), input_hw=tuple(int(v) for v in d['input_hw']),
                   max_batch=int(d['max_batch']))

    def describe(self) -> str:
        major, minor = self.compute_capability
        return (f'TensorRT {self.tensorrt_version}, GPU sm{major}{minor}, {self.precision}, '
                f'batch<={self.max_batch}x3x{self.input_hw[0]}x{self.input_hw[1]}, ONNX {self.onnx_sha256[:16]}')


def sidecar_path(engine_path: str | Path) -> Path:
    return Path(str(engine_path) + '.json')


def write_engine(path: str | Path, blob: bytes, key: EngineKey) -> None:
    """Write the engine and its sidecar atomically (engine first, so a sidecar never describes a partial file)."""
    path = Path(path)
    write_bytes_atomic(path, bytes(blob))
    meta = {'format': SIDECAR_FORMAT, 'key': key.to_json(), 'engine_sha256': hashlib.sha256(blob).hexdigest(),
            'engine_bytes': len(blob), 'built_at': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
    write_json_atomic(sidecar_path(path), meta)


def read_engine(path: str | Path, expected: EngineKey | None) -> bytes:
    """The engine bytes after checking the sidecar: integrity (sha256) and, given `expected`, the key.

    Raises EngineError naming the problem. An engine without sidecar (e.g. from trtexec) is returned
    unchecked; TensorRT itself then refuses it if it does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise EngineError(f'engine file {path} does not exist')
    blob = path.read_bytes()
    if not blob:
        raise EngineError(f'engine file {path} is empty; delete it so it is rebuilt')
    side = sidecar_path(path)
    if not side.is_file():
        return blob
    try:
        meta = json.loads(side.read_text())
        key = EngineKey.from_json(meta['key'])
        want_sha = meta['engine_sha256']
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f'engine sidecar {side} is unreadable ({exc}); delete {path} and {side} to rebuild') from exc
    got_sha = hashlib.sha256(blob).hexdigest()
    if got_sha != want_sha:
        raise EngineError(f'engine file {path} is corrupt: sha256 {got_sha[:16]} != {want_sha[:16]} recorded at build '
                          f'time (truncated copy or disk error); delete it so it is rebuilt')
    if expected is not None and key != expected:
        diffs = [f'{name} {getattr(key, name)!r} (need {getattr(expected, name)!r})'
                 for name in ('tensorrt_version', 'compute_capability', 'precision', 'input_hw', 'max_batch',
                              'onnx_sha256') if getattr(key, name) != getattr(expected, name)]
        raise EngineError(f'engine file {path} was built for another setup: ' + '; '.join(diffs))
    return blob


class TensorRTRuntime:
    """The GPU-facing part: TensorRT builder/runtime and CUDA memory. Not run on a GPU (see module docstring)."""

    def __init__(self, device_id: int = 0):
        try:
            import tensorrt as trt
        except Exception as exc:   # ImportError, or OSError from missing libnvinfer
            raise TensorRTUnavailable(f'TensorRT is not installed or cannot load ({type(exc).__name__}: {exc}); install '
                               f'TensorRT >= 10 for this GPU (JetPack on Jetson) or use backend:=onnxruntime') from exc
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart
            except Exception as exc:
                raise TensorRTUnavailable(f'cuda-python is not installed ({exc}); `pip install cuda-python` matching '
                                   f'your CUDA version') from exc
        major = int(str(trt.__version__).split('.')[0])
        if major < 10:
            raise TensorRTUnavailable(f'TensorRT {trt.__version__} found; this backend needs TensorRT >= 10')
        self.trt, self.cudart, self.device_id = trt, cudart, device_id
        self.version = str(trt.__version__)
        try:
            self._check(cudart.cudaSetDevice(device_id))
            props = self._check(cudart.cudaGetDeviceProperties(device_id))
        except BackendError as exc:
            raise TensorRTUnavailable(f'no usable CUDA device {device_id}: {exc}') from exc
        self.compute_capability = (int(props.major), int(props.minor))

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if int(severity) <= int(trt.ILogger.Severity.ERROR):
                    self.errors.append(str(msg))

        self.logger = _Logger()

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(getattr(err, 'value', err)) != 0:
            name = self.cudart.cudaGetErrorName(err)[1] if hasattr(self, 'cudart') else err
            raise BackendError(f'CUDA call failed: {name}')
        return rest[0] if len(rest) == 1 else (rest or None)

    def _errors(self) -> str:
        errs, self.logger.errors = self.logger.errors, []
        return '; '.join(errs[-5:]) or 'no TensorRT error message'

    def build(self, onnx_path: Path, precision: str, input_hw: tuple[int, int], max_batch: int,
              workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> bytes:
        """Serialized engine for the ONNX model, batch profile 1..max_batch (opt 1)."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errs = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f'TensorRT cannot parse {onnx_path}: {errs or self._errors()}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
        if precision == 'fp16':
            if not builder.platform_has_fast_fp16:
                raise BackendError('precision fp16 requested but this GPU has no fast fp16; use precision:=fp32')
            config.set_flag(trt.BuilderFlag.FP16)
        h, w = input_hw
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, (1, 3, h, w), (1, 3, h, w), (max_batch, 3, h, w))
        config.add_optimization_profile(profile)
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise BackendError(f'TensorRT engine build failed for {onnx_path} ({precision}): {self._errors()}')
        return bytes(blob)

    def load(self, blob: bytes, max_batch: int) -> Callable[[np.ndarray], np.ndarray]:
        """A function image float32 [N,3,H,W] -> depth float32 [N,1,H,W] running the engine on this GPU."""
        trt, cudart = self.trt, self.cudart
        runtime = trt.Runtime(self.logger)
        engine = runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise EngineError(f'TensorRT {self.version} cannot deserialize the engine ({self._errors()}); it was '
                              f'built with another TensorRT version or for another GPU, or it is corrupt')
        names = {engine.get_tensor_name(i): engine.get_tensor_mode(engine.get_tensor_name(i))
                 for i in range(engine.num_io_tensors)}
        if names.get(INPUT_NAME) != trt.TensorIOMode.INPUT or names.get(OUTPUT_NAME) != trt.TensorIOMode.OUTPUT:
            raise EngineError(f'engine tensors are {sorted(names)}; need input {INPUT_NAME!r}, output {OUTPUT_NAME!r}')
        in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(INPUT_NAME)))
        out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(OUTPUT_NAME)))
        max_in = tuple(engine.get_tensor_profile_shape(INPUT_NAME, 0)[2])
        n_max = min(int(max_in[0]), int(max_batch))
        _, _, h, w = max_in
        context = engine.create_execution_context()
        d_in = self._check(cudart.cudaMalloc(n_max * 3 * h * w * in_dtype.itemsize))
        d_out = self._check(cudart.cudaMalloc(n_max * h * w * out_dtype.itemsize))
        stream = self._check(cudart.cudaStreamCreate())
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep_alive = (runtime, engine, context)

        def run(batch: np.ndarray) -> np.ndarray:
            _ = keep_alive
            x = np.ascontiguousarray(batch, dtype=in_dtype)
            if x.shape[0] > n_max:
                raise BackendError(f'batch {x.shape[0]} exceeds the engine profile maximum {n_max}')
            if not context.set_input_shape(INPUT_NAME, tuple(x.shape)):
                raise BackendError(f'engine rejects input shape {x.shape}: {self._errors()}')
            context.set_tensor_address(INPUT_NAME, int(d_in))
            context.set_tensor_address(OUTPUT_NAME, int(d_out))
            out = np.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), out_dtype)
            self._check(cudart.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, h2d, stream))
            if not context.execute_async_v3(stream_handle=stream):
                raise BackendError(f'TensorRT execution failed: {self._errors()}')
            self._check(cudart.cudaMemcpyAsync(out.ctypes.data, d_out, out.nbytes, d2h, stream))
            self._check(cudart.cudaStreamSynchronize(stream))
            return out.astype(np.float32, copy=False)

        def free():
            for ptr in (d_in, d_out):
                cudart.cudaFree(ptr)
            cudart.cudaStreamDestroy(stream)

        run.free = free
        return run


def engine_key(model_path: str | Path, metadata: ModelMetadata, runtime, precision: str, max_batch: int) -> EngineKey:
    """The cache key of `model_path` on this runtime's TensorRT version and GPU."""
    return EngineKey(onnx_sha256=file_sha256(model_path), tensorrt_version=runtime.version,
                     compute_capability=tuple(runtime.compute_capability), precision=precision,
                     input_hw=(metadata.input_height, metadata.input_width), max_batch=int(max_batch))


def ensure_engine(model_path: str | Path, metadata: ModelMetadata, runtime, precision: str, max_batch: int,
                  engine_cache_dir: str | Path | None = None, *, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                  rebuild: bool = False, log: Callable[[str], None] = print,
                  progress: Callable[[str], None] | None = None) -> tuple[Path, bytes, EngineKey, bool]:
    """(engine path, engine bytes, key, built now): the cached engine of this model / TensorRT / GPU /
    precision / shape when it is intact, else a new build written atomically into the cache (a corrupt or
    mismatched cached engine is rebuilt, the reason logged). Shared by the node (TensorRTBackend) and the
    ahead-of-time builder (`python -m training build-engine`), so both use the same file.
    progress: told 'building TensorRT engine' when a build starts and 'loading TensorRT engine' after it (the
    node reports it on /diagnostics during the minutes a build takes)."""
    if precision not in ('fp32', 'fp16'):
        raise BackendError(f'precision {precision!r} is not one of fp32, fp16')
    if int(max_batch) < 1:
        raise BackendError(f'max_batch must be >= 1, got {max_batch}')
    model_path = Path(model_path)
    key = engine_key(model_path, metadata, runtime, precision, max_batch)
    cache = Path(engine_cache_dir) if engine_cache_dir else default_engine_cache_dir()
    path = cache / key.file_name(model_path.stem)
    if path.exists() and not rebuild:
        try:
            blob = read_engine(path, key)
            log(f'loaded cached TensorRT engine {path}')
            return path, blob, key, False
        except EngineError as exc:
            log(f'cached TensorRT engine unusable ({exc}); rebuilding')
    log(f'building TensorRT engine ({key.describe()}) from {model_path}; this can take minutes '
        f'(on a Jetson up to ~5 min) and happens once per model, precision, TensorRT version and GPU')
    t0 = time.monotonic()
    if progress is not None:
        progress('building TensorRT engine')
    blob = runtime.build(model_path, precision, key.input_hw, int(max_batch), workspace_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_engine(path, blob, key)
    log(f'TensorRT engine built in {time.monotonic() - t0:.0f} s, cached at {path}')
    if progress is not None:
        progress('loading TensorRT engine')
    return path, blob, key, True


class TensorRTBackend:
    """Runs the model as a TensorRT engine: from `engine_path`, else from the cache, else built and cached.

    A cached engine that is corrupt or was built for another key is rebuilt (and the reason logged);
    an explicit `engine_path` that does not fit raises EngineError (the caller decides about fallback).
    `progress` is passed to ensure_engine (told when an engine build starts and ends).
    """

    def __init__(self, model_path: str | Path, metadata: ModelMetadata, precision: str = 'fp32',
                 engine_cache_dir: str | Path | None = None, engine_path: str | Path | None = None,
                 max_batch: int = 4, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                 runtime: TensorRTRuntime | None = None, log: Callable[[str], None] = print,
                 progress: Callable[[str], None] | None = None):
        if precision not in ('fp32', 'fp16'):
            raise BackendError(f'precision {precision!r} is not one of fp32, fp16')
        if engine_path:
            read_engine(engine_path, None)     # integrity first: a corrupt file is named even without TensorRT
        self.runtime = runtime if runtime is not None else TensorRTRuntime()
        self.precision, self.max_batch = precision, int(max_batch)
        if engine_path:
            model_path = Path(model_path)
            self.key = engine_key(model_path, metadata, self.runtime, precision, self.max_batch)
            self.engine_path = Path(engine_path)
            blob = read_engine(self.engine_path, self.key)
            self._run = self.runtime.load(blob, self.max_batch)
        else:
            self.engine_path, blob, self.key, built = ensure_engine(
                model_path, metadata, self.runtime, precision, self.max_batch, engine_cache_dir,
                workspace_bytes=workspace_bytes, log=log, progress=progress)
            try:
                self._run = self.runtime.load(blob, self.max_batch)
            except EngineError as exc:
                if built:
                    raise
                log(f'cached TensorRT engine unusable ({exc}); rebuilding')
                self.engine_path, blob, self.key, _ = ensure_engine(
                    model_path, metadata, self.runtime, precision, self.max_batch, engine_cache_dir,
                    workspace_bytes=workspace_bytes, rebuild=True, log=log, progress=progress)
                self._run = self.runtime.load(blob, self.max_batch)
        self.name = f'tensorrt[{precision}]'

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self._run(batch)
        n, _, h, w = batch.shape
        if out.shape != (n, 1, h, w):
            raise BackendError(f'{self.name}: output shape {out.shape}, expected {(n, 1, h, w)}')
        return out

    def close(self) -> None:
        free = getattr(self._run, 'free', None)
        if free is not None:
            free()
        self._run = None
