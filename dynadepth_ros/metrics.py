"""Depth-evaluation metrics (the Eigen set), one implementation shared by every evaluator.

Per image: valid pixels are min_depth < gt < max_depth (and a finite, positive prediction);
optional per-image median scaling uses ONE ratio per frame, median(gt)/median(pred) over all
valid pixels, applied to every region (the reference evaluator's protocol); the prediction is
then clamped to [min_depth, max_depth]. Metrics are averaged over images; a region's average
only counts images that have pixels in that region.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METRIC_NAMES = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3')
# The evaluation depth range in metres (the KITTI / Eigen protocol): ground truth outside (MIN_DEPTH, MAX_DEPTH)
# is not evaluated and predictions are clamped to it. The one default for every evaluator and the training config.
MIN_DEPTH = 1e-3
MAX_DEPTH = 80.0
MODES = ('median_scaled', 'metric')


def eigen_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The seven Eigen metrics of 1-D arrays of valid, positive depths (metres)."""
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.size == 0:
        raise ValueError('eigen_metrics needs at least one valid pixel')
    thresh = np.maximum(gt / pred, pred / gt)
    diff = gt - pred
    return {
        'abs_rel': float(np.mean(np.abs(diff) / gt)),
        'sq_rel': float(np.mean(diff ** 2 / gt)),
        'rmse': float(np.sqrt(np.mean(diff ** 2))),
        'rmse_log': float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        'a1': float(np.mean(thresh < 1.25)),
        'a2': float(np.mean(thresh < 1.25 ** 2)),
        'a3': float(np.mean(thresh < 1.25 ** 3)),
    }


def valid_mask(gt: np.ndarray, pred: np.ndarray, min_depth: float = MIN_DEPTH,
               max_depth: float = MAX_DEPTH) -> np.ndarray:
    """bool [H,W]: pixels with usable ground truth and a finite, positive prediction."""
    with np.errstate(invalid='ignore'):
        return np.isfinite(gt) & (gt > min_depth) & (gt < max_depth) & np.isfinite(pred) & (pred > 0)


def evaluate_frame(gt: np.ndarray, pred: np.ndarray, regions: dict[str, np.ndarray] | None = None,
                   min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH) -> dict:
    """Metrics of one frame, both modes.

    gt, pred: float [H,W] metres (gt 0/NaN = invalid). regions: name → bool [H,W]; 'all' is
    always included. Returns {'median_scaled'|'metric': {region: metrics dict or None},
    'scale': median ratio, 'valid_pixels': {region: count}}; None for a region without pixels.
    """
    gt = np.asarray(gt, dtype=np.float32)
    pred = np.asarray(pred, dtype=np.float32)
    if gt.shape != pred.shape:
        raise ValueError(f'ground truth {gt.shape} and prediction {pred.shape} differ in shape')
    valid = valid_mask(gt, pred, min_depth, max_depth)
    regions = {'all': np.ones_like(valid), **(regions or {})}
    out: dict = {'median_scaled': {}, 'metric': {}, 'valid_pixels': {}}
    scale = float(np.median(gt[valid]) / np.median(pred[valid])) if valid.any() else float('nan')
    out['scale'] = scale
    for name, region in regions.items():
        sel = valid & region.astype(bool)
        out['valid_pixels'][name] = int(sel.sum())
        for mode, factor in (('median_scaled', scale), ('metric', 1.0)):
            if not sel.any():
                out[mode][name] = None
                continue
            p = np.clip(pred[sel] * factor, min_depth, max_depth)
            out[mode][name] = eigen_metrics(gt[sel], p)
    return out


@dataclass
class MetricAccumulator:
    """Averages evaluate_frame() results over frames, per mode and region."""

    sums: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    pixels: dict = field(default_factory=dict)
    scales: list = field(default_factory=list)

    def add(self, frame_result: dict) -> None:
        if np.isfinite(frame_result.get('scale', np.nan)):
            self.scales.append(frame_result['scale'])
        for name, n in frame_result['valid_pixels'].items():
            self.pixels[name] = self.pixels.get(name, 0) + n
        for mode in MODES:
            for region, m in frame_result[mode].items():
                if m is None:
                    continue
                key = (mode, region)
                acc = self.sums.setdefault(key, dict.fromkeys(METRIC_NAMES, 0.0))
                for k in METRIC_NAMES:
                    acc[k] += m[k]
                self.counts[key] = self.counts.get(key, 0) + 1

    def summary(self) -> dict:
        """{'median_scaled'|'metric': {region: {metric: mean, 'frames': n, 'pixels': n}}, 'scale': {...}}."""
        out: dict = {mode: {} for mode in MODES}
        for (mode, region), acc in sorted(self.sums.items()):
            n = self.counts[(mode, region)]
            out[mode][region] = {k: v / n for k, v in acc.items()}
            out[mode][region]['frames'] = n
            out[mode][region]['pixels'] = self.pixels.get(region, 0)
        s = np.asarray(self.scales, dtype=np.float64)
        out['scale'] = {'median_gt_over_pred': float(np.median(s)) if s.size else None,
                        'std': float(np.std(s)) if s.size else None, 'frames': int(s.size)}
        return out


def format_table(summary: dict, regions=('all', 'static', 'dynamic')) -> str:
    """A plain-text table of a MetricAccumulator summary."""
    lines = [f"{'mode':<14}{'region':<10}{'frames':>7}" + ''.join(f'{k:>10}' for k in METRIC_NAMES)]
    for mode in MODES:
        for region in regions:
            m = summary.get(mode, {}).get(region)
            if m is None:
                continue
            lines.append(f'{mode:<14}{region:<10}{m["frames"]:>7}' + ''.join(f'{m[k]:>10.4f}' for k in METRIC_NAMES))
    return '\n'.join(lines)
