"""TensorRT backend (TensorRT 10.x and 11.x Python API + cuda-python): engine cache, build from ONNX, execution.

NOT RUN ON A GPU. The project's machines have no GPU and TensorRT cannot be installed there, so the code in
`TensorRTRuntime` (the only part that imports `tensorrt` / `cuda`) has never executed against a real TensorRT.
It is written against the documented TensorRT 10 and 11 APIs: trt.Builder, create_network (explicit batch is
the only mode since 10.x; NetworkDefinitionCreationFlag.STRONGLY_TYPED from 10.12 on, where weak typing is
deprecated, and always strongly typed in 11.x), trt.OnnxParser.parse_from_file, create_builder_config,
set_memory_pool_limit(MemoryPoolType.WORKSPACE), fp16 either through BuilderFlag.FP16 on a weakly typed network
(TensorRT 10.0-10.11) or through an fp16 copy of the ONNX (fp16_model.py) on a strongly typed one (10.12+ and
11.x, which removed BuilderFlag.FP16 and Builder.platform_has_fast_fp16), int8 from an INT8 QDQ model (explicit
quantization, no calibrator: BuilderFlag.INT8 on a weakly typed network (10.0-10.11), the Q/DQ nodes' types on
a strongly typed one (10.12+, 11.x); TensorRT takes only symmetric int8 Q/DQ, `python -m training quantize
--target tensorrt`), create_optimization_profile/set_shape
for the dynamic batch, build_serialized_network, trt.Runtime.deserialize_cuda_engine,
engine.num_io_tensors/get_tensor_name/get_tensor_mode/get_tensor_shape, IExecutionContext.set_input_shape/
set_tensor_address/execute_async_v3, and cuda-python's runtime API (cudaMalloc, cudaMemcpyAsync,
cudaStreamCreate/Synchronize, cudaGetDeviceProperties, cudaDriverGetVersion) as the TensorRT samples use it.
The tests run this code against a stand-in `tensorrt` and `cuda` module (test/trt_substitute.py) that has the
names of each version and fails the ways real installs do; the stand-in is not TensorRT.

Any failure inside the backend (TensorRT that cannot start: `TypeError: ... factory function returned nullptr`,
names missing in this TensorRT version, CUDA errors, a cuda-python built for a newer CUDA than the driver) is
raised as a BackendError whose message names the cause, so `backend:=auto` falls back to ONNX Runtime with
that reason and `dynadepth-build-engine` prints one line.

Cache layout: <cache_dir>/<model stem>-<onnx sha256[:16]>-trt<version>-sm<major><minor>-<precision>-b<max
batch>x3x<H>x<W>.engine plus a `.json` sidecar recording the same key and the engine's sha256. The batch is
the engine's optimisation profile (1..max batch, optimised for max batch); an engine of any batch serves any
number of cameras (a larger batch runs as several engine calls), so a node looks for the engine of its batch,
then the smallest one above it, then the largest one below, and builds only when there is none.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
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
ENGINE_PRECISIONS = ('fp32', 'fp16', 'int8')
STRONGLY_TYPED_FROM = (10, 12)      # TensorRT 10.12 deprecated weak typing (BuilderFlag.FP16); 11.0 removed it
CUDA_PYTHON_REQUIREMENT = 'cuda-python>=12.6,<13'    # the CUDA-12 TensorRT wheels and JetPack 6
CUDA_ERROR_INSUFFICIENT_DRIVER = 35


class EngineError(BackendError):
    """An engine file that cannot be used (corrupt, or built for another TensorRT / GPU / model / precision)."""


class TensorRTUnavailable(BackendError):
    """TensorRT or CUDA cannot run in this process (not installed, cannot start, no GPU, wrong CUDA)."""


def default_engine_cache_dir() -> Path:
    """$DYNADEPTH_ENGINE_CACHE, else $XDG_CACHE_HOME/dynadepth_ros/engines, else ~/.cache/dynadepth_ros/engines."""
    if os.environ.get('DYNADEPTH_ENGINE_CACHE'):
        return Path(os.environ['DYNADEPTH_ENGINE_CACHE'])
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'dynadepth_ros' / 'engines'


def version_tuple(version: str) -> tuple[int, ...]:
    """(major, minor, ...) of a version string such as '10.13.0.35' or '11.4.0.106'; non-numeric parts end it."""
    parts = []
    for part in str(version).split('.'):
        digits = ''.join(c for c in part if c.isdigit())
        if not digits or not part.startswith(digits):
            break
        parts.append(int(digits))
    return tuple(parts) or (0,)


@dataclass(frozen=True)
class EngineKey:
    """Everything that invalidates a serialized engine (max_batch does not: it only sets the profile)."""

    onnx_sha256: str
    tensorrt_version: str
    compute_capability: tuple[int, int]
    precision: str                  # 'fp32' | 'fp16' | 'int8'
    input_hw: tuple[int, int]       # model input H, W
    max_batch: int                  # optimisation profile: batch 1..max_batch, optimum max_batch

    def file_name(self, model_stem: str) -> str:
        return self._name(model_stem, str(self.max_batch))

    def file_pattern(self, model_stem: str) -> str:
        """A glob matching the file names of this key with any max_batch."""
        return self._name(model_stem, '*')

    def _name(self, model_stem: str, batch: str) -> str:
        h, w = self.input_hw
        major, minor = self.compute_capability
        return (f'{model_stem}-{self.onnx_sha256[:16]}-trt{self.tensorrt_version}-sm{major}{minor}-'
                f'{self.precision}-b{batch}x3x{h}x{w}.engine')

    def differences(self, expected: 'EngineKey') -> list[str]:
        """What makes an engine of this key unusable where `expected` is needed (max_batch never does)."""
        return [f'{name} {getattr(self, name)!r} (need {getattr(expected, name)!r})'
                for name in ('tensorrt_version', 'compute_capability', 'precision', 'input_hw', 'onnx_sha256')
                if getattr(self, name) != getattr(expected, name)]

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


def write_engine(path: str | Path, blob: bytes, key: EngineKey, **notes) -> None:
    """Write the engine and its sidecar atomically (engine first, so a sidecar never describes a partial file).
    notes: extra sidecar entries (e.g. how the fp16 model was made)."""
    path = Path(path)
    write_bytes_atomic(path, bytes(blob))
    meta = {'format': SIDECAR_FORMAT, 'key': key.to_json(), 'engine_sha256': hashlib.sha256(blob).hexdigest(),
            'engine_bytes': len(blob), 'built_at': time.strftime('%Y-%m-%dT%H:%M:%S%z'), **notes}
    write_json_atomic(sidecar_path(path), meta)


def _read_sidecar(path: Path) -> tuple[EngineKey, str] | None:
    """(key, engine sha256) recorded next to the engine, None without a sidecar; EngineError when unreadable."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
        return EngineKey.from_json(meta['key']), str(meta['engine_sha256'])
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f'engine sidecar {side} is unreadable ({exc}); delete {path} and {side} to rebuild') from exc


