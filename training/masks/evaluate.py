"""Learned masks against a dataset's own masks (`python -m training evaluate-masks`): how many of the moving
objects the seeds or the learned instance masks find, and how many of their masks are objects.

Never used by the stages: it needs the data's masks and moving flags (the synthetic generator's), which a
recording without masks does not have. Per frame (triplet centre frames of the split that the mask stage
wrote, network resolution), a learned mask and a data instance match when their IoU reaches `iou` (0.5;
above 0.5 a match is one-to-one). By size bins of the share of the image an object covers (the data
instance's area for recall, the learned mask's for precision):

    recall (moving)      moving data instances matched / moving data instances
    recall (static)      static data instances matched / static data instances (stage 3 learns from them)
    precision (moving)   learned masks matched to a moving instance / learned masks
    precision (object)   learned masks matched to any data instance / learned masks
    pixel recall / precision   moving pixels covered by any learned mask / moving pixels, and learned
                         pixels on moving instances / learned pixels
    pixel recall by motion     the same per motion against the camera's direction of travel (same / oncoming
                         / crossing, dynadepth_ros.object_scale.motion_class), where the data has the
                         instances' velocities (the synthetic generator's instances/<frame>.json)

Stage 2 labels only instances of at least objects.labelling.min_area_fraction of the image (0.5 %), so the
bins from 0.5 % on are the ones the method uses. Writes <mask stage dir>/eval_<split>.json and .md.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dynadepth_ros.atomic_files import write_json_atomic, write_text_atomic
from dynadepth_ros.camera import resize_nearest
from training.artifacts import now_iso

SIZE_BINS = ((0.0, 0.001), (0.001, 0.005), (0.005, 0.02), (0.02, 1.01))


def bin_name(b) -> str:
    lo, hi = b
    return f'>= {100 * lo:g} %' if hi > 1 else f'{100 * lo:g}-{100 * hi:g} %'


def size_bin(share: float) -> str:
    for b in SIZE_BINS:
        if b[0] <= share < b[1]:
            return bin_name(b)
    return bin_name(SIZE_BINS[-1])


def iou_matrix(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pred ids [P], gt ids [G], IoU [P,G], pred areas [P], gt areas [G]) of two id maps [H,W] (0 = none)."""
    p_ids = np.unique(pred[pred > 0])
    g_ids = np.unique(gt[gt > 0])
    p_idx = np.searchsorted(p_ids, pred.ravel()) * (pred.ravel() > 0) + (pred.ravel() > 0)
    g_idx = np.searchsorted(g_ids, gt.ravel()) * (gt.ravel() > 0) + (gt.ravel() > 0)
    joint = np.bincount(p_idx * (len(g_ids) + 1) + g_idx, minlength=(len(p_ids) + 1) * (len(g_ids) + 1))
    joint = joint.reshape(len(p_ids) + 1, len(g_ids) + 1)
    inter = joint[1:, 1:].astype(np.float64)
    pa, ga = joint[1:, :].sum(1), joint[:, 1:].sum(0)
    union = pa[:, None] + ga[None, :] - inter
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = np.where(union > 0, inter / union, 0.0)
    return p_ids, g_ids, iou, pa, ga


class MaskScores:
    """Counts of one split, accumulated frame by frame."""

    def __init__(self):
        self.n = {k: {bin_name(b): 0 for b in SIZE_BINS} for k in ('moving', 'moving_hit', 'static', 'static_hit',
                                                                    'masks', 'masks_moving', 'masks_object')}
        self.pixels = {'moving': 0, 'moving_covered': 0, 'learned': 0, 'learned_on_moving': 0}
        self.by_motion: dict[str, list[int]] = {}       # motion -> [moving pixels, covered]
        self.frames = 0

    def add(self, pred: np.ndarray, gt: np.ndarray, moving: set[int], iou: float = 0.5,
            motions: dict[int, str] | None = None) -> None:
        """One frame: learned ids `pred` and the data's ids `gt` [H,W], the moving data ids, and optionally
        each moving id's motion ('same' / 'oncoming' / 'crossing') for the pixel recall by motion."""
        total = pred.size
        for g, motion in (motions or {}).items():
            m = gt == g
            row = self.by_motion.setdefault(motion, [0, 0])
            row[0] += int(m.sum())
            row[1] += int((m & (pred > 0)).sum())
        p_ids, g_ids, m, pa, ga = iou_matrix(pred, gt)
        hit = m >= iou
        for j, g in enumerate(g_ids.tolist()):
            kind = 'moving' if g in moving else 'static'
            b = size_bin(ga[j] / total)
            self.n[kind][b] += 1
            self.n[kind + '_hit'][b] += bool(hit[:, j].any())
        for i in range(len(p_ids)):
            b = size_bin(pa[i] / total)
            self.n['masks'][b] += 1
            self.n['masks_object'][b] += bool(hit[i].any())
            self.n['masks_moving'][b] += bool(any(hit[i, j] and g in moving for j, g in enumerate(g_ids.tolist())))
        gm = np.isin(gt, sorted(moving)) if moving else np.zeros(gt.shape, bool)
        self.pixels['moving'] += int(gm.sum())
        self.pixels['moving_covered'] += int((gm & (pred > 0)).sum())
        self.pixels['learned'] += int((pred > 0).sum())
        self.pixels['learned_on_moving'] += int((gm & (pred > 0)).sum())
        self.frames += 1

    def summary(self) -> dict:
        def ratio(a, b):
            return a / b if b else None

        bins = [bin_name(b) for b in SIZE_BINS]
        rows = {}
        for b in bins + ['all', '>= 0.5 %']:
            sel = bins if b == 'all' else [bin_name(x) for x in SIZE_BINS if x[0] >= 0.005] if b == '>= 0.5 %' else [b]
            s = {k: sum(v[x] for x in sel) for k, v in self.n.items()}
            rows[b] = {'moving': s['moving'], 'recall_moving': ratio(s['moving_hit'], s['moving']),
                       'static': s['static'], 'recall_static': ratio(s['static_hit'], s['static']),
                       'masks': s['masks'], 'precision_moving': ratio(s['masks_moving'], s['masks']),
                       'precision_object': ratio(s['masks_object'], s['masks'])}
        p = self.pixels
        return {'frames': self.frames, 'by_size': rows,
                'pixel_recall_by_motion': {k: {'pixels': n, 'recall': ratio(c, n)}
                                           for k, (n, c) in sorted(self.by_motion.items())},
                'pixel_recall_moving': ratio(p['moving_covered'], p['moving']),
                'pixel_precision_moving': ratio(p['learned_on_moving'], p['learned'])}


