"""`dynadepth-build-engine MODEL.onnx` (also `python -m training build-engine`): build the TensorRT
engine ahead of time, on the target itself (a Jetson or the robot's GPU computer), into the engine
cache under exactly the name the node looks for, so the node starts without a multi-minute build.

    dynadepth-build-engine dynadepth_ros/models/dynadepth_final.onnx --precision fp16
    dynadepth-build-engine model.onnx --precision fp32 --cache-dir /var/cache/dynadepth --rebuild
    dynadepth-build-engine final_int8_trt.onnx --precision int8     # an INT8 (QDQ) model from
                                          # `python -m training quantize final.onnx --calib DATA --target tensorrt`

The build goes through the same function the node uses (tensorrt_backend.ensure_engine): same cache
key (ONNX sha256, TensorRT version, GPU compute capability, precision, input shape, max batch), same
sidecar, atomic write. With --verify (default) the engine is then run on the node's start-up probe
input and compared with ONNX Runtime CPU under the node's trt_tolerance, so an engine the node would
refuse is reported here. The node runs batch 1, hence --max-batch 1 by default.

Exit status: 0 built or already cached, 2 the model is not a valid dynadepth model, 3 TensorRT cannot
run here (not installed, cannot start, no GPU, wrong CUDA), 4 the engine disagrees with ONNX Runtime, 1 other
errors; each with one line on stderr naming the cause.
NOT RUN ON A GPU: see tensorrt_backend's module docstring.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dynadepth_ros.inference.backend import BackendError
from dynadepth_ros.inference.tensorrt_backend import (DEFAULT_WORKSPACE_BYTES, ENGINE_PRECISIONS, EngineError,
                                                      TensorRTBackend, TensorRTRuntime, TensorRTUnavailable,
                                                      default_engine_cache_dir, engine_precision, ensure_engine)
from dynadepth_ros.model_format import ModelFormatError, read_metadata

NODE_MAX_BATCH = 1          # a single-camera node runs batch 1; a node with `cameras` runs len(cameras)
NODE_TRT_TOLERANCE = 0.02   # the node's trt_tolerance default


class VerificationError(BackendError):
    """The engine's depth differs from ONNX Runtime CPU beyond the tolerance (the node would refuse it)."""


def build_engine(model: str | Path, precision: str = 'fp16', max_batch: int = NODE_MAX_BATCH,
                 cache_dir: str | Path | None = None, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                 rebuild: bool = False, verify: bool = True, tolerance: float = NODE_TRT_TOLERANCE,
                 runtime=None, log=print) -> dict:
    """Build (or find) the engine; returns {'engine', 'built', 'key', 'check'}. Raises ModelFormatError
    (invalid model), BackendError (TensorRT unavailable, build failed, or verification failed); any other
    failure inside TensorRT comes as a BackendError naming it."""
    try:
        return _build_engine(Path(model), precision, max_batch, cache_dir, workspace_bytes, rebuild, verify,
                             tolerance, runtime, log)
    except (ModelFormatError, BackendError):
        raise
    except Exception as exc:
        raise BackendError(f'TensorRT engine build failed: {type(exc).__name__}: {exc}') from exc


def _build_engine(model: Path, precision: str, max_batch: int, cache_dir, workspace_bytes: int, rebuild: bool,
                  verify: bool, tolerance: float, runtime, log) -> dict:
    if not model.is_file():
        raise ModelFormatError(f'{model} does not exist')
    meta = read_metadata(model)
    precision = engine_precision(model, meta, precision, log)
    runtime = runtime if runtime is not None else TensorRTRuntime()
    path, blob, key, built = ensure_engine(model, meta, runtime, precision, max_batch, cache_dir,
                                           workspace_bytes=workspace_bytes, rebuild=rebuild, any_batch=False,
                                           log=log)
    check = None
    if verify:
        from dynadepth_ros.inference.backend_selection import verify_backend
        from dynadepth_ros.inference.onnxruntime_backend import CPU_EP, OnnxRuntimeBackend

        try:
            engine = TensorRTBackend(model, meta, precision, engine_path=path, max_batch=key.max_batch,
                                     runtime=runtime, log=log)
        except EngineError as exc:
            raise EngineError(f'the engine at {path} does not load: {exc}') from exc
        reference = OnnxRuntimeBackend(model, meta, CPU_EP)
        try:
            check = verify_backend(engine, reference, meta, tolerance)
        except BackendError as exc:
            raise VerificationError(f'{exc}. The engine stays cached at {path}; the node would refuse it '
                                    f'with trt_tolerance {tolerance}') from exc
        finally:
            engine.close()
            reference.close()
        log(f'engine agrees with ONNX Runtime CPU: {check.describe()}')
    return {'engine': str(path), 'built': built, 'key': key.to_json(), 'precision': precision,
            'check': None if check is None else check.describe()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='dynadepth-build-engine', description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('model', type=Path, help='dynadepth ONNX model (design §3 format)')
    ap.add_argument('--precision', default='fp16', choices=ENGINE_PRECISIONS,
                    help='must match the node parameter `precision` (jetson/desktop_gpu presets: fp16); int8 needs '
                         'an INT8 model (`python -m training quantize ... --target tensorrt`), whose engine is int8 '
                         'whatever is asked')
    ap.add_argument('--max-batch', '--cameras', dest='max_batch', type=int, default=NODE_MAX_BATCH, metavar='N',
                    help='number of cameras the node serves (its `cameras` parameter; 1 without it): the batch '
                         'profile covers 1..N, optimised for N')
    ap.add_argument('--cache-dir', type=Path,
                    help=f'engine cache (node parameter engine_cache_dir); default {default_engine_cache_dir()}')
    ap.add_argument('--workspace-mb', type=int, default=DEFAULT_WORKSPACE_BYTES >> 20,
                    help='TensorRT builder workspace (MiB)')
    ap.add_argument('--rebuild', action='store_true', help='build even when an intact cached engine exists')
    ap.add_argument('--no-verify', dest='verify', action='store_false',
                    help='skip the comparison with ONNX Runtime CPU on the probe input')
    ap.add_argument('--tolerance', type=float, default=NODE_TRT_TOLERANCE,
                    help='largest mean relative depth difference accepted (node parameter trt_tolerance)')
    args = ap.parse_args(argv)
    if args.max_batch < 1 or args.workspace_mb < 1:
        ap.error('--max-batch and --workspace-mb must be >= 1')
    try:
        out = build_engine(args.model, args.precision, args.max_batch, args.cache_dir, args.workspace_mb << 20,
                           rebuild=args.rebuild, verify=args.verify, tolerance=args.tolerance)
    except ModelFormatError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except TensorRTUnavailable as exc:
        print(f'error: {exc}\nbuild the engine on the target GPU machine (e.g. the Jetson) itself', file=sys.stderr)
        return 3
    except VerificationError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 4
    except BackendError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    except Exception as exc:      # never a traceback: one line naming the cause
        print(f'error: {type(exc).__name__}: {exc}', file=sys.stderr)
        return 1
    print(f"{'built' if out['built'] else 'already cached'}: {out['engine']}")
    print(f"the node uses it with precision:={out['precision']}"
          + (f" engine_cache_dir:={args.cache_dir}" if args.cache_dir else '')
          + ' (or engine_path:=<that file>)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
