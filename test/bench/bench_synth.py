"""Benchmark of the synthetic generator (not collected by pytest).

    .venv/bin/python test/bench/bench_synth.py [--height 192 --width 640 --sequences 4 --frames 50]

Prints frames/s of generate_split with 1 and 2 worker processes, with and without --bag (lidar +
rosbag2), next to baselines measured in the same run: the cost of only writing already-rendered
frames to the dataset layout (PNG/npy/json, the floor any generator pays) and of rendering alone.
The machine is shared, so it prints wall-clock figures together with the CPU time the generator
itself used (frames per CPU-second of one core) and the load average during each run.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


def _load() -> str:
    return ' '.join(f'{v:.1f}' for v in os.getloadavg())


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its finished children."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--height', type=int, default=192)
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--sequences', type=int, default=4)
    ap.add_argument('--frames', type=int, default=50)
    args = ap.parse_args()

    from dynadepth_ros.datasets.layout import Calib, SequenceWriter
    from dynadepth_ros.synth import generate_split
    from dynadepth_ros.synth.generate import SequenceRenderer, SynthParams, sequence_seed

    n = args.sequences * args.frames
    print(f'dynadepth-synth benchmark: {args.sequences} sequences x {args.frames} frames at {args.height}x'
          f'{args.width}, {os.cpu_count()} CPUs, load average before: {_load()}')
    print(f'  {"what":44s} {"wall frames/s":>14s} {"frames/CPU-s":>13s}   load avg')
    tmp = Path(tempfile.mkdtemp(prefix='bench_synth_'))

    def row(label: str, frames: int, wall: float, cpu: float) -> None:
        print(f'  {label:44s} {frames / wall:14.1f} {frames / cpu:13.1f}   {_load()}')

    try:
        p = SynthParams(frames=args.frames, height=args.height, width=args.width)
        r = SequenceRenderer(sequence_seed(0, 'train', 0), p, True)
        k = min(args.frames, 20)
        w0, c0 = time.perf_counter(), _cpu()
        frames = [r.render(i)[0] for i in range(k)]
        row('baseline: render only, in-process', k, time.perf_counter() - w0, _cpu() - c0)
        w0, c0 = time.perf_counter(), _cpu()
        w = SequenceWriter(tmp / 'base', 'train', 'seq', Calib(r.K, args.height, args.width))
        for i in range(args.frames):
            f = frames[i % k]
            f.index = i
            w.write(f)
        w.close()
        row('baseline: write rendered frames only', args.frames, time.perf_counter() - w0, _cpu() - c0)
        fps = {}
        for bag in (False, True):
            for workers in (1, 2):
                out = tmp / f'gen_{bag}_{workers}'
                w0, c0 = time.perf_counter(), _cpu()
                generate_split(out, 'train', args.sequences, args.frames, args.height, args.width, seed=1, bag=bag,
                               workers=workers, progress=False)
                wall, cpu = time.perf_counter() - w0, _cpu() - c0
                fps[bag, workers] = n / wall
                row(f'generate_split{" --bag" if bag else ""}, {workers} worker process{"es" if workers > 1 else ""}',
                    n, wall, cpu)
                shutil.rmtree(out)
        print(f'  2 workers vs 1 (wall): {fps[False, 2] / fps[False, 1]:.2f}x folder only, '
              f'{fps[True, 2] / fps[True, 1]:.2f}x with bag')
        print('  frames/CPU-s is the throughput of one fully available core; two free cores give about twice that.')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