def score_frame(scores: MaskScores, pred: np.ndarray, seq, t: int, iou: float, frame_gap: int) -> bool:
    """Add one frame's learned id map `pred` [H,W] to `scores` against frame t of `seq` (a dataset sequence with
    instance masks and moving flags, at any resolution); False (nothing added) when the frame has neither."""
    from dynadepth_ros.object_scale import motion_class
    from training.evaluate import frame_instances, travel_direction

    gt, moving = seq.instance_mask(t), seq.moving_ids(t)
    if gt is None or moving is None:
        return False
    records = frame_instances(seq, t)
    motions = None
    if records is not None:
        ego = travel_direction(seq, t, frame_gap)
        motions = {int(r['id']): motion_class(r.get('velocity'), ego) for r in records if int(r['id']) in moving}
    scores.add(pred, resize_nearest(np.asarray(gt, np.int32), *pred.shape), set(moving), iou, motions)
    return True


def evaluate_masks(run_dir: str | os.PathLike, split: str = 'val', which: str = 'instances', iou: float = 0.5,
                   progress: bool = True) -> dict:
    """Scores of the `which` masks (instances | seeds) of a run on `split`; writes eval_<split>.json/.md beside them."""
    from training.config import load_config
    from training.data import build_dataset
    from training.stages import stage_dir
    from training.stages.outputs import LabelMaps

    if which not in ('instances', 'seeds'):
        raise ValueError(f"--masks must be instances or seeds, got {which!r}")
    run_dir = Path(run_dir)
    where = stage_dir(run_dir, which)
    if not (where / 'manifest.json').is_file():
        raise FileNotFoundError(f'{where} has no manifest.json: the {which} stage has not finished in {run_dir} '
                                f'(python -m training run ... --set objects.masks=learned)')
    cfg = load_config(config_file=where / 'config.yaml')
    ds = build_dataset(cfg.data, split, augment=False)
    maps = LabelMaps(where)
    scores = MaskScores()
    missing_gt = 0
    for idx in tqdm(range(len(ds)), desc=f'evaluate {which} on {split}', disable=not progress, mininterval=1.0):
        seq_name, t = ds.sample_location(idx)
        if maps.exists(split, seq_name, t):
            missing_gt += not score_frame(scores, maps.frame(split, seq_name, t), ds.sequences[ds.samples[idx][0]], t,
                                          iou, cfg.data.frame_gap)
    if not scores.frames:
        raise ValueError(f'no {split} frame has both {which} masks and the data\'s own masks with moving flags '
                         f'({missing_gt} without): this measurement needs data such as the synthetic generator\'s')
    report = {'split': split, 'masks': which, 'iou': iou, 'created': now_iso(), 'run_dir': str(run_dir.resolve()),
              'method': cfg.masks.seeds.method, **scores.summary()}
    write_json_atomic(where / f'eval_{split}.json', report)
    write_text_atomic(where / f'eval_{split}.md', masks_markdown(report))
    return report


def masks_markdown(r: dict) -> str:
    def f(v):
        return '-' if v is None else f'{v:.3f}'

    lines = [f'# {r["masks"]} masks vs the data\'s own masks, {r["split"]} split', '',
             f'{r["frames"]} frames; match at IoU >= {r["iou"]}; seeds grouped by {r["method"]}. Size = share of the '
             f'image (the data instance\'s for recall, the learned mask\'s for precision).', '',
             '| size | moving | recall moving | static | recall static | masks | precision moving | precision object |',
             '|---|---|---|---|---|---|---|---|']
    for b, v in r['by_size'].items():
        lines.append(f'| {b} | {v["moving"]} | {f(v["recall_moving"])} | {v["static"]} | {f(v["recall_static"])} | '
                     f'{v["masks"]} | {f(v["precision_moving"])} | {f(v["precision_object"])} |')
    lines += ['', f'Pixels: {f(r["pixel_recall_moving"])} of the moving objects\' pixels lie in a learned mask; '
                  f'{f(r["pixel_precision_moving"])} of the learned masks\' pixels are on moving objects.']
    by_motion = r.get('pixel_recall_by_motion') or {}
    if by_motion:
        lines += ['', 'Moving pixels in a learned mask, by motion against the camera\'s direction of travel: ' +
                  ', '.join(f'{k} {f(v["recall"])} (of {v["pixels"]} px)' for k, v in by_motion.items()) + '.']
    lines.append('')
    return '\n'.join(lines)
