"""Depth evaluation of a trained stage on a split with ground truth (`python -m training evaluate`).

Protocol (design §8, `dynadepth_ros.metrics`): Eigen metrics per frame, averaged over frames, at
the network resolution (GT resized with nearest neighbour), valid GT in (eval.min_depth,
eval.max_depth); with and without per-image median scaling (one ratio per frame from all valid
pixels, applied to every region). Regions:

    all       every valid pixel
    static    pixels not on an instance flagged as moving (background and parked cars)
    dynamic   pixels of instances flagged as moving
    lead      moving cars ahead in the ego lane that travel with the ego: box centre (camera frame)
              |x| < eval.lead_max_lateral m, z > 0, velocity within eval.lead_max_heading_deg of
              the ego's direction of travel (the failure case the method exists to fix)

The same script measures a trivial baseline: the per-pixel mean GT depth of the training split
(valid pixels only; pixels never valid get the global mean). It also reports the scale check:
the median over frames of median(GT)/median(prediction), which must lie in 0.9-1.1 for a metric
model. Writes eval_<split>.json and eval_<split>.md into the stage directory.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dynadepth_ros.atomic_files import write_json_atomic, write_text_atomic
from dynadepth_ros.camera import resize_nearest
from dynadepth_ros.metrics import METRIC_NAMES, MODES, MetricAccumulator, evaluate_frame
from dynadepth_ros.object_scale import ObjectScaleAccumulator, object_scales, scale_table
from training.artifacts import now_iso
from training.config import ConfigError, EvalConfig
from training.data import build_dataset, open_split
from training.loop import to_device
from training.stages import get_stage

REGIONS = ('all', 'static', 'dynamic', 'lead')
SCALE_TOLERANCE = 0.10


def lead_car_ids(instances: list[dict], ego_direction: np.ndarray | None, cfg: EvalConfig) -> set[int]:
    """Ids of lead cars among a frame's instances (module docstring rule).

    instances: dicts as in instances/<frame>.json (id, class, moving, velocity [3] world m/s,
    box.center_cam [3] m). ego_direction: [3] world-frame direction of ego travel, or None (no
    poses: no lead cars can be identified). An instance with `role: lead` counts when moving.
    """
    out = set()
    cos_max = math.cos(math.radians(cfg.lead_max_heading_deg))
    for inst in instances:
        if not inst.get('moving') or inst.get('class') not in cfg.lead_classes:
            continue
        if inst.get('role') == 'lead':
            out.add(int(inst['id']))
            continue
        centre = (inst.get('box') or {}).get('center_cam')
        vel = np.asarray(inst.get('velocity') or [0, 0, 0], dtype=np.float64)
        if centre is None or ego_direction is None:
            continue
        x, _, z = (float(v) for v in centre)
        if abs(x) >= cfg.lead_max_lateral or z <= 0:
            continue
        speed, ego = np.linalg.norm(vel), np.linalg.norm(ego_direction)
        if speed < 1e-6 or ego < 1e-9:
            continue
        if float(vel @ ego_direction) / (speed * ego) >= cos_max:
            out.add(int(inst['id']))
    return out


def travel_direction(seq, t: int, gap: int) -> np.ndarray | None:
    """World-frame direction of travel [3] at frame t of a dataset sequence from its poses t-gap and t+gap
    (the optical axis when standing still; None without poses)."""
    n = len(seq)
    a, b = seq.pose(max(0, t - gap)), seq.pose(min(n - 1, t + gap))
    if a is None or b is None:
        return None
    d = np.asarray(b)[:3, 3] - np.asarray(a)[:3, 3]
    if np.linalg.norm(d) < 1e-6:      # standing still: fall back to the optical axis
        d = np.asarray(seq.pose(t))[:3, 2]
    return d


def frame_instances(seq, t: int) -> list[dict] | None:
    """The instance records of frame t (instances/<t>.json of the sequence folder); None without them."""
    path = getattr(seq, 'path', None)
    if path is None:
        return None
    f = Path(path) / 'instances' / f'{t:06d}.json'
    if not f.is_file():
        return None
    return json.loads(f.read_text())


def frame_regions(seq, t: int, mask: np.ndarray, moving: np.ndarray, gap: int, cfg: EvalConfig) -> dict:
    """{'static', 'dynamic', 'lead'} bool [H,W] maps of one frame at network resolution."""
    moving = moving.astype(bool)
    regions = {'static': ~moving, 'dynamic': moving}
    instances = frame_instances(seq, t)
    if instances is not None:
        ids = lead_car_ids(instances, travel_direction(seq, t, gap), cfg)
        regions['lead'] = np.isin(mask, sorted(ids)) if ids else np.zeros_like(moving)
    return regions


def mean_depth_baseline(data_cfg, height: int, width: int, progress: bool = True) -> np.ndarray | None:
    """float32 [H,W]: per-pixel mean of the training split's valid GT depth (None without GT)."""
    source = open_split(data_cfg, 'train')
    total = np.zeros((height, width), np.float64)
    count = np.zeros((height, width), np.int64)
    frames = [(seq, i) for seq in source.sequences() for i in range(len(seq))]
    for seq, i in tqdm(frames, desc='evaluate: train-set mean depth', disable=not progress, mininterval=1.0):
        gt = seq.gt_depth(i)
        if gt is None:
            continue
        gt = resize_nearest(np.asarray(gt, np.float32), height, width)
        ok = np.isfinite(gt) & (gt > 0)
        total[ok] += gt[ok]
        count[ok] += 1
    if not count.any():
        return None
    mean = total / np.maximum(count, 1)
    mean[count == 0] = total.sum() / count.sum()
    return mean.astype(np.float32)


