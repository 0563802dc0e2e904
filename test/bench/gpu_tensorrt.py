"""Prepared GPU check of the TensorRT backend. NOT RUN YET: no session of this project has had a GPU with
TensorRT, so TensorRT has never run here (see docs/verification.md, "Where it ran").

    .venv/bin/python test/bench/gpu_tensorrt.py [--out DIR] [--rounds 50] [--cpu-rounds 5]

It prints the versions first (TensorRT, cuda-python, the driver's CUDA, the GPU) and exits 3 when TensorRT or
cuda-python cannot run (the reason in one line). Then, for the bundled model (96x320) and the same network at
the design's 192x640 (input and output dims rewritten; the graph has no fixed spatial size), in fp32 and fp16:

  - builds the engine through `dynadepth-build-engine`'s function for a two-camera node (profile 1..2,
    optimised for 2; cache in a temporary folder), which checks it against ONNX Runtime CPU on the node's
    probe input with the node's trt_tolerance 0.02 (mean relative error, p99, non-finite count);
  - times, in the same run, the engine (as the node calls it: host to device, execute, device to host) and
    ONNX Runtime CPU (and the CUDA execution provider when offered) on batch 1 and 2: median ms per batch;
  - reports which route built the fp16 engine (BuilderFlag.FP16, or strongly typed from the fp16 ONNX).

Everything is printed as one table and written to DIR/results.json (DIR defaults to $OUT when set). Takes a
few minutes on a desktop GPU: four engine builds of a ResNet18 U-Net.

`--stand-in 11.4.0` runs the same steps on test/trt_substitute.py's FakeGPU (a stand-in `tensorrt` that runs
the ONNX on ONNX Runtime CPU) to check the script itself without a GPU: its numbers say nothing about TensorRT.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dynadepth_ros.engine_builder import build_engine  # noqa: E402
from dynadepth_ros.inference.backend import BackendError  # noqa: E402
from dynadepth_ros.inference.backend_selection import probe_input  # noqa: E402
from dynadepth_ros.inference.estimator import BUNDLED_MODEL  # noqa: E402
from dynadepth_ros.inference.onnxruntime_backend import (CPU_EP, CUDA_EP, OnnxRuntimeBackend,  # noqa: E402
                                                         available_providers)
from dynadepth_ros.inference.tensorrt_backend import TensorRTBackend, TensorRTRuntime  # noqa: E402
from dynadepth_ros.model_format import ModelMetadata, read_metadata, write_metadata  # noqa: E402

CAMERAS = 2


def resized_model(src: Path, dst: Path, height: int, width: int) -> Path:
    """The same network with input/output H, W (and the dynadepth metadata) set to height x width."""
    m = onnx.load(str(src))
    for value in (m.graph.input[0], m.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_value, dims[3].dim_value = height, width
    del m.graph.value_info[:]
    onnx.save(m, str(dst))
    meta = read_metadata(src).to_props()
    meta.update({'dynadepth.input_height': str(height), 'dynadepth.input_width': str(width)})
    write_metadata(dst, ModelMetadata.from_props(meta, source=str(dst)))
    return dst


def median_ms(run, x, rounds: int) -> float:
    run(x)                                         # warm-up (allocations, lazy initialisation)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def versions(runtime) -> dict:
    import importlib.metadata as md
    out = {'tensorrt': runtime.version, 'gpu_sm': '%d%d' % tuple(runtime.compute_capability),
           'driver_cuda': runtime._driver_cuda(), 'python': platform.python_version()}
    for dist in ('cuda-python', 'cuda-bindings', 'onnxruntime', 'onnxruntime-gpu', 'onnxconverter-common',
                 'nvidia-modelopt'):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    try:
        err, props = runtime.cudart.cudaGetDeviceProperties(runtime.device_id)
        out['gpu'] = props.name.decode(errors='replace') if isinstance(props.name, bytes) else str(props.name)
    except Exception:
        pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, default=Path(os.environ['OUT']) if os.environ.get('OUT') else None)
    ap.add_argument('--rounds', type=int, default=50, help='timed engine runs per case')
    ap.add_argument('--cpu-rounds', type=int, default=5, help='timed ONNX Runtime CPU runs per case')
    ap.add_argument('--stand-in', metavar='TRT_VERSION',
                    help='use the FakeGPU stand-in of that TensorRT version (checks this script; numbers meaningless)')
    args = ap.parse_args()
    if args.stand_in:
        sys.path.insert(0, str(REPO / 'test'))
        from trt_substitute import FakeGPU
        sys.modules.update(FakeGPU(args.stand_in).modules())
    try:
        runtime = TensorRTRuntime()
    except BackendError as exc:
        print(f'TensorRT cannot run here: {exc}', flush=True)
        return 3
    info = versions(runtime)
    print('versions:', json.dumps(info), flush=True)
    results = {'versions': info, 'cases': []}
    with tempfile.TemporaryDirectory(prefix='dynadepth-gpu-') as tmp:
        tmp = Path(tmp)
        models = {'bundled 96x320': BUNDLED_MODEL,
                  'bundled net at 192x640': resized_model(BUNDLED_MODEL, tmp / 'dynadepth_192x640.onnx', 192, 640)}
        for label, model in models.items():
            meta = read_metadata(model)
            cpu = OnnxRuntimeBackend(model, meta, CPU_EP, max_batch=CAMERAS)
            gpu_ep = (OnnxRuntimeBackend(model, meta, CUDA_EP, max_batch=CAMERAS)
                      if CUDA_EP in available_providers() else None)
            for precision in ('fp32', 'fp16'):
                case = {'model': label, 'precision': precision}
                logs = []
                t0 = time.monotonic()
                try:
                    out = build_engine(model, precision, max_batch=CAMERAS, cache_dir=tmp / 'engines',
                                       runtime=runtime, log=logs.append)
                except BackendError as exc:
                    case['error'] = str(exc)
                    print(f'{label} {precision}: FAILED {exc}', flush=True)
                    results['cases'].append(case)
                    continue
                case.update(build_s=round(time.monotonic() - t0, 1), check=out['check'],
                            route=next((m for m in logs if 'strongly typed' in m or 'BuilderFlag' in m),
                                       'BuilderFlag.FP16' if precision == 'fp16' else 'fp32'))
                engine = TensorRTBackend(model, meta, precision, engine_path=out['engine'], max_batch=CAMERAS,
                                         runtime=runtime, log=logs.append)
                for batch in (1, CAMERAS):
                    x = probe_input(meta.input_height, meta.input_width, batch)
                    case[f'trt_ms_b{batch}'] = round(median_ms(engine.run, x, args.rounds), 3)
                    case[f'ort_cpu_ms_b{batch}'] = round(median_ms(cpu.run, x, args.cpu_rounds), 2)
                    if gpu_ep is not None:
                        case[f'ort_cuda_ms_b{batch}'] = round(median_ms(gpu_ep.run, x, args.rounds), 3)
                engine.close()
                print(json.dumps(case), flush=True)
                results['cases'].append(case)
            cpu.close()
    print(f'\n{"model":<24} {"prec":<5} {"build s":>7} {"trt b1":>8} {"trt b2":>8} {"cpu b1":>8} {"cpu b2":>8}  check')
    for c in results['cases']:
        if 'error' in c:
            print(f'{c["model"]:<24} {c["precision"]:<5} FAILED: {c["error"]}')
            continue
        print(f'{c["model"]:<24} {c["precision"]:<5} {c["build_s"]:>7} {c["trt_ms_b1"]:>8} {c["trt_ms_b2"]:>8} '
              f'{c["ort_cpu_ms_b1"]:>8} {c["ort_cpu_ms_b2"]:>8}  {c["check"]}')
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / 'results.json').write_text(json.dumps(results, indent=2))
    return 1 if any('error' in c for c in results['cases']) else 0


if __name__ == '__main__':
    sys.exit(main())
