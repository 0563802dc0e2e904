"""Measurement (issue 17 §2): which moving objects the seeds stage's optical motion cue finds, per motion against
the camera's travel, for several thresholds next to a baseline in one run.

    .venv/bin/python test/bench/motion_cue.py [--split val] [--every 2] \
        [--model dynadepth_ros/models/dynadepth_stage1.onnx] [--data-preset cpu-small] \
        [--variant sym=1.0:0] [--variant towards=1.0:0.4] [--variant floating=1.0:0:0.5] ...

Each variant is LABEL=NEG:POS[:FLOAT]: masks.seeds.optical_log_ratio NEG (the side of traffic that travels with the
camera), optical_log_ratio_towards POS (oncoming; 0 = NEG) and floating_log_ratio FLOAT (0 or left out = off;
on stage 1's normals as the ground: this bench has no ground network). For every --every-th triplet centre frame of the split
of a synthetic dataset (the preset's data folder, made if missing): depth from a stage-1 ONNX model (default:
the bundled one; any scene.onnx of a run), the camera motion from the data's own poses (the seeds stage uses
stage 1's pose network: this isolates the cue from the pose), the ground from the depth's normals
(training.ground.ground_mask, as the ground stage's noisy target), then the seeds stage's own functions:
DIS optical flow, rigid flow, flow_disagreement, moving_pixels_optical, group_moving_regions, seed_masks.
Scored against the generator's masks and instance velocities: per motion class (same / oncoming / crossing,
dynadepth_ros.object_scale.motion_class; static = the non-moving, non-ground pixels) the share of pixels the
cue flags and the share inside a seed; and the seeds' pixel recall / precision and object recall / precision
at IoU >= 0.5 (training.masks.evaluate.MaskScores). No training: a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def split_frames(ds, every: int):
    """(sequence, frame index, sample, frames_raw [3,3,H,W] numpy) of every `every`-th triplet of a dataset."""
    for i in range(0, len(ds), every):
        si, t = ds.samples[i]
        item = ds[i]
        yield ds.sequences[si], t, item, item['frames_raw'].numpy()


def main(argv=None) -> int:
    import onnxruntime as ort

    from dynadepth_ros.object_scale import MOTIONS, motion_class
    from training.config import load_config
    from training.data import build_dataset, prepare_data
    from training.evaluate import frame_instances, travel_direction
    from training.ground import ground_mask, ground_plane
    from training.masks.evaluate import MaskScores
    from training.masks.seeds import (floating_pixels, flow_disagreement, group_moving_regions, moving_pixels_optical,
                                      optical_flow, rigid_flow, seed_masks)

    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--split', default='val')
    ap.add_argument('--every', type=int, default=2, help='every n-th triplet centre frame')
    ap.add_argument('--model', type=Path, default=REPO / 'dynadepth_ros' / 'models' / 'dynadepth_stage1.onnx')
    ap.add_argument('--data-preset', default='cpu-small', help='the preset whose synthetic data is scored')
    ap.add_argument('--data-root', type=Path, default=None,
                    help='score this synthetic dataset folder instead (same layout and resolution as the preset\'s, '
                         'e.g. a test split from dynadepth-synth --seed S, as test/bench/fresh_world.py renders)')
    ap.add_argument('--variant', action='append', metavar='LABEL=NEG:POS[:FLOAT]',
                    help='default: symmetric=1.0:0 (the baseline, the seeds stage\'s default) and towards=1.0:0.4')
    args = ap.parse_args(argv)
    variants = {}
    for v in args.variant or ['symmetric=1.0:0', 'towards=1.0:0.4']:
        label, _, th = v.partition('=')
        neg, pos, flt = (th.split(':') + ['0', '0'])[:3]
        variants[label] = (float(neg), float(pos or 0), float(flt or 0))

    overrides = ['objects.masks=learned'] + ([f'data.root={args.data_root}'] if args.data_root else [])
    cfg = load_config(preset=args.data_preset, overrides=overrides)
    if cfg.data.source != 'synthetic':
        raise SystemExit(f'{args.data_preset}: this measurement needs the synthetic generator\'s data')
    if args.data_root is None:
        prepare_data(cfg.data)
    ds = build_dataset(cfg.data, args.split, augment=False)
    sess = ort.InferenceSession(str(args.model), providers=['CPUExecutionProvider'])
    H, W = cfg.data.height, cfg.data.width
    shape = sess.get_inputs()[0].shape
    if tuple(shape[2:]) != (H, W):
        raise SystemExit(f'{args.model} takes {shape[3]}x{shape[2]} images, the preset\'s network size is {W}x{H}')
    classes = list(MOTIONS) + ['static']
    counts = {k: {c: np.zeros(3) for c in classes} for k in variants}      # pixels, flagged, in a seed
    scores = {k: MaskScores() for k in variants}
    frames = 0
    for seq, t, item, raw in split_frames(ds, args.every):
        depth = sess.run(None, {sess.get_inputs()[0].name: raw[1:2]})[0][0, 0]
        K, poses = item['K'].numpy(), item['odom_pose'].numpy()
        rgb = [(f.transpose(1, 2, 0) * 255).round().astype(np.uint8) for f in raw]
        gt, moving_gt = item['mask'].numpy(), item['moving'].numpy()
        ground = ground_mask(depth, K, cfg.masks.ground.angle_deg, cfg.masks.ground.step_px)
        observed = [optical_flow(rgb[1], rgb[0]), optical_flow(rgb[1], rgb[2])]
        rigid = [rigid_flow(depth, K, poses[0]), rigid_flow(depth, K, poses[1])]
        cue = flow_disagreement(observed, rigid, cfg.masks.seeds.optical_min_rigid_px)
        residual = np.concatenate([np.nan_to_num(o - r) for o, r in zip(observed, rigid)])
        ego = travel_direction(seq, t, cfg.data.frame_gap)
        moving_ids = set(np.unique(gt[moving_gt]).tolist()) - {0}
        motions = {int(r['id']): motion_class(r.get('velocity'), ego) for r in frame_instances(seq, t) or []
                   if int(r['id']) in moving_ids}
        regions = {c: np.isin(gt, [g for g, m in motions.items() if m == c]) for c in MOTIONS}
        regions['static'] = ~moving_gt & ~ground
        plane = ground_plane(depth, K, ground)
        for label, (neg, pos, flt) in variants.items():
            sc = dataclasses.replace(cfg.masks.seeds, optical_log_ratio=neg, optical_log_ratio_towards=pos,
                                     floating_log_ratio=flt)
            moving = moving_pixels_optical(cue, ground, sc)
            if flt > 0:
                moving |= floating_pixels(depth, ground, K, plane, flt, sc.floating_rows)
            seeds = seed_masks(group_moving_regions(moving, depth, residual, sc), moving, ground, sc)
            scores[label].add(seeds, gt, moving_ids, motions=motions)
            for c, m in regions.items():
                counts[label][c] += [m.sum(), (m & moving).sum(), (m & (seeds > 0)).sum()]
        frames += 1

    print(f'{frames} {args.split} frames of {cfg.data.root}; depth {args.model.name}; camera motion from the data\'s '
          f'poses; flagged / in a seed, share of each class\'s pixels')
    print('| variant (neg:pos:floating) | ' + ' | '.join(classes) + ' | seeds pixel recall / precision | moving > 2 % '
          'recall / precision | moving > 0.5 % recall / precision |')
    print('|---' * (len(classes) + 4) + '|')
    for label, (neg, pos, flt) in variants.items():
        r = scores[label].summary()
        b = r['by_size']

        def f(v):
            return '-' if v is None else f'{v:.3f}'
        cells = [f'{c[1] / c[0]:.3f} / {c[2] / c[0]:.3f}' if c[0] else '-' for c in counts[label].values()]
        print(f'| {label} ({neg:g}:{pos:g}:{flt:g}) | ' + ' | '.join(cells) +
              f' | {f(r["pixel_recall_moving"])} / {f(r["pixel_precision_moving"])}'
              f' | {f(b[">= 2 %"]["recall_moving"])} / {f(b[">= 2 %"]["precision_moving"])}'
              f' | {f(b[">= 0.5 %"]["recall_moving"])} / {f(b[">= 0.5 %"]["precision_moving"])} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
