"""Measurement (issue 17): how much of each kind of object the pseudo labels (stage 3) cover and how near their
depth is to the truth, per motion against the camera's travel and per range, next to the depth models' own.

    .venv/bin/python test/bench/label_quality.py --run-dir runs/X [--split train] [--every 3] \
        [--model stage1=runs/X/scene/scene.onnx --model final=runs/X/final/final.onnx]
    .venv/bin/python test/bench/label_quality.py --run-dir runs/robot --source /work/robot-src/synth   # run --bags

For a run on synthetic data (the generator's depth, masks, moving flags and instance velocities; the run's own
stage configs say where the data is): every --every-th triplet of the split whose pseudo label
(dsa/pseudo_labels/<split>/<seq>/<frame>.npz) exists, at the network resolution. Per object of the generator
(moving ones by `dynadepth_ros.object_scale.motion_class`, the rest `static`) and range of its median GT depth:

    objects        how many (at least 20 valid pixels)
    px labelled    share of their pixels that carry a dynamic pseudo label
    labelled       objects with at least 30 % of their pixels labelled dynamic
    label / GT     median over those objects of the per-object median pseudo depth / GT on the labelled pixels
    <model> / GT   median over all the objects of the per-object median prediction / GT (--model, ONNX Runtime;
                   default: the run's scene.onnx and final.onnx where they exist), then over the labelled ones
                   only (on their labelled pixels): whether a network learnt the labels where it was given them

plus the share of the background's pixels (no generator object) labelled dynamic. A `run --bags` run on synthetic
recordings rewritten as a robot records them (no masks or depth in them) takes `--source`, the generator output
they were made from (named as test/bench/robot_masks.py says): the GT comes from there, resized (nearest) to the
network resolution as the dataset does. Train is the split the labels
teach; a label far from 1 or a class with few labelled pixels is what the final network cannot learn from.
A minute or two on 2 cores for every 3rd train frame of cpu-small.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

RANGES = ((0, 5), (5, 10), (10, 20), (20, 40), (40, 1e9))
MIN_PIXELS = 20
LABELLED = 0.3


def range_name(depth: float) -> str:
    for a, b in RANGES:
        if a <= depth < b:
            return f'{a}-{b} m' if b < 1e9 else f'> {a} m'
    return f'> {RANGES[-1][0]} m'


def quartiles(values: list[float]) -> str:
    if not values:
        return '-'
    return f'{np.median(values):.2f} [{np.percentile(values, 25):.2f}-{np.percentile(values, 75):.2f}]'


def truth(seq, t: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(GT depth, instance ids, moving) [H,W] of frame t of a generator sequence, resized as the dataset does."""
    from training.data.triplets import Layer, transform_layer

    ids = transform_layer(Layer(np.asarray(seq.instance_mask(t), np.int32), 'mask'), height, width, False)
    gt = transform_layer(Layer(np.asarray(seq.gt_depth(t), np.float32), 'depth'), height, width, False)
    return gt, ids, np.isin(ids, sorted(seq.moving_ids(t) or ()))


