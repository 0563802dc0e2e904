"""Two (or more) depth models side by side on one synthetic sequence folder, with the inference core
the node uses: Eigen metrics on all / static / dynamic / lead-car pixels (median-scaled and metric),
inference time per frame, and a PNG strip RGB | model A | model B | GT | error A | error B on the
frames with a car ahead. `make demo` runs it on the bundled stage-1 and final models.

Regions: dynamic = instances flagged moving in that frame; lead = the sequence's lead car
(synth.json lead_id) in the frames where it is ahead within 30 m (synth.json lead_frames); static =
every other valid pixel. The mean-depth baseline (the GT's mean over the sequence's valid pixels,
per pixel position) is computed alongside, so a model that learned nothing is visible.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .atomic_files import write_png_atomic
from .colorize import colorize
from .datasets.layout import Frame, Sequence
from .figure_style import caption, depth_figure
from .metrics import MetricAccumulator, evaluate_frame
from .object_scale import ObjectScaleAccumulator, ego_direction, object_scales, scale_table

REGIONS = ('dynamic', 'lead', 'static', 'all')
ERROR_MAX = 0.5          # AbsRel shown at full brightness in the error panels


def frame_regions(f: Frame, lead_id: int | None, lead_frames: list[bool]) -> dict[str, np.ndarray]:
    """bool [H,W] masks of frame f: dynamic, lead (module docstring) and static."""
    i = f.index
    dynamic = np.isin(f.mask, [x.id for x in f.instances if x.moving]) & (f.mask > 0)
    lead = (f.mask == lead_id) if (lead_id is not None and i < len(lead_frames) and lead_frames[i]) \
        else np.zeros(f.mask.shape, bool)
    return {'dynamic': dynamic, 'lead': lead & dynamic, 'static': ~dynamic}


def compare_on_sequence(seq_dir: str | Path, models: dict[str, str | Path], backend: str = 'onnxruntime',
                        strip_rows: int = 4) -> dict:
    """{'models': {name: {'path', 'stage', 'summary', 'inference_ms'}}, 'baseline': summary, 'strip_frames',
    'predictions': {name: {frame: depth}} (strip frames only)}. Every frame of the folder is evaluated."""
    from .inference import DepthEstimator

    seq = Sequence(Path(seq_dir))
    meta = json.loads((seq.path / 'synth.json').read_text())
    lead_id, lead_frames = meta.get('lead_id'), list(meta.get('lead_frames') or [])
    estimators = {name: DepthEstimator(path, backend=backend, fallback=False, max_batch=1)
                  for name, path in models.items()}
    gts = [seq.depth(i) for i in range(len(seq))]
    valid = np.stack([g > 0 for g in gts])
    mean_depth = np.where(valid.any(0), np.stack(gts).sum(0) / np.maximum(valid.sum(0), 1), np.nan).astype(np.float32)
    lead_idx = [i for i in range(len(seq)) if i < len(lead_frames) and lead_frames[i]]
    pool = lead_idx or list(range(len(seq)))
    strip = sorted({pool[int(k)] for k in np.linspace(0, len(pool) - 1, min(strip_rows, len(pool))).round()})
    acc = {name: MetricAccumulator() for name in models}
    objects = {name: ObjectScaleAccumulator() for name in models}
    base = MetricAccumulator()
    times = {name: [] for name in models}
    preds: dict[str, dict[int, np.ndarray]] = {name: {} for name in models}
    for i in range(len(seq)):
        f = seq.frame(i)
        regions = frame_regions(f, lead_id, lead_frames)
        instances = [x.to_json() for x in f.instances]
        ego = ego_direction(seq.poses, i)
        for name, est in estimators.items():
            t0 = time.perf_counter()
            depth = est.infer(f.rgb, seq.calib.K)
            times[name].append((time.perf_counter() - t0) * 1000)
            acc[name].add(evaluate_frame(f.depth, np.nan_to_num(depth, nan=0.0), regions))
            objects[name].add(object_scales(f.depth, depth, f.mask, instances, ego))
            if i in strip:
                preds[name][i] = depth
        base.add(evaluate_frame(f.depth, np.nan_to_num(mean_depth, nan=0.0), regions))
    out = {'sequence': str(seq.path), 'frames': len(seq), 'lead_frames': len(lead_idx), 'strip_frames': strip,
           'models': {}, 'baseline': base.summary(), 'predictions': preds}
    for name, est in estimators.items():
        t = np.asarray(times[name])
        out['models'][name] = {'path': str(models[name]), 'stage': est.metadata.stage, 'backend': est.backend_name,
                               'summary': acc[name].summary(), 'object_scale': objects[name].summary(),
                               'object_records': objects[name].records,
                               'inference_ms': {'p50': float(np.median(t)), 'mean': float(t.mean())}}
        est.close()
    return out


def comparison_table(cmp: dict, a: str, b: str, mode: str = 'metric') -> str:
    """Markdown table: per region AbsRel and δ<1.25 of models a and b, b/a, and the mean-depth baseline."""
    lines = [f'| region | frames | {a} AbsRel | {b} AbsRel | {b}/{a} | {a} δ<1.25 | {b} δ<1.25 | baseline AbsRel |',
             '|---|---|---|---|---|---|---|---|']
    for region in REGIONS:
        ma = cmp['models'][a]['summary'][mode].get(region)
        mb = cmp['models'][b]['summary'][mode].get(region)
        mz = cmp['baseline'][mode].get(region)
        if ma is None or mb is None:
            continue
        lines.append(f'| {region} | {ma["frames"]} | {ma["abs_rel"]:.3f} | {mb["abs_rel"]:.3f} | '
                     f'{mb["abs_rel"] / ma["abs_rel"]:.2f} | {ma["a1"]:.3f} | {mb["a1"]:.3f} | '
                     f'{"" if mz is None else format(mz["abs_rel"], ".3f")} |')
    return '\n'.join(lines)


OBJECT_SCALE_NOTE = ('Per object: the median over its pixels of prediction / GT (metric; 1 = right, >1 = seen farther); '
                     'per group the median over objects [quartiles]. Moving objects by motion against the ego and by '
                     'distance; the last row is the moving median over the static median.')


def object_scale_table(cmp: dict, *names: str) -> str:
    """Markdown per-object scale table (dynadepth_ros.object_scale) of the named models."""
    return scale_table({n: cmp['models'][n]['object_scale'] for n in names})


def _error_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    ok = (gt > 0) & np.isfinite(pred) & (pred > 0)
    err = np.where(ok, np.abs(np.nan_to_num(pred) - gt) / np.where(ok, gt, 1.0), 0.0)
    return colorize(err, 0.0, ERROR_MAX, 'inferno', valid=ok, rgb=True)


def write_strip(cmp: dict, a: str, b: str, path: Path) -> Path:
    """PNG: one row per strip frame, RGB | a | b | GT | error a | error b (AbsRel 0..0.5); the lead car's
    AbsRel of each model is written on its panel."""
    seq = Sequence(Path(cmp['sequence']))
    meta = json.loads((seq.path / 'synth.json').read_text())
    rows = []
    for i in cmp['strip_frames']:
        f = seq.frame(i)
        lead = frame_regions(f, meta.get('lead_id'), list(meta.get('lead_frames') or []))['lead']
        panels = [caption(f.rgb, f'frame {i}')]
        errs = []
        for name in (a, b):
            d = cmp['predictions'][name][i]
            ok = lead & (f.depth > 0) & np.isfinite(d)
            lead_err = float(np.mean(np.abs(d[ok] - f.depth[ok]) / f.depth[ok])) if ok.any() else float('nan')
            panels.append(caption(depth_figure(d), f'{name}: lead car AbsRel {lead_err:.2f}'))
            errs.append(caption(_error_map(d, f.depth), f'{name} error (AbsRel 0..{ERROR_MAX})'))
        panels.append(caption(depth_figure(f.depth), 'GT'))
        panels += errs
        rows.append(np.concatenate(panels, axis=1))
        rows.append(np.full((3, rows[-1].shape[1], 3), 255, np.uint8))
    write_png_atomic(path, np.concatenate(rows[:-1], axis=0))
    return path


def to_json(cmp: dict) -> dict:
    """The comparison without the prediction arrays."""
    return {k: v for k, v in cmp.items() if k != 'predictions'}