@torch.no_grad()
def evaluate(run_dir: str | os.PathLike, stage: str = 'scene', split: str = 'test', device: str = 'cpu',
             batch_size: int | None = None, progress: bool = True) -> dict:
    """Evaluate a finished stage's depth network on `split`; writes and returns the report."""
    spec = get_stage(stage)
    stage_dir = Path(run_dir) / stage
    depth_net, cfg, manifest = spec.load().load_depth_net(stage_dir, device)
    ev = cfg.eval
    if not cfg.data.split_name(split):
        raise ConfigError(f'data.{split}_split is not set in {stage_dir / "config.yaml"}; nothing to evaluate')
    ds = build_dataset(cfg.data, split, augment=False)
    H, W = cfg.data.height, cfg.data.width
    baseline = mean_depth_baseline(cfg.data, H, W, progress) if cfg.data.split_name('train') else None

    model_acc, base_acc = MetricAccumulator(), MetricAccumulator()
    objects = ObjectScaleAccumulator()
    lead_frames = 0
    gt_frames = 0
    loader = DataLoader(ds, batch_size=batch_size or ev.batch_size, shuffle=False,
                        num_workers=cfg.runtime.num_workers)
    for batch in tqdm(loader, desc=f'evaluate {stage} on {split}', disable=not progress, mininterval=1.0):
        image = to_device(batch['frames_raw'][:, 1], torch.device(device))
        pred = depth_net.depth(image)[:, 0].float().cpu().numpy()
        for j, idx in enumerate(batch['index'].tolist()):
            si, t = ds.samples[idx]
            gt = batch['gt_depth'][j, 0].numpy()
            if not (gt > 0).any():
                continue
            gt_frames += 1
            regions = frame_regions(ds.sequences[si], t, batch['mask'][j].numpy(), batch['moving'][j].numpy(),
                                    cfg.data.frame_gap, ev)
            if regions.get('lead') is not None and regions['lead'].any():
                lead_frames += 1
            model_acc.add(evaluate_frame(gt, pred[j], regions, ev.min_depth, ev.max_depth))
            instances = frame_instances(ds.sequences[si], t)
            if instances:
                objects.add(object_scales(gt, pred[j], batch['mask'][j].numpy(), instances,
                                          travel_direction(ds.sequences[si], t, cfg.data.frame_gap),
                                          ev.min_depth, ev.max_depth))
            if baseline is not None:
                base_acc.add(evaluate_frame(gt, baseline, regions, ev.min_depth, ev.max_depth))
    if gt_frames == 0:
        raise ValueError(f'the {split} split has no ground-truth depth; evaluation needs GT depth maps')

    model_summary = model_acc.summary()
    scale = model_summary['scale']['median_gt_over_pred']
    report = {
        'stage': stage, 'split': split, 'created': now_iso(), 'run_dir': str(Path(run_dir).resolve()),
        'config_hash': manifest.get('config_hash'), 'metric_model': manifest.get('metric'),
        'frames': gt_frames, 'frames_with_lead_car': lead_frames,
        'resolution': [H, W], 'depth_range': [ev.min_depth, ev.max_depth],
        'lead_rule': {'max_lateral_m': ev.lead_max_lateral, 'max_heading_deg': ev.lead_max_heading_deg,
                      'classes': list(ev.lead_classes)},
        'model': model_summary,
        'baseline_mean_train_depth': base_acc.summary() if baseline is not None else None,
        'object_scale': objects.summary() if objects.records else None,
        'scale_check': {'median_gt_over_pred': scale,
                        'within_10_percent': scale is not None and abs(scale - 1.0) <= SCALE_TOLERANCE},
    }
    write_json_atomic(stage_dir / f'eval_{split}.json', report)
    write_text_atomic(stage_dir / f'eval_{split}.md', markdown_report(report))
    return report


def _rows(summary: dict | None, name: str) -> list[str]:
    rows = []
    if summary is None:
        return rows
    for mode in MODES:
        for region in REGIONS:
            m = summary.get(mode, {}).get(region)
            if m is None:
                continue
            rows.append(f'| {name} | {mode} | {region} | {m["frames"]} | '
                        + ' | '.join(f'{m[k]:.3f}' for k in METRIC_NAMES) + ' |')
    return rows