def read_engine(path: str | Path, expected: EngineKey | None) -> bytes:
    """The engine bytes after checking the sidecar: integrity (sha256) and, given `expected`, the key (all but
    max_batch: an engine of any batch profile serves any batch).

    Raises EngineError naming the problem. An engine without sidecar (e.g. from trtexec) is returned
    unchecked; TensorRT itself then refuses it if it does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise EngineError(f'engine file {path} does not exist')
    blob = path.read_bytes()
    if not blob:
        raise EngineError(f'engine file {path} is empty; delete it so it is rebuilt')
    recorded = _read_sidecar(path)
    if recorded is None:
        return blob
    key, want_sha = recorded
    got_sha = hashlib.sha256(blob).hexdigest()
    if got_sha != want_sha:
        raise EngineError(f'engine file {path} is corrupt: sha256 {got_sha[:16]} != {want_sha[:16]} recorded at build '
                          f'time (truncated copy or disk error); delete it so it is rebuilt')
    diffs = key.differences(expected) if expected is not None else []
    if diffs:
        raise EngineError(f'engine file {path} was built for another setup: ' + '; '.join(diffs))
    return blob


def find_cached_engine(cache: Path, model_stem: str, key: EngineKey, any_batch: bool = True) -> Path | None:
    """The cached engine for `key` with the best batch profile: max_batch == key.max_batch, else (any_batch)
    the smallest above it (covers the batch in one call), else the largest below it (the batch runs as several
    calls). Engines whose sidecar is missing, unreadable or names another setup are not candidates."""
    exact = cache / key.file_name(model_stem)
    if exact.exists() or not any_batch:
        return exact if exact.exists() else None
    found = []
    for path in cache.glob(key.file_pattern(model_stem)):
        try:
            recorded = _read_sidecar(path)
        except EngineError:
            continue
        if recorded is not None and not recorded[0].differences(key):
            found.append((recorded[0].max_batch, path))
    above = sorted(b for b in found if b[0] >= key.max_batch)
    below = sorted(b for b in found if b[0] < key.max_batch)
    best = above[0] if above else (below[-1] if below else None)
    return None if best is None else best[1]


def _decode(value) -> str:
    return value.decode(errors='replace') if isinstance(value, (bytes, bytearray)) else str(value)


def _cuda_python_version(cudart) -> str:
    """The installed cuda-python (or cuda-bindings) version, '?' when unknown."""
    import importlib.metadata
    version = getattr(cudart, '__version__', None) or getattr(cudart, 'CUDA_PYTHON_VERSION', None)
    for dist in ('cuda-python', 'cuda-bindings'):
        if version:
            break
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return str(version or '?')


class TensorRTRuntime:
    """The GPU-facing part: TensorRT builder/runtime and CUDA memory. Not run on a GPU (see module docstring).

    Every failure leaves as TensorRTUnavailable (TensorRT or CUDA cannot start or lacks a name this backend
    uses), EngineError (an engine that does not fit) or BackendError (a build or CUDA call that failed)."""

    def __init__(self, device_id: int = 0):
        try:
            import tensorrt as trt
        except Exception as exc:   # ImportError, or OSError from missing libnvinfer
            raise TensorRTUnavailable(f'TensorRT is not installed or cannot load ({type(exc).__name__}: {exc}); '
                                      f'install TensorRT 10 or 11 for this GPU (JetPack on Jetson) or use '
                                      f'backend:=onnxruntime') from exc
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart
            except Exception as exc:
                raise TensorRTUnavailable(f'cuda-python is not installed ({exc}); install it matching your CUDA '
                                          f"driver: pip install '{CUDA_PYTHON_REQUIREMENT}' for CUDA 12 and "
                                          f'JetPack 6 (`pip install .[tensorrt]`)') from exc
        self.trt, self.cudart, self.device_id = trt, cudart, device_id
        self.version = str(getattr(trt, '__version__', '?'))
        if version_tuple(self.version)[0] < 10:
            raise TensorRTUnavailable(f'TensorRT {self.version} found; this backend needs TensorRT 10 or 11')
        try:
            self._check(cudart.cudaSetDevice(device_id))
            props = self._check(cudart.cudaGetDeviceProperties(device_id))
            self.compute_capability = (int(props.major), int(props.minor))
            self.logger = self._make_logger()
            flag = getattr(trt, 'BuilderFlag', None)
            # strongly typed (precision from the model's types) where TensorRT has no fp16 flag or deprecates it
            self.strongly_typed = (version_tuple(self.version) >= STRONGLY_TYPED_FROM
                                   or not hasattr(flag, 'FP16'))
        except BackendError as exc:
            raise TensorRTUnavailable(f'no usable CUDA device {device_id}: {exc}') from exc
        except Exception as exc:
            raise TensorRTUnavailable(f'TensorRT {self.version} / cuda-python cannot start: '
                                      f'{self._describe(exc)}') from exc

    def _make_logger(self):
        trt = self.trt

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if int(severity) <= int(trt.ILogger.Severity.ERROR):
                    self.errors.append(str(msg))

        return _Logger()

    def _check(self, result):
        """The value(s) of a cuda-python call's (error, *values) tuple; BackendError naming the CUDA error."""
        err, *rest = result if isinstance(result, tuple) else (result,)
        code = int(getattr(err, 'value', err))
        if code != 0:
            try:
                name = _decode(self.cudart.cudaGetErrorName(err)[1])
            except Exception:
                name = f'CUDA error {code}'
            if code == CUDA_ERROR_INSUFFICIENT_DRIVER:
                raise TensorRTUnavailable(f'CUDA call failed: {name}: {self._driver_mismatch()}')
            raise BackendError(f'CUDA call failed: {name}')
        return rest[0] if len(rest) == 1 else (rest or None)

    def _driver_cuda(self) -> str:
        """The CUDA version this machine's driver supports, e.g. '12.2', or '?'."""
        try:
            err, version = self.cudart.cudaDriverGetVersion()
            if int(getattr(err, 'value', err)) == 0 and int(version) > 0:
                return f'{int(version) // 1000}.{int(version) % 1000 // 10}'
        except Exception:
            pass
        return '?'

    def _driver_mismatch(self) -> str:
        return (f'cuda-python {_cuda_python_version(self.cudart)} is built for a newer CUDA than this driver '
                f'supports (CUDA {self._driver_cuda()}); install the cuda-python of the driver\'s CUDA major '
                f"version (pip install '{CUDA_PYTHON_REQUIREMENT}' for CUDA 12 and JetPack 6, i.e. "
                f'`pip install .[tensorrt]`) or update the driver')

    def _describe(self, exc: Exception) -> str:
        """One line naming the cause of a failure inside TensorRT or CUDA, with TensorRT's own errors."""
        logged = getattr(getattr(self, 'logger', None), 'errors', None)
        trt_log = f'; TensorRT log: {self._errors()}' if logged else ''
        if isinstance(exc, AttributeError):
            return (f'TensorRT {self.version} lacks {getattr(exc, "name", None) or exc} ({exc}); this backend '
                    f'supports the TensorRT 10.x and 11.x Python API{trt_log}')
        text = f'{type(exc).__name__}: {exc}{trt_log}'
        if 'nullptr' in str(exc):
            text += (f'. TensorRT could not start here: usually its wheel is built for another CUDA major version '
                     f'than the driver supports (CUDA {self._driver_cuda()}; the tensorrt-cu12 wheels need a CUDA '
                     f'12 driver, tensorrt-cu13 a CUDA 13 one), or no GPU is visible')
        return text

    def _create(self, what: str, factory, *args):
        """factory(*args) (trt.Builder, trt.Runtime, trt.OnnxParser): TensorRTUnavailable naming the cause when
        TensorRT cannot create it (pybind11 raises TypeError 'factory function returned nullptr')."""
        try:
            made = factory(*args)
        except Exception as exc:
            raise TensorRTUnavailable(f'TensorRT {self.version} cannot create {what}: {self._describe(exc)}') from exc
        if made is None:
            raise TensorRTUnavailable(f'TensorRT {self.version} cannot create {what}: {self._errors()}')
        return made

    def _errors(self) -> str:
        errs, self.logger.errors = self.logger.errors, []
        return '; '.join(errs[-5:]) or 'no TensorRT error message'

    def build(self, onnx_path: Path, precision: str, input_hw: tuple[int, int], max_batch: int,
              workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, log: Callable[[str], None] = print) -> bytes:
        """Serialized engine for the ONNX model, batch profile 1..max_batch optimised for max_batch (the batch
        the node runs: its number of cameras)."""
        try:
            with tempfile.TemporaryDirectory(prefix='dynadepth-trt-') as tmp:
                return self._build(Path(onnx_path), precision, input_hw, int(max_batch), workspace_bytes,
                                   Path(tmp), log)
        except BackendError:
            raise
        except Exception as exc:
            raise TensorRTUnavailable(f'TensorRT engine build failed: {self._describe(exc)}') from exc

    def _build(self, onnx_path: Path, precision: str, input_hw: tuple[int, int], max_batch: int,
               workspace_bytes: int, tmp: Path, log: Callable[[str], None]) -> bytes:
        from dynadepth_ros.inference.fp16_model import fp16_converter, write_fp16_model
        trt = self.trt
        strongly = self.strongly_typed
        if precision == 'fp16' and strongly and hasattr(trt.BuilderFlag, 'FP16') and fp16_converter() is None:
            log(f'TensorRT {self.version}: no fp16 ONNX converter installed, using the deprecated '
                f'BuilderFlag.FP16 on a weakly typed network')
            strongly = False
        source = onnx_path
        if precision == 'fp16' and strongly:
            source = tmp / f'{onnx_path.stem}-fp16.onnx'
            tool = write_fp16_model(onnx_path, source)
            log(f'TensorRT {self.version} builds strongly typed: fp16 model made from {onnx_path.name} with {tool}')
        builder = self._create('trt.Builder', trt.Builder, self.logger)
        flags = 0
        if strongly and hasattr(trt.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED'):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = self._create('trt.OnnxParser', trt.OnnxParser, network, self.logger)
        if not parser.parse_from_file(str(source)):
            errs = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f'TensorRT cannot parse {source}: {errs or self._errors()}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
        if precision == 'fp16' and not strongly:
            if not builder.platform_has_fast_fp16:
                raise BackendError('precision fp16 requested but this GPU has no fast fp16; use precision:=fp32')
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == 'int8' and not strongly:
            # explicit quantization on a weakly typed network: the Q/DQ scales are used, INT8 must be allowed
            config.set_flag(trt.BuilderFlag.INT8)
        h, w = input_hw
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, (1, 3, h, w), (max_batch, 3, h, w), (max_batch, 3, h, w))
        config.add_optimization_profile(profile)
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise BackendError(f'TensorRT engine build failed for {onnx_path} ({precision}): {self._errors()}')
        return bytes(blob)

    def load(self, blob: bytes, max_batch: int) -> Callable[[np.ndarray], np.ndarray]:
        """A function image float32 [N,3,H,W] -> depth float32 [N,1,H,W] running the engine on this GPU, for N up
        to its attribute `max_batch` (the engine profile's, at most `max_batch`); `free()` releases it."""
        try:
            return self._load(blob, int(max_batch))
        except BackendError:
            raise
        except Exception as exc:
            raise TensorRTUnavailable(f'TensorRT cannot load the engine: {self._describe(exc)}') from exc

    def _load(self, blob: bytes, max_batch: int) -> Callable[[np.ndarray], np.ndarray]:
        trt, cudart = self.trt, self.cudart
        runtime = self._create('trt.Runtime', trt.Runtime, self.logger)
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
        max_in = tuple(int(v) for v in engine.get_tensor_profile_shape(INPUT_NAME, 0)[2])
        n_max = min(max_in[0], max_batch)
        _, _, h, w = max_in
        # design §3: depth [N,1,H,W] at the input's H, W; checked before any device memory is sized from it
        out_shape = tuple(int(v) for v in engine.get_tensor_shape(OUTPUT_NAME))
        if len(out_shape) != 4 or out_shape[1:] != (1, h, w) or out_shape[0] not in (-1, max_in[0]):
            raise EngineError(f'engine output {OUTPUT_NAME!r} has shape {list(out_shape)} for input '
                              f'{list(max_in)}; design §3 needs [N, 1, {h}, {w}] (N = batch): not a dynadepth '
                              f'depth model')
        context = engine.create_execution_context()
        if context is None:
            raise BackendError(f'TensorRT cannot create an execution context: {self._errors()}')
        d_in = self._check(cudart.cudaMalloc(n_max * 3 * h * w * in_dtype.itemsize))
        try:
            d_out = self._check(cudart.cudaMalloc(n_max * h * w * out_dtype.itemsize))
        except BaseException:
            cudart.cudaFree(d_in)
            raise
        try:
            stream = self._check(cudart.cudaStreamCreate())
        except BaseException:
            for ptr in (d_in, d_out):
                cudart.cudaFree(ptr)
            raise
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
            out = np.empty((x.shape[0], 1, h, w), out_dtype)
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
        run.max_batch = n_max
        return run


