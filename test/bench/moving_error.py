"""Measurement (issue 17 §3): where the moving objects' depth error is, per motion against the camera's travel and
per distance, for several depth models in one run (the first is the baseline, e.g. stage 1).

    .venv/bin/python test/bench/moving_error.py --model stage1=runs/X/scene/scene.onnx \
        --model final=runs/X/final/final.onnx [--model given=dynadepth_ros/models/dynadepth.onnx] \
        [--split test] [--every 2] [--data-preset cpu-small]

For every --every-th frame of the split of a synthetic dataset (the preset's data folder, made if missing) each
model's depth at the network resolution (ONNX Runtime) against the generator's depth, on the pixels of its moving
objects (valid GT in eval.min_depth..max_depth). Per motion class (dynadepth_ros.object_scale.motion_class) and
per range of the object's median GT depth: the objects, their share of the class's pixels, the baseline's share
of the class's summed pixel error, then per model the pixel AbsRel and the median over objects of the per-object
median prediction / GT. `compare` averages AbsRel per frame; this sums pixels, so a few large near objects show
as what they are: most of the pixels and most of the error. No training: about a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

RANGES = ((0, 5), (5, 10), (10, 20), (20, 40), (40, 80))


def model_paths(values: list[str]) -> dict[str, Path]:
    """{label: path} of --model LABEL=PATH arguments (in order; the first is the baseline); exits with one line
    for a malformed one or a missing file."""
    models = {}
    for m in values:
        label, sep, path = m.partition('=')
        if not sep or not Path(path).is_file():
            raise SystemExit(f'--model {m!r}: expected LABEL=PATH to an ONNX file')
        models[label] = Path(path)
    return models


def main(argv=None) -> int:
    import onnxruntime as ort

    from dynadepth_ros.object_scale import MOTIONS, motion_class
    from motion_cue import split_frames
    from training.config import load_config
    from training.data import build_dataset, prepare_data
    from training.evaluate import frame_instances, travel_direction

    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', action='append', required=True, metavar='LABEL=PATH',
                    help='a depth ONNX model (scene.onnx, final.onnx, a bundled one); the first is the baseline')
    ap.add_argument('--split', default='test')
    ap.add_argument('--every', type=int, default=2, help='every n-th frame of the split')
    ap.add_argument('--data-preset', default='cpu-small', help='the preset whose synthetic data is scored')
    args = ap.parse_args(argv)
    models = {label: ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
              for label, path in model_paths(args.model).items()}

    cfg = load_config(preset=args.data_preset)
    if cfg.data.source != 'synthetic':
        raise SystemExit(f'{args.data_preset}: this measurement needs the synthetic generator\'s data')
    prepare_data(cfg.data)
    ds = build_dataset(cfg.data, args.split, augment=False)
    H, W = cfg.data.height, cfg.data.width
    for label, sess in models.items():
        if tuple(sess.get_inputs()[0].shape[2:]) != (H, W):
            raise SystemExit(f'{label}: takes {sess.get_inputs()[0].shape[2:]} images, the preset\'s network is {H}x{W}')
    lo, hi = cfg.eval.min_depth, cfg.eval.max_depth
    rows = []           # (motion, pixels, median GT, [summed AbsRel per model], [median ratio per model])
    frames = 0
    for seq, t, item, raw in split_frames(ds, args.every):
        gt, ids, moving = item['gt_depth'].numpy()[0], item['mask'].numpy(), item['moving'].numpy().astype(bool)
        if not (gt > 0).any():
            continue
        frames += 1
        depths = [s.run(None, {s.get_inputs()[0].name: raw[1:2]})[0][0, 0] for s in models.values()]
        ego = travel_direction(seq, t, cfg.data.frame_gap)
        for rec in frame_instances(seq, t) or []:
            m = (ids == int(rec['id'])) & moving & (gt > lo) & (gt < hi)
            if m.sum() < 5:
                continue
            g = gt[m]
            rows.append((motion_class(rec.get('velocity'), ego), int(m.sum()), float(np.median(g)),
                         [float((np.abs(d[m] - g) / g).sum()) for d in depths],
                         [float(np.median(d[m] / g)) for d in depths]))
    labels = list(models)
    print(f'{frames} {args.split} frames of {cfg.data.root}, every {args.every}; moving objects by motion and range '
          f'(median GT); baseline {labels[0]}')
    print('| motion | range | objects | share of pixels | share of baseline error | '
          + ' | '.join(f'{m} AbsRel' for m in labels) + ' | ' + ' | '.join(f'{m} pred/GT' for m in labels) + ' |')
    print('|---' * (5 + 2 * len(labels)) + '|')
    for motion in MOTIONS:
        cls = [r for r in rows if r[0] == motion]
        if not cls:
            continue
        px, err0 = sum(r[1] for r in cls), sum(r[3][0] for r in cls)
        for a, b in RANGES + ((0, hi),):
            grp = [r for r in cls if a <= r[2] < b]
            if not grp:
                continue
            p = sum(r[1] for r in grp)
            absrel = [sum(r[3][k] for r in grp) / p for k in range(len(labels))]
            ratio = [float(np.median([r[4][k] for r in grp])) for k in range(len(labels))]
            rng = 'all' if (a, b) == (0, hi) else f'{a}-{b} m'
            print(f'| {motion} | {rng} | {len(grp)} | {p / px:.2f} | {sum(r[3][0] for r in grp) / err0:.2f} | '
                  + ' | '.join(f'{x:.3f}' for x in absrel) + ' | ' + ' | '.join(f'{x:.2f}' for x in ratio) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
