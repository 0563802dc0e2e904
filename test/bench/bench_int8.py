"""Benchmark: INT8 (issue 19) against FP32, side by side in one interleaved run, raw ONNX Runtime and through the node.

    .venv/bin/python test/bench/bench_int8.py [--rounds 3] [--seconds 5] [--threads 2] [--calib DIR] [--no-node]
        [--model NAME=FP32.onnx[:INT8.onnx] ...]

Models (default): the bundled final model (dynadepth_ros/models) and the ResNet18 DepthNet at the contract size
192x640 (random weights, exported with the training export as in bench_node.py). Each is quantized here with
`training.quantize` (target cpu: QDQ, int8 per-channel weights, uint8 activations, MinMax) on --frames frames of
the synthetic train split (--calib, default data/synthetic/cpu-small), unless an INT8 file is given.

Every round runs, for every model, FP32 then INT8 (the machine is shared; interleaving spreads contention over
both), each for --seconds:
  raw   the node's ONNX Runtime CPU backend (OnnxRuntimeBackend, --threads, the node's session options) on a
        preprocessed [1,3,H,W] batch in a loop: frames/s
  node  depth_node (backend:=onnxruntime, intra_op_threads:=--threads) flooded with 640x192 rgb8 images at twice
        the raw rate: depth images received per second (latest-frame-wins drops the rest)
Printed: per round, and the medians over rounds with INT8 / FP32 next to each other: the ratio is the median of the
ratios within each round (the rounds see different load). Goal: INT8 raw >= 1.8x the FP32 raw of the bundled final.
--baseline NAME also sets every variant of every model against NAME's FP32, round by round (e.g. a distilled
network's INT8 against the bundled final's FP32: `--model bundled=dynadepth.onnx --model distilled=distill.onnx
--baseline bundled`).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bench_env import REPO  # noqa: F401  (first: sys.path and the ROS environment, before rclpy)
from bench_node import WORK, Client, bench_image, bench_model, start_node, stop_node  # noqa: E402
from test_node_graph import depth_node_cmd  # noqa: E402


def quantized(model: Path, calib: Path, frames: int, variant: str = 'qdq') -> Path:
    """The INT8 (cpu target) copy of `model` in the bench work folder, made once per model file and variant:
    'FORMAT[+EXCLUDE...]', e.g. 'qdq', 'qoperator', 'qdq+full-res' (the default exclusions plus those named)."""
    from dynadepth_ros.atomic_files import file_sha256
    from training.quantize import DEFAULT_EXCLUDE, describe_check, open_calibration, quantize_model

    from dynadepth_ros.model_format import read_metadata
    fmt, *extra = variant.split('+')
    out = WORK / f'{model.stem}-{file_sha256(model)[:12]}_int8_{variant.replace("+", "_")}.onnx'
    if not out.exists():
        meta = read_metadata(model)
        cal = open_calibration(calib, meta.input_height, meta.input_width, split='train', frames=frames)
        rep = quantize_model(model, out, cal, fmt=fmt, exclude=list(DEFAULT_EXCLUDE) + extra, log=print)
        print(f'  check: {describe_check(rep["check"])}')
    return out


class Raw:
    """The node's ONNX Runtime CPU backend on a preprocessed batch of the bench image."""

    def __init__(self, model: Path, threads: int):
        from dynadepth_ros.inference import DepthEstimator
        from dynadepth_ros.inference.preprocess import to_model_batch

        self.est = DepthEstimator(model, backend='onnxruntime', intra_op_threads=threads, max_batch=1)
        rgb = np.random.default_rng(0).integers(0, 256, (192, 640, 3), dtype=np.uint8)
        self.batch = to_model_batch([rgb], [self.est.plan_for(192, 640)])
        for _ in range(3):
            self.est._backend.run(self.batch)

    def fps(self, seconds: float) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.est._backend.run(self.batch)
            n += 1
        return n / (time.perf_counter() - t0)


