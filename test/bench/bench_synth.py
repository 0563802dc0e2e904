"""Benchmark of the synthetic generator (not collected by pytest).

    .venv/bin/python test/bench/bench_synth.py [--height 192 --width 640 --sequences 4 --frames 40]

Prints frames/s of generate_split with 1 and 2 worker processes, with and without --bag (lidar +
rosbag2), next to a baseline measured in the same run: the cost of only writing already-rendered
frames to the dataset layout (PNG/npy/json), i.e. the floor any generator pays. Also prints the
load average, since the machine is shared.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _load() -> str:
    try:
        return ' '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError:
        return 'n/a'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--height', type=int, default=192)
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--sequences', type=int, default=4)
    ap.add_argument('--frames', type=int, default=40)
    args = ap.parse_args()

    from dynadepth_ros.dataset_layout import Calib, SequenceWriter
    from dynadepth_ros.synth import generate_split
    from dynadepth_ros.synth.generate import SequenceRenderer, SynthParams, sequence_seed

    n_frames = args.sequences * args.frames
    print(f'synthetic generator benchmark: {args.sequences} sequences x {args.frames} frames at '
          f'{args.height}x{args.width}; {os.cpu_count()} CPUs; load average before: {_load()}')
    tmp = Path(tempfile.mkdtemp(prefix='bench_synth_'))
    try:
        # baseline: write pre-rendered frames only (PNG rgb + PNG mask + npy depth + json per frame)
        p = SynthParams(frames=args.frames, height=args.height, width=args.width)
        r = SequenceRenderer(sequence_seed(0, 'train', 0), p, True)
        frames = [r.render(i)[0] for i in range(min(args.frames, 10))]
        t0 = time.perf_counter()
        w = SequenceWriter(tmp / 'base', 'train', 'seq', Calib(r.K, args.height, args.width))
        for i in range(args.frames):
            f = frames[i % len(frames)]
            f.index = i
            w.write(f)
        w.close()
        dt_write = time.perf_counter() - t0
        # render only, one process
        t0 = time.perf_counter()
        for i in range(min(args.frames, 20)):
            r.render(i)
        dt_render = (time.perf_counter() - t0) / min(args.frames, 20)
        print(f'  baseline, writing rendered frames only (1 process): {args.frames / dt_write:7.1f} frames/s '
              f'({1000 * dt_write / args.frames:.1f} ms/frame)')
        print(f'  rendering only (1 process):                         {1 / dt_render:7.1f} frames/s '
              f'({1000 * dt_render:.1f} ms/frame)')
        results = {}
        for bag in (False, True):
            for workers in (1, 2):
                out = tmp / f'gen_{bag}_{workers}'
                t0 = time.perf_counter()
                generate_split(out, 'train', args.sequences, args.frames, args.height, args.width, seed=1, bag=bag,
                               workers=workers, progress=False)
                dt = time.perf_counter() - t0
                results[(bag, workers)] = n_frames / dt
                label = f'generate_split{" --bag" if bag else "      "}, {workers} worker{"s" if workers > 1 else " "}'
                print(f'  {label}:                 {n_frames / dt:7.1f} frames/s  (load avg {_load()})')
                shutil.rmtree(out)
        print(f'  speed-up 2 workers vs 1: {results[(False, 2)] / results[(False, 1)]:.2f}x (folder), '
              f'{results[(True, 2)] / results[(True, 1)]:.2f}x (with bag)')
        print(f'  load average after: {_load()}')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    np.seterr(all='ignore')
    main()
