"""`dynadepth-synth`: generate synthetic dynamic driving sequences (dataset folder + optional rosbag2)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..datasets.layout import SPLITS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='dynadepth-synth',
        description='Render synthetic driving sequences with exact depth, instance masks, poses and motion labels '
                    'into <out>/<split>/seq_NNNN (and a rosbag2 per sequence with --bag).')
    p.add_argument('--out', required=True, type=Path, help='dataset root directory')
    p.add_argument('--split', required=True, choices=SPLITS, help='which split to write')
    p.add_argument('--sequences', type=int, default=4, help='number of sequences (default 4)')
    p.add_argument('--frames', type=int, default=100, help='frames per sequence, 10 Hz (default 100)')
    p.add_argument('--height', type=int, default=192, help='image height in pixels (default 192)')
    p.add_argument('--width', type=int, default=640, help='image width in pixels (default 640)')
    p.add_argument('--seed', type=int, default=0, help='base seed; splits and sequences derive disjoint streams')
    p.add_argument('--bag', action='store_true', help='also write a rosbag2 per sequence at <sequence>/bag/')
    p.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='rosbag2 storage (default mcap)')
    p.add_argument('--noise', type=float, default=0.01,
                   help='std of Gaussian sensor noise in [0,1] intensity units (default 0.01; 0 = none)')
    p.add_argument('--lead-car-fraction', type=float, default=0.5,
                   help='fraction of sequences with a lead car within 30 m in every frame (default 0.5)')
    p.add_argument('--workers', type=int, default=None, help='worker processes (default: one per CPU)')
    p.add_argument('--force', action='store_true', help='regenerate sequences that are already up to date')
    p.add_argument('--overwrite', action='store_true',
                   help='replace a split generated with other parameters (without it such a rerun is refused, so '
                        'sequences of different parameters never mix in one split)')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .generate import generate_split
    t0 = time.perf_counter()
    try:
        paths = generate_split(args.out, args.split, args.sequences, args.frames, args.height, args.width, args.seed,
                               bag=args.bag, storage=args.storage, noise=args.noise,
                               lead_car_fraction=args.lead_car_fraction, workers=args.workers,
                               skip_existing=not args.force, overwrite=args.overwrite)
    except ValueError as e:
        print(f'dynadepth-synth: error: {e}', file=sys.stderr)
        return 2
    except OSError as e:
        print(f'dynadepth-synth: error: cannot write the dataset under {args.out}: {e}', file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    lead = sum(sum(json.loads((p / 'synth.json').read_text())['lead_frames']) for p in paths)
    total = len(paths) * args.frames
    print(f'{len(paths)} sequences x {args.frames} frames in {args.out / args.split} ({dt:.1f} s); '
          f'lead car within 30 m in {lead}/{total} frames')
    return 0


if __name__ == '__main__':
    sys.exit(main())