def engine_precision(model_path: str | Path, metadata: ModelMetadata, precision: str,
                     log: Callable[[str], None] = print) -> str:
    """The precision of the engine built from this model when `precision` is asked for: an INT8 (QDQ) model
    always gives an int8 engine (its Q/DQ nodes fix the precision; asked otherwise, a note is logged), and
    `int8` needs such a model. BackendError for a float model asked for int8, or an INT8 model whose Q/DQ
    nodes TensorRT does not accept (not symmetric int8)."""
    if precision not in ENGINE_PRECISIONS:
        raise BackendError(f'precision {precision!r} is not one of {", ".join(ENGINE_PRECISIONS)}')
    if getattr(metadata, 'precision', 'fp32') != 'int8':
        if precision == 'int8':
            raise BackendError(f'precision int8 needs an INT8 model; {Path(model_path).name} is fp32: make one with '
                               f'`python -m training quantize {model_path} --calib DATA --target tensorrt`')
        return precision
    import onnx

    from dynadepth_ros.model_format import graph_precision
    layout = graph_precision(onnx.load(str(model_path), load_external_data=False))[1]
    if layout != 'qdq-symmetric':
        raise BackendError(f'{Path(model_path).name} is an INT8 model laid out for ONNX Runtime CPU ({layout}: '
                           f'uint8 activations with zero points or QLinear operators); TensorRT takes only '
                           f'symmetric int8 Q/DQ: quantize the float model with `--target tensorrt`')
    if precision != 'int8':
        log(f'{Path(model_path).name} is an INT8 (QDQ) model: TensorRT builds an int8 engine (precision:={precision} '
            f'does not apply; set precision:=int8)')
    return 'int8'


