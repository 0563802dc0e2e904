"""Accumulating an evaluation: per-frame metrics for all / static / dynamic pixels (dynamic = any instance in the
mask, or only the instances flagged as moving), median-scaled and metric, per GT-distance bin, the per-frame
series and a few sample strips for the report. Frames come in as FrameInput from eval_decode (bags) or
eval_dataset (dataset folders)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dynadepth_ros.metrics import MODES, MetricAccumulator, eigen_metrics, evaluate_frame, valid_mask
from dynadepth_ros.recording.eval_config import EvalConfig, RunCounts

REGIONS = ('all', 'static', 'dynamic')


@dataclass
class FrameInput:
    """One frame to evaluate. Arrays: rgb uint8 [H,W,3]; gt float32 [h,w] m (NaN/0 invalid);
    labels int32 [h,w] or None; moving_ids set or None; K float64 [3,3] or None; pred float32 or None."""

    key: str
    stamp_s: float
    rgb: np.ndarray | None
    gt: np.ndarray
    labels: np.ndarray | None = None
    moving_ids: set | None = None
    K: np.ndarray | None = None
    pred: np.ndarray | None = None


def dynamic_region(labels: np.ndarray, moving_ids: set | None) -> np.ndarray:
    """bool [H,W]: pixels of any instance (moving_ids None) or of the instances in moving_ids."""
    if moving_ids is None:
        return labels > 0
    if not moving_ids:
        return np.zeros(labels.shape, dtype=bool)
    return np.isin(labels, np.fromiter(moving_ids, dtype=np.int64))


def fit_to(depth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """depth resized (bilinear) to shape (h, w); unchanged if it fits. Label maps: camera.resize_nearest."""
    if depth.shape[:2] == tuple(shape):
        return depth
    return cv2.resize(depth, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def distance_bins(min_depth: float, max_depth: float, bin_size: float) -> list[tuple[float, float]]:
    """[(lo, hi)] GT-distance bins of bin_size metres covering (min_depth, max_depth)."""
    edges = list(np.arange(0.0, max_depth, bin_size)) + [max_depth]
    return [(float(lo), float(hi)) for lo, hi in zip(edges[:-1], edges[1:]) if hi > min_depth]


class Evaluation:
    """Accumulates per-frame results (metrics, distance bins, time series, sample strips)."""

    def __init__(self, cfg: EvalConfig, sample_at: set[int]):
        self.cfg = cfg
        self.acc = MetricAccumulator()
        self.bin_acc = MetricAccumulator()
        self.bins = distance_bins(cfg.min_depth, cfg.max_depth, cfg.bin_size)
        self.series: list[dict] = []
        self.samples: list[dict] = []
        self.sample_at = sample_at
        self.has_regions = False
        self.dynamic_definition = None
        self.infer_s = 0.0

    def add(self, frame: FrameInput, index: int, counts: RunCounts) -> None:
        gt, pred = frame.gt, frame.pred
        if pred.shape != gt.shape:
            pred = fit_to(pred, gt.shape)
        regions = {}
        if frame.labels is not None:
            dyn = dynamic_region(frame.labels, frame.moving_ids)
            regions = {'static': ~dyn, 'dynamic': dyn}
            self.has_regions = True
        main = evaluate_frame(gt, pred, regions, min_depth=self.cfg.min_depth, max_depth=self.cfg.max_depth)
        if main['valid_pixels']['all'] == 0:
            counts.skip('no_valid_gt', f'{frame.key}: no pixel with GT in ({self.cfg.min_depth:g}, '
                                       f'{self.cfg.max_depth:g}) m and a finite prediction')
            return
        self.acc.add(main)
        self.bin_acc.add(self._binned(gt, pred, regions, main['scale']))
        counts.evaluated += 1
        row = {'key': frame.key, 'stamp': frame.stamp_s, 'scale': main['scale'],
               'valid_pixels': main['valid_pixels']['all']}
        for m in MODES:
            for r in REGIONS:
                v = main[m].get(r)
                row[f'{m}.{r}.abs_rel'] = None if v is None else v['abs_rel']
        self.series.append(row)
        if index in self.sample_at and frame.rgb is not None:
            self.samples.append({'key': frame.key, 'rgb': frame.rgb, 'pred': pred, 'gt': gt, 'scale': main['scale']})

    def _binned(self, gt: np.ndarray, pred: np.ndarray, regions: dict, scale: float) -> dict:
        """evaluate_frame-shaped result for the regions '<lo>-<hi>|<all|static|dynamic>' (GT-distance bins).

        Same protocol as metrics.evaluate_frame (valid pixels, the frame's one median ratio, clamping to
        the depth range, eigen_metrics), computed on the valid pixels sorted by bin so each bin is one slice.
        """
        lo_d, hi_d = self.cfg.min_depth, self.cfg.max_depth
        valid = valid_mask(gt, pred, lo_d, hi_d)
        g = gt[valid].astype(np.float64)
        p = pred[valid].astype(np.float64)
        reg = {name: mask[valid] for name, mask in regions.items()}
        edges = np.array([hi for _lo, hi in self.bins])
        which = np.searchsorted(edges, g, side='right')          # bin k holds lo_k <= g < hi_k
        order = np.argsort(which, kind='stable')
        g, p, which = g[order], p[order], which[order]
        reg = {name: m[order] for name, m in reg.items()}
        bounds = np.searchsorted(which, np.arange(len(self.bins) + 1), side='left')
        out: dict = {'scale': float('nan'), 'valid_pixels': {}, **{m: {} for m in MODES}}
        for k, (lo, hi) in enumerate(self.bins):
            sl = slice(bounds[k], bounds[k + 1])
            for name in ('all', *reg):
                sel = np.ones(sl.stop - sl.start, bool) if name == 'all' else reg[name][sl]
                key = f'{lo:g}-{hi:g}|{name}'
                gk, pk = g[sl][sel], p[sl][sel]
                out['valid_pixels'][key] = int(gk.size)
                for mode, factor in (('median_scaled', scale), ('metric', 1.0)):
                    out[mode][key] = (eigen_metrics(gk, np.clip(pk * factor, lo_d, hi_d)) if gk.size else None)
        return out

    def by_distance(self) -> dict:
        s = self.bin_acc.summary()
        out: dict = {'bins': [[lo, hi] for lo, hi in self.bins]}
        for m in MODES:
            out[m] = {}
            for r in REGIONS:
                rows = []
                for lo, hi in self.bins:
                    v = s[m].get(f'{lo:g}-{hi:g}|{r}')
                    rows.append(None if v is None else v)
                out[m][r] = rows
        return out

    def metrics(self) -> dict:
        s = self.acc.summary()
        return {m: {r: s[m].get(r) for r in REGIONS} for m in MODES}, s['scale']