def markdown_report(report: dict) -> str:
    """The report as a Markdown table (model and baseline, both modes, every region)."""
    head = '| depth | mode | region | frames | ' + ' | '.join(METRIC_NAMES) + ' |'
    sep = '|' + '---|' * (4 + len(METRIC_NAMES))
    lines = [f'# {report["stage"]} depth on the {report["split"]} split', '',
             f'{report["frames"]} frames with GT ({report["frames_with_lead_car"]} with a lead car), '
             f'{report["resolution"][0]}x{report["resolution"][1]}, GT range {report["depth_range"][0]:g}-'
             f'{report["depth_range"][1]:g} m. Lower is better for abs_rel..rmse_log, higher for a1..a3.', '',
             head, sep, *_rows(report['model'], 'model'), *_rows(report['baseline_mean_train_depth'], 'baseline'), '']
    sc = report['scale_check']
    if sc['median_gt_over_pred'] is not None:
        lines.append(f'Scale check: median over frames of median(GT)/median(prediction) = '
                     f'{sc["median_gt_over_pred"]:.3f} ({"within" if sc["within_10_percent"] else "OUTSIDE"} '
                     f'0.9-1.1; model is {"metric" if report["metric_model"] else "relative"}).')
    lines.append('Baseline: per-pixel mean GT depth of the training split. Lead: moving cars ahead in the ego lane '
                 'travelling with the ego.')
    if report.get('object_scale'):
        lines += ['', '## Per-object scale (median over each object of prediction / GT, metric)', '',
                  scale_table({report['stage']: report['object_scale']}).rstrip()]
    return '\n'.join(lines) + '\n'


def compare_stages(run_dir: str | os.PathLike, stages: tuple[str, ...] = ('scene', 'final'), split: str = 'test',
                   device: str = 'cpu', progress: bool = True) -> dict:
    """Evaluate several finished stages on the same split (each writes its own eval_<split>.json) and put
    them side by side; writes compare_<split>.json/.md into the run directory."""
    reports = {s: evaluate(run_dir, s, split, device=device, progress=progress) for s in stages}
    out = {'split': split, 'created': now_iso(), 'stages': list(stages), 'reports': reports}
    write_json_atomic(Path(run_dir) / f'compare_{split}.json', out)
    write_text_atomic(Path(run_dir) / f'compare_{split}.md', compare_markdown(out))
    return out


def compare_markdown(cmp: dict) -> str:
    """Side-by-side AbsRel and δ<1.25 of the compared stages (the first is the reference of the ratio)."""
    stages = cmp['stages']
    reports = cmp['reports']
    first = reports[stages[0]]
    head = ('| region | mode | frames | ' + ' | '.join(f'{s} AbsRel' for s in stages)
            + f' | {stages[-1]}/{stages[0]} | ' + ' | '.join(f'{s} δ<1.25' for s in stages) + ' | baseline AbsRel |')
    lines = [f'# {" vs ".join(stages)} on the {cmp["split"]} split', '',
             f'{first["frames"]} frames with GT ({first["frames_with_lead_car"]} with a lead car). '
             'Dynamic = instances flagged as moving; lead = moving cars ahead in the ego lane.', '',
             head, '|' + '---|' * (5 + 2 * len(stages))]
    for region in ('dynamic', 'lead', 'all', 'static'):
        for mode in MODES:
            ms = [(reports[s]['model'].get(mode) or {}).get(region) for s in stages]
            if any(m is None for m in ms):
                continue
            base = ((first.get('baseline_mean_train_depth') or {}).get(mode) or {}).get(region)
            ratio = ms[-1]['abs_rel'] / ms[0]['abs_rel'] if ms[0]['abs_rel'] else float('nan')
            lines.append(f'| {region} | {mode} | {ms[0]["frames"]} | ' + ' | '.join(f'{m["abs_rel"]:.3f}' for m in ms)
                         + f' | {ratio:.2f} | ' + ' | '.join(f'{m["a1"]:.3f}' for m in ms)
                         + (f' | {base["abs_rel"]:.3f} |' if base else ' | - |'))
    scales = {s: reports[s]['object_scale'] for s in stages if reports[s].get('object_scale')}
    if scales:
        lines += ['', '## Per-object scale', '',
                  'Per object: the median over its pixels of prediction / GT (metric; 1 = right, >1 = seen '
                  'farther); per group the median over objects and the quartiles. Moving objects split by '
                  'motion against the ego (same / oncoming / crossing) and by distance. The last row, moving '
                  'median / static median, is 1 when moving objects get the scene\'s scale.', '',
                  scale_table(scales).rstrip()]
    return '\n'.join(lines) + '\n'