def engine_key(model_path: str | Path, metadata: ModelMetadata, runtime, precision: str, max_batch: int) -> EngineKey:
    """The cache key of `model_path` on this runtime's TensorRT version and GPU."""
    return EngineKey(onnx_sha256=file_sha256(model_path), tensorrt_version=runtime.version,
                     compute_capability=tuple(runtime.compute_capability), precision=precision,
                     input_hw=(metadata.input_height, metadata.input_width), max_batch=int(max_batch))


def ensure_engine(model_path: str | Path, metadata: ModelMetadata, runtime, precision: str, max_batch: int,
                  engine_cache_dir: str | Path | None = None, *, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                  rebuild: bool = False, any_batch: bool = True, log: Callable[[str], None] = print,
                  progress: Callable[[str], None] | None = None) -> tuple[Path, bytes, EngineKey, bool]:
    """(engine path, engine bytes, key, built now): the cached engine of this model / TensorRT / GPU /
    precision / shape when one is intact (find_cached_engine: its batch profile is `max_batch`, else, with
    any_batch, the smallest above, else the largest below; the key returned is the engine's own), else a new
    build for
    `max_batch` written atomically into the cache (a corrupt cached engine is rebuilt, the reason logged).
    Shared by the node (TensorRTBackend) and the ahead-of-time builder (`dynadepth-build-engine`), so both
    use the same file.
    progress: told 'building TensorRT engine' when a build starts and 'loading TensorRT engine' after it (the
    node reports it on /diagnostics during the minutes a build takes)."""
    if precision not in ENGINE_PRECISIONS:
        raise BackendError(f'precision {precision!r} is not one of {", ".join(ENGINE_PRECISIONS)}')
    if (precision == 'int8') != (getattr(metadata, 'precision', 'fp32') == 'int8'):
        raise BackendError(f'precision {precision} does not fit {Path(model_path).name} (dynadepth.precision='
                           f'{getattr(metadata, "precision", "fp32")}); engine_precision() says which one does')
    if int(max_batch) < 1:
        raise BackendError(f'max_batch must be >= 1, got {max_batch}')
    model_path = Path(model_path)
    key = engine_key(model_path, metadata, runtime, precision, max_batch)
    cache = Path(engine_cache_dir) if engine_cache_dir else default_engine_cache_dir()
    path = cache / key.file_name(model_path.stem)
    cached = None if rebuild else find_cached_engine(cache, model_path.stem, key, any_batch)
    if cached is not None:
        try:
            blob = read_engine(cached, key)
            found = _read_sidecar(cached)
            found_key = found[0] if found else key
            log(f'loaded cached TensorRT engine {cached}' + _batch_note(found_key.max_batch, key.max_batch))
            return cached, blob, found_key, False
        except EngineError as exc:
            log(f'cached TensorRT engine unusable ({exc}); rebuilding')
    log(f'building TensorRT engine ({key.describe()}) from {model_path}; this can take minutes '
        f'(on a Jetson up to ~5 min) and happens once per model, precision, TensorRT version and GPU')
    t0 = time.monotonic()
    if progress is not None:
        progress('building TensorRT engine')
    blob = runtime.build(model_path, precision, key.input_hw, int(max_batch), workspace_bytes, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_engine(path, blob, key)
    log(f'TensorRT engine built in {time.monotonic() - t0:.0f} s, cached at {path}')
    if progress is not None:
        progress('loading TensorRT engine')
    return path, blob, key, True


def _batch_note(engine_batch: int, batch: int) -> str:
    """What a log line says when the engine's batch profile is not the batch asked for ('' when it is)."""
    if engine_batch == batch:
        return ''
    if engine_batch > batch:
        return f' (its profile covers batch 1..{engine_batch}; {batch} needed)'
    return (f' (built for batch up to {engine_batch}: a batch of {batch} runs as '
            f'{-(-batch // engine_batch)} engine calls; `dynadepth-build-engine MODEL --max-batch {batch} '
            f'--rebuild` builds one for all {batch} cameras at once)')


class TensorRTBackend:
    """Runs the model as a TensorRT engine: from `engine_path`, else from the cache, else built and cached.

    A cached engine that is corrupt or was built for another key is rebuilt (and the reason logged);
    an explicit `engine_path` that does not fit raises EngineError (the caller decides about fallback).
    An engine of any batch profile serves `max_batch` (the node's number of cameras): batches larger than
    its profile run as several engine calls. Any failure inside raises BackendError naming the cause.
    `progress` is passed to ensure_engine (told when an engine build starts and ends).
    """

    def __init__(self, model_path: str | Path, metadata: ModelMetadata, precision: str = 'fp32',
                 engine_cache_dir: str | Path | None = None, engine_path: str | Path | None = None,
                 max_batch: int = 4, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                 runtime: TensorRTRuntime | None = None, log: Callable[[str], None] = print,
                 progress: Callable[[str], None] | None = None):
        self._run = None
        self.precision = engine_precision(model_path, metadata, precision, log)
        self.max_batch = int(max_batch)
        self.name = f'tensorrt[{self.precision}]'
        try:
            self._open(Path(model_path), metadata, engine_cache_dir, engine_path, workspace_bytes, runtime, log,
                       progress)
        except BackendError:
            raise
        except Exception as exc:     # a bug or an unforeseen TensorRT difference: still one clear message
            raise BackendError(f'TensorRT backend failed: {type(exc).__name__}: {exc}') from exc

    def _open(self, model_path: Path, metadata: ModelMetadata, engine_cache_dir, engine_path, workspace_bytes,
              runtime, log, progress) -> None:
        if engine_path:
            read_engine(engine_path, None)     # integrity first: a corrupt file is named even without TensorRT
        self.runtime = runtime if runtime is not None else TensorRTRuntime()
        if engine_path:
            self.key = engine_key(model_path, metadata, self.runtime, self.precision, self.max_batch)
            self.engine_path = Path(engine_path)
            blob = read_engine(self.engine_path, self.key)
            self._run = self.runtime.load(blob, self.max_batch)
        else:
            self.engine_path, blob, self.key, built = ensure_engine(
                model_path, metadata, self.runtime, self.precision, self.max_batch, engine_cache_dir,
                workspace_bytes=workspace_bytes, log=log, progress=progress)
            try:
                self._run = self.runtime.load(blob, self.max_batch)
            except EngineError as exc:
                if built:
                    raise
                log(f'cached TensorRT engine unusable ({exc}); rebuilding')
                self.engine_path, blob, self.key, _ = ensure_engine(
                    model_path, metadata, self.runtime, self.precision, self.max_batch, engine_cache_dir,
                    workspace_bytes=workspace_bytes, rebuild=True, log=log, progress=progress)
                self._run = self.runtime.load(blob, self.max_batch)
        self._chunk = max(1, min(self.max_batch, int(getattr(self._run, 'max_batch', self.max_batch))))
        if engine_path and self._chunk < self.max_batch:
            log(f'TensorRT engine {engine_path}' + _batch_note(self._chunk, self.max_batch))

    def run(self, batch: np.ndarray) -> np.ndarray:
        n, _, h, w = batch.shape
        try:
            parts = [self._run(batch[i:i + self._chunk]) for i in range(0, n, self._chunk)]
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f'{self.name} failed: {type(exc).__name__}: {exc}') from exc
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if out.shape != (n, 1, h, w):
            raise BackendError(f'{self.name}: output shape {out.shape}, expected {(n, 1, h, w)}')
        return out

    def close(self) -> None:
        free = getattr(self._run, 'free', None)
        if free is not None:
            free()
        self._run = None
