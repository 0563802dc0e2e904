"""Per-object scale: is each object seen at the scale of the scene around it?

AbsRel over dynamic pixels mixes two things: how far off the typical moving object is, and how
many are off. This module measures the first directly. For every instance of a frame with enough
valid ground-truth pixels, the object's **scale** is the median over its pixels of prediction / GT
(1.0 = right, 1.3 = seen 30 % farther). Objects are grouped

    static          instances not flagged as moving (parked cars, pedestrians standing)
    moving          instances flagged as moving, split further by motion: same (travelling within
                    45° of the ego's direction), oncoming (within 45° of the opposite), crossing
                    (the rest); the ego direction comes from the poses
    distance        static and moving objects by their median GT depth in DISTANCE_BINS (metres)

and each group gets the median of its objects' scales, the quartiles (the spread), and the
median |log scale| (how far off the typical object is, either way). The ratio of the moving
median to the static median is what the method is about: a model that sees moving objects at the
scene's scale has it near 1 whatever its global scale. A self-supervised network's scale drifts
with distance (near objects too far, distant ones too near), and moving objects are not spread
over distance like static ones, so the ratio is also given per distance bin: moving against
static objects at the same range.

Numpy only; used by `python -m training compare` and by the demo's model comparison.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

MIN_PIXELS = 20                     # valid GT pixels an object needs to get a scale
SAME_DIRECTION_DEG = 45.0
MOTIONS = ('same', 'oncoming', 'crossing')
DISTANCE_BINS = ((0.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, math.inf))


def distance_bin(depth_m: float) -> str:
    for lo, hi in DISTANCE_BINS:
        if lo <= depth_m < hi:
            return f'{lo:g}-{hi:g} m' if math.isfinite(hi) else f'>{lo:g} m'
    return f'>{DISTANCE_BINS[-1][0]:g} m'


def distance_bin_names() -> list[str]:
    return [distance_bin(lo) for lo, _ in DISTANCE_BINS]


def ego_direction(poses, i: int, gap: int = 1) -> np.ndarray | None:
    """World direction of travel at frame i from camera-to-world poses [N,4,4] around it (the optical
    axis when standing still; None without poses)."""
    if poses is None or len(poses) == 0:
        return None
    n = len(poses)
    a, b = np.asarray(poses[max(0, i - gap)]), np.asarray(poses[min(n - 1, i + gap)])
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    d = b[:3, 3] - a[:3, 3]
    return d if np.linalg.norm(d) >= 1e-6 else np.asarray(poses[i])[:3, 2]


def motion_class(velocity, ego_direction) -> str:
    """'same' / 'oncoming' / 'crossing' for a moving object's world velocity against the ego's world
    direction of travel; 'crossing' when either is unknown or zero (no direction to compare)."""
    v = np.asarray(velocity if velocity is not None else (0, 0, 0), np.float64)[:3]
    if ego_direction is None:
        return 'crossing'
    e = np.asarray(ego_direction, np.float64)[:3]
    nv, ne = float(np.linalg.norm(v)), float(np.linalg.norm(e))
    if nv < 1e-6 or ne < 1e-9:
        return 'crossing'
    cos = float(v @ e) / (nv * ne)
    lim = math.cos(math.radians(SAME_DIRECTION_DEG))
    return 'same' if cos >= lim else 'oncoming' if cos <= -lim else 'crossing'


def object_scales(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, instances: Iterable[dict],
                  ego_direction=None, min_depth: float = 1e-3, max_depth: float = 80.0,
                  min_pixels: int = MIN_PIXELS) -> list[dict]:
    """One record per instance of the frame with at least `min_pixels` valid pixels:
    {id, class, moving, motion ('static' or a MOTIONS entry), distance (median GT, m), scale
    (median pred/GT), pixels}. gt, pred: float [H,W] metres (0/NaN = invalid); mask: int [H,W]
    instance ids at the same resolution; instances: dicts with id, moving, velocity, class."""
    gt = np.asarray(gt, np.float32)
    pred = np.asarray(pred, np.float32)
    if gt.shape != pred.shape or gt.shape != np.shape(mask):
        raise ValueError(f'gt {gt.shape}, prediction {pred.shape} and mask {np.shape(mask)} must have one shape')
    valid = np.isfinite(gt) & np.isfinite(pred) & (gt > min_depth) & (gt < max_depth) & (pred > 0)
    out = []
    for inst in instances:
        iid = int(inst['id'])
        sel = valid & (mask == iid)
        n = int(sel.sum())
        if iid <= 0 or n < min_pixels:
            continue
        moving = bool(inst.get('moving'))
        out.append({'id': iid, 'class': str(inst.get('class', '')), 'moving': moving,
                    'motion': motion_class(inst.get('velocity'), ego_direction) if moving else 'static',
                    'distance': float(np.median(gt[sel])), 'scale': float(np.median(pred[sel] / gt[sel])),
                    'pixels': n})
    return out


def scale_stats(scales) -> dict | None:
    """{objects, median, p25, p75, abs_log} of a list of per-object scales (None when empty)."""
    s = np.asarray(list(scales), np.float64)
    s = s[np.isfinite(s) & (s > 0)]
    if s.size == 0:
        return None
    p25, med, p75 = np.percentile(s, [25, 50, 75])
    return {'objects': int(s.size), 'median': float(med), 'p25': float(p25), 'p75': float(p75),
            'abs_log': float(np.median(np.abs(np.log(s))))}


def group_records(records: list[dict]) -> dict[str, list[dict]]:
    """{group name: records}: static, moving, moving by motion ('moving/same', ...), then static and
    moving by distance ('static/0-10 m', 'moving/0-10 m', ...); empty groups are left out."""
    groups: dict[str, list[dict]] = {'static': [r for r in records if not r['moving']],
                                     'moving': [r for r in records if r['moving']]}
    for m in MOTIONS:
        groups[f'moving/{m}'] = [r for r in groups['moving'] if r['motion'] == m]
    for name in distance_bin_names():
        for kind in ('static', 'moving'):
            groups[f'{kind}/{name}'] = [r for r in groups[kind] if distance_bin(r['distance']) == name]
    return {k: v for k, v in groups.items() if v}


def _ratio(groups: dict, moving: str, static: str) -> float | None:
    mv, st = groups.get(moving), groups.get(static)
    return mv['median'] / st['median'] if mv and st and st['median'] > 0 else None


class ObjectScaleAccumulator:
    """Collects object_scales() records over frames; summary() groups them."""

    def __init__(self):
        self.records: list[dict] = []

    def add(self, records: list[dict]) -> None:
        self.records.extend(records)

    def summary(self) -> dict:
        """{'groups': {name: scale_stats}, 'moving_over_static': median moving / median static,
        'moving_over_static_by_distance': {bin: the same within the distance bin}} (None where a side is
        missing). The scale of a depth network changes with distance, so the per-distance ratio compares
        moving objects with static ones seen at the same range."""
        groups = {k: scale_stats(r['scale'] for r in v) for k, v in group_records(self.records).items()}
        return {'groups': groups, 'moving_over_static': _ratio(groups, 'moving', 'static'),
                'moving_over_static_by_distance': {d: _ratio(groups, f'moving/{d}', f'static/{d}')
                                                   for d in distance_bin_names()}}


def group_order(summaries: Iterable[dict]) -> list[str]:
    """The group names present in any summary, in report order."""
    order = ['static', 'moving', *(f'moving/{m}' for m in MOTIONS),
             *(f'{k}/{d}' for d in distance_bin_names() for k in ('static', 'moving'))]
    present = set().union(*(s['groups'] for s in summaries))
    return [g for g in order if g in present]


def scale_table(summaries: dict[str, dict]) -> str:
    """Markdown: per group, per model, the median scale [quartiles] and objects; last row the moving /
    static ratio. summaries: {model name: ObjectScaleAccumulator.summary()}."""
    names = list(summaries)
    lines = ['| objects | count | ' + ' | '.join(f'{n} pred/GT median [p25-p75]' for n in names) + ' |',
             '|' + '---|' * (2 + len(names))]
    for g in group_order(summaries.values()):
        cells, count = [], None
        for n in names:
            st = summaries[n]['groups'].get(g)
            if st is None:
                cells.append('-')
                continue
            count = st['objects'] if count is None else count
            cells.append(f'{st["median"]:.2f} [{st["p25"]:.2f}-{st["p75"]:.2f}]')
        lines.append(f'| {g} | {count} | ' + ' | '.join(cells) + ' |')
    ratios = [summaries[n].get('moving_over_static') for n in names]
    lines.append('| **moving / static** | | ' + ' | '.join('-' if r is None else f'**{r:.2f}**' for r in ratios) + ' |')
    for d in distance_bin_names():
        ratios = [(summaries[n].get('moving_over_static_by_distance') or {}).get(d) for n in names]
        if any(r is not None for r in ratios):
            lines.append(f'| **moving / static, {d}** | | '
                         + ' | '.join('-' if r is None else f'**{r:.2f}**' for r in ratios) + ' |')
    return '\n'.join(lines) + '\n'