def main(argv=None) -> int:
    import onnxruntime as ort

    from dynadepth_ros.datasets.synthetic import SyntheticSequence
    from robot_masks import source_sequence

    from dynadepth_ros.object_scale import MOTIONS, motion_class
    from moving_error import model_paths
    from motion_cue import split_frames
    from training.config import load_config
    from training.data import build_dataset
    from training.evaluate import frame_instances, travel_direction

    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--run-dir', type=Path, required=True)
    ap.add_argument('--split', default='train')
    ap.add_argument('--every', type=int, default=3)
    ap.add_argument('--model', action='append', metavar='LABEL=PATH', help='depth ONNX models to put beside the labels')
    ap.add_argument('--source', type=Path, default=None,
                    help='for a run --bags run on rewritten synthetic recordings: the generator output they came from')
    args = ap.parse_args(argv)
    labels_root = args.run_dir / 'dsa' / 'pseudo_labels' / args.split
    if not labels_root.is_dir():
        raise SystemExit(f'{labels_root}: no pseudo labels (the dsa stage of {args.run_dir} has not run on {args.split})')
    if args.model:
        paths = model_paths(args.model)
    else:
        paths = {k: p for k, p in (('stage1', args.run_dir / 'scene' / 'scene.onnx'),
                                   ('final', args.run_dir / 'final' / 'final.onnx')) if p.is_file()}
    models = {k: ort.InferenceSession(str(p), providers=['CPUExecutionProvider']) for k, p in paths.items()}
    cfg = load_config(config_file=args.run_dir / 'dsa' / 'config.yaml')
    if cfg.data.source != 'synthetic' and args.source is None:
        raise SystemExit(f'{args.run_dir}: this measurement needs the synthetic generator\'s data, the run has '
                         f'{cfg.data.source} (recordings rewritten from the generator\'s: give --source)')
    ds = build_dataset(cfg.data, args.split, augment=False)
    lo, hi = cfg.eval.min_depth, cfg.eval.max_depth
    groups: dict[tuple[str, str], dict] = {}
    background = [0, 0]
    frames = 0
    for seq, t, item, raw in split_frames(ds, args.every):
        f = labels_root / Path(seq.path).name / f'{t:06d}.npz'
        if not f.is_file():
            continue
        with np.load(f) as z:
            label, dynamic = z['depth'], z['dynamic'].astype(bool)
        if args.source is not None:
            seq = SyntheticSequence(source_sequence(Path(seq.path).name, args.source))
            gt, ids, moving = truth(seq, t, *raw.shape[-2:])
        else:
            gt, ids, moving = item['gt_depth'].numpy()[0], item['mask'].numpy(), item['moving'].numpy().astype(bool)
        valid = (gt > lo) & (gt < hi)
        if not valid.any():
            continue
        frames += 1
        depths = {k: s.run(None, {s.get_inputs()[0].name: raw[1:2]})[0][0, 0] for k, s in models.items()}
        ego = travel_direction(seq, t, cfg.data.frame_gap)
        bg = valid & (ids == 0)
        background[0] += int(bg.sum())
        background[1] += int((bg & dynamic).sum())
        for rec in frame_instances(seq, t) or []:
            m = (ids == int(rec['id'])) & valid
            if m.sum() < MIN_PIXELS:
                continue
            is_moving = moving[m].mean() > 0.5
            motion = motion_class(rec.get('velocity'), ego) if is_moving else 'static'
            g = gt[m]
            grp = groups.setdefault((motion, range_name(float(np.median(g)))),
                                    {'objects': 0, 'px': 0, 'labelled_px': 0, 'label': [],
                                     **{k: [] for k in models}, **{k + '@labelled': [] for k in models}})
            lab = m & dynamic
            grp['objects'] += 1
            grp['px'] += int(m.sum())
            grp['labelled_px'] += int(lab.sum())
            if lab.sum() >= LABELLED * m.sum():
                grp['label'].append(float(np.median(label[lab] / gt[lab])))
                for k, d in depths.items():
                    grp[k + '@labelled'].append(float(np.median(d[lab] / gt[lab])))
            for k, d in depths.items():
                grp[k].append(float(np.median(d[m] / g)))
    if not frames:
        raise SystemExit(f'no {args.split} frame of {args.run_dir} has a pseudo label and GT depth')
    print(f'{args.run_dir}: {frames} {args.split} frames (every {args.every}); per object median ratios [p25-p75]')
    print('| motion | range | objects | px labelled | labelled | label / GT | ' +
          ' | '.join(f'{k} / GT' for k in models) + ' | ' + ' | '.join(f'{k} / GT, labelled' for k in models) + ' |')
    print('|---' * (6 + 2 * len(models)) + '|')
    for motion in (*MOTIONS, 'static'):
        for rng in [range_name(a) for a, _ in RANGES]:
            grp = groups.get((motion, rng))
            if grp is None:
                continue
            print(f'| {motion} | {rng} | {grp["objects"]} | {grp["labelled_px"] / grp["px"]:.3f} | '
                  f'{len(grp["label"])} | {quartiles(grp["label"])} | ' +
                  ' | '.join(quartiles(grp[k]) for k in models) + ' | ' +
                  ' | '.join(quartiles(grp[k + '@labelled']) for k in models) + ' |')
    print(f'background pixels labelled dynamic: {background[1] / max(1, background[0]):.4f} of {background[0]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