def node_fps(cmd: list[str], client: Client, rate: float, seconds: float, log: Path) -> tuple[float, str]:
    proc = start_node(cmd, client, log)
    try:
        flood = client.run(rate, seconds, bench_image())
        backend = ''
        for _ in range(30):            # the node's /diagnostics (1 Hz): its depth status carries the backend values
            backend = client.diag.get('backend', '') or client.backend.get('backend', '')
            if backend:
                break
            time.sleep(0.1)
    finally:
        stop_node(proc, client)
    t = np.array([a for a, _ in flood], np.float64) / 1e9
    return ((len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else 0.0), backend


class DiagClient(Client):
    """bench_node's client, also keeping the node's backend status (which says int8)."""

    def __init__(self):
        self.backend: dict = {}
        super().__init__()

    def _on_diag(self, arr):
        super()._on_diag(arr)
        for st in arr.status:
            if st.name == 'bench_dynadepth: backend':
                self.backend = {kv.key: kv.value for kv in st.values}


def main() -> int:
    from dynadepth_ros.inference.estimator import BUNDLED_MODEL

    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', action='append', default=[], metavar='NAME=FP32.onnx[:INT8.onnx]')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--seconds', type=float, default=5.0)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--calib', type=Path, default=REPO / 'data' / 'synthetic' / 'cpu-small')
    ap.add_argument('--frames', type=int, default=64, help='calibration frames')
    ap.add_argument('--no-node', action='store_true', help='raw ONNX Runtime only')
    ap.add_argument('--baseline', metavar='NAME', help="also compare every variant with this model's FP32")
    ap.add_argument('--formats', default='qdq,qoperator',
                    help='INT8 variants made here for each model: FORMAT[+EXCLUDE...] (qdq: ONNX Runtime and TensorRT; '
                         'qoperator: ONNX Runtime; +full-res etc.: also keep those nodes in float)')
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    models: dict[str, tuple[Path, Path | None]] = {}
    for text in args.model:
        name, _, paths = text.partition('=')
        fp32, _, int8 = paths.partition(':')
        models[name] = (Path(fp32), Path(int8) if int8 else None)
    if not models:
        models = {'bundled final': (BUNDLED_MODEL, None), 'resnet18 192x640': (bench_model(None), None)}
    if args.baseline and args.baseline not in models:
        ap.error(f'--baseline {args.baseline!r} is not one of the models ({", ".join(models)})')
    formats = [f for f in args.formats.split(',') if f]
    pairs = {name: {'fp32': fp32, **({'int8': int8} if int8 else
                                     {f'int8-{f}': quantized(fp32, args.calib, args.frames, f) for f in formats})}
             for name, (fp32, int8) in models.items()}
    load = os.getloadavg()
    print(f'{args.rounds} interleaved rounds of {args.seconds:g} s per phase, ONNX Runtime CPU {args.threads} threads; '
          f'load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores')
    for name, p in pairs.items():
        print(f'  {name}: ' + ', '.join(f'{k} {path} ({path.stat().st_size / 1e6:.1f} MB)' for k, path in p.items()))
    raws = {(n, k): Raw(path, args.threads) for n, p in pairs.items() for k, path in p.items()}
    for (n, k), r in raws.items():
        print(f'  raw {n} {k}: {r.est.backend_name}')
    client = None if args.no_node else DiagClient()
    res = {key: {'raw': [], 'node': []} for key in raws}
    try:
        for rnd in range(args.rounds):
            for key, raw in raws.items():
                res[key]['raw'].append(raw.fps(args.seconds))
            line = ', '.join(f'{n} {k} {res[(n, k)]["raw"][-1]:.1f}' for n, k in raws)
            print(f'round {rnd + 1} raw frames/s: {line}', flush=True)
            if client is None:
                continue
            for (n, k), raw in raws.items():
                path = pairs[n][k]
                cmd = depth_node_cmd() + [
                    '--ros-args', '-p', f'model_path:={path}', '-p', 'backend:=onnxruntime',
                    '-p', f'intra_op_threads:={args.threads}', '-r', '__node:=bench_dynadepth',
                    '-r', 'image:=/bench/image', '-r', 'depth:=/bench/depth']
                fps, backend = node_fps(cmd, client, 2.0 * res[(n, k)]['raw'][-1], args.seconds,
                                        WORK / f'int8-node-{k}.log')
                res[(n, k)]['node'].append(fps)
                print(f'round {rnd + 1} node {n} {k}: {fps:.1f} frames/s (/diagnostics backend {backend!r})',
                      flush=True)
    finally:
        if client is not None:
            client.close()
        for r in raws.values():
            r.est.close()
    print('SUMMARY (frames/s: medians over rounds; INT8/FP32: median of the ratios within each round)')
    for n, p in pairs.items():
        for kind in ('raw', 'node'):
            f = res[(n, 'fp32')][kind]
            if not f:
                continue
            for k in p:
                if k == 'fp32':
                    continue
                q = res[(n, k)][kind]
                ratios = [b / a for a, b in zip(f, q)]
                print(f'  {n:18s} {kind:4s} fp32 {np.median(f):7.2f}  {k:14s} {np.median(q):7.2f}  {k}/fp32 '
                      f'{np.median(ratios):.2f}x (median of the per-round ratios {", ".join(f"{r:.2f}" for r in ratios)})')
    if args.baseline:
        print(f'AGAINST THE FP32 OF {args.baseline!r} (median of the per-round ratios)')
        for kind in ('raw', 'node'):
            base = res[(args.baseline, 'fp32')][kind]
            if not base:
                continue
            for n, p in pairs.items():
                for k in p:
                    ratios = [b / a for a, b in zip(base, res[(n, k)][kind])]
                    print(f'  {kind:4s} {n:18s} {k:14s} {np.median(ratios):.2f}x ({", ".join(f"{r:.2f}" for r in ratios)})')
    load = os.getloadavg()
    print(f'load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
