"""Does the method's supervision hold? (`python -m training evaluate --stage dsa --split val`)

Measures stages 2-3 of a run against what only the synthetic data (or any data with GT) knows,
never used by the stages themselves (with learned masks, objects.masks: learned, the instances are the
learned ones and one counts as moving when the data's moving instances cover most of it;
training/data/learned_masks.py):

1. labelling: precision and recall of the `dynamic` label for independently moving instances
   (the data's moving flags) among the instances stage 2 labelled (road removed, above the size
   threshold), per split, with recall on lead cars (moving with the ego, the hard case) and which
   cue fired;
2. DSA scale error on held-out static objects (the `split`, which DSA never trains on): per object
   the median over its pixels of |β·D̃ / D_scene − 1|, then the median over objects — for the
   trained network and for its geometric anchor alone; plus the same against GT depth;
3. pseudo labels against the stage-1 scene depth on the pixels of moving instances (GT flags),
   Eigen metrics per frame, median-scaled (one ratio per frame from all valid pixels) and metric,
   also on all pixels and on lead cars. The method's premise is that the pseudo labels are clearly
   better on dynamic pixels (goal AbsRel ≤ 0.7× stage 1).

Writes <run_dir>/dsa/method_eval_<split>.json and .md.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dynadepth_ros.atomic_files import write_json_atomic, write_text_atomic
from dynadepth_ros.metrics import MetricAccumulator, evaluate_frame
from training.artifacts import now_iso
from training.data import build_dataset
from training.data.triplets import Layer
from training.evaluate import frame_instances, lead_car_ids, travel_direction
from training.stages import dsa as dsa_stage
from training.stages.outputs import ObjectLabels, ObjectOutputs, PseudoLabels, ScenePredictions, learned_masks_root

REGIONS = ('all', 'dynamic', 'lead')


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def labelling_scores(run_dir: Path, cfg, split: str) -> dict:
    """Precision / recall of `dynamic` against the data's moving flags (instances stage 2 labelled)."""
    ds = build_dataset(cfg.data, split, augment=False, masks=learned_masks_root(cfg, run_dir))
    labels = ObjectLabels(run_dir / 'objects', split)
    index = {ds.sample_location(i): ds.samples[i] for i in range(len(ds))}
    tp = fp = fn = tn = 0
    lead_tp = lead_n = 0
    by_cue: dict[str, dict[str, int]] = {}
    for seq_name, t, labs in labels.items():
        si, _ = index[(seq_name, t)]
        seq = ds.sequences[si]
        moving = seq.moving_ids(t)
        if moving is None:
            continue
        inst = frame_instances(seq, t) or []
        lead = lead_car_ids(inst, travel_direction(seq, t, cfg.data.frame_gap), cfg.eval)
        for lab in labs:
            is_moving = lab.id in moving
            if lab.dynamic:
                tp += is_moving
                fp += not is_moving
                for c in lab.extra.get('cues', []):
                    d = by_cue.setdefault(c, {'moving': 0, 'static': 0})
                    d['moving' if is_moving else 'static'] += 1
            else:
                fn += is_moving
                tn += not is_moving
            if lab.id in lead:
                lead_n += 1
                lead_tp += lab.dynamic
    return {'instances': tp + fp + fn + tn, 'moving': tp + fn, 'labelled_dynamic': tp + fp,
            'precision': _ratio(tp, tp + fp), 'recall': _ratio(tp, tp + fn),
            'lead_car_recall': _ratio(lead_tp, lead_n), 'lead_car_instances': lead_n,
            'true_positive': tp, 'false_positive': fp, 'false_negative': fn, 'true_negative': tn,
            'cue_hits': by_cue}


@torch.no_grad()
def evaluate_method(run_dir: str | os.PathLike, split: str = 'val', progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    dsa_dir = run_dir / 'dsa'
    if not (dsa_dir / 'manifest.json').is_file():
        raise FileNotFoundError(f'{dsa_dir} has no manifest.json: run `python -m training dsa --run-dir {run_dir}` '
                                f'(or `python -m training run`) first')
    net, cfg = dsa_stage.load_model(dsa_dir)
    ev = cfg.eval
    labelling = {s: labelling_scores(run_dir, cfg, s) for s in cfg.objects.splits
                 if (run_dir / 'objects' / 'labels' / f'{s}.json').is_file()}
    if split not in cfg.objects.splits:
        raise ValueError(f'stages 2-3 ran on {cfg.objects.splits}, not on {split!r}; pick one of those')

    ds = build_dataset(cfg.data, split, augment=False, masks=learned_masks_root(cfg, run_dir))
    preds = ScenePredictions(run_dir / 'scene')
    outputs = ObjectOutputs(run_dir / 'objects')
    labels = ObjectLabels(run_dir / 'objects', split)
    pseudo = PseudoLabels(dsa_dir)
    scene_acc, pseudo_acc = MetricAccumulator(), MetricAccumulator()
    err_net, err_anchor, err_gt, err_gt_anchor, err_gt_scene = [], [], [], [], []
    anchor_ok = []
    frames = 0
    for idx in tqdm(range(len(ds)), desc=f'evaluate stages 2-3 on {split}', disable=not progress, mininterval=1.0):
        seq_name, t = ds.sample_location(idx)
        si, _ = ds.samples[idx]
        seq = ds.sequences[si]
        pred = preds.frame(split, seq_name, t)
        item = ds.load(idx, extra={'scene_depth': Layer(pred.depth, 'depth')})
        gt = item['gt_depth'][0].numpy()
        mask = item['mask'].numpy()
        moving = item['moving'].numpy()
        # 2. DSA on held-out static objects (labelled static and not moving)
        depth = outputs.depth(split, seq_name, t)
        truly_moving = seq.moving_ids(t) or set()
        static = {lab.id: depth[lab.id] for lab in labels.frame(seq_name, t)
                  if not lab.dynamic and lab.id in depth and lab.id not in truly_moving}
        for _, beta, inp in dsa_stage.frame_scales(cfg, net, item, static, roads=dsa_stage.sample_road_ids(cfg, ds, idx)):
            m = inp.mask & (pred.depth > 0)
            if not m.any():
                continue
            err_net.append(float(np.median(np.abs(beta * inp.norm_depth[m] / pred.depth[m] - 1))))
            a = float(np.exp(inp.log_anchor))
            err_anchor.append(float(np.median(np.abs(a * inp.norm_depth[m] / pred.depth[m] - 1))))
            anchor_ok.append(inp.anchor_ok)
            g = m & (gt > ev.min_depth) & (gt < ev.max_depth)
            if g.sum() >= 5:
                err_gt.append(float(np.median(np.abs(beta * inp.norm_depth[g] / gt[g] - 1))))
                err_gt_anchor.append(float(np.median(np.abs(a * inp.norm_depth[g] / gt[g] - 1))))
                err_gt_scene.append(float(np.median(np.abs(pred.depth[g] / gt[g] - 1))))
        # 3. pseudo labels vs stage 1
        if not (gt > 0).any():
            continue
        frames += 1
        inst = frame_instances(seq, t)
        lead = lead_car_ids(inst, travel_direction(seq, t, cfg.data.frame_gap), ev) if inst else set()
        regions = {'dynamic': moving.astype(bool), 'lead': np.isin(mask, sorted(lead)) if lead else
                   np.zeros_like(moving, bool)}
        scene_acc.add(evaluate_frame(gt, pred.depth, regions, ev.min_depth, ev.max_depth))
        pseudo_acc.add(evaluate_frame(gt, pseudo.frame(split, seq_name, t).depth, regions, ev.min_depth, ev.max_depth))

    def med(v):
        return float(np.median(v)) if v else None

    scene_sum, pseudo_sum = scene_acc.summary(), pseudo_acc.summary()
    ratios = {}
    for mode in ('median_scaled', 'metric'):
        for region in REGIONS:
            a = (scene_sum.get(mode) or {}).get(region)
            b = (pseudo_sum.get(mode) or {}).get(region)
            if a and b and a['abs_rel'] > 0:
                ratios[f'{mode}/{region}'] = b['abs_rel'] / a['abs_rel']
    report = {
        'split': split, 'created': now_iso(), 'run_dir': str(run_dir.resolve()),
        'labelling': labelling,
        'dsa_static_objects': {'objects': len(err_net), 'anchor_ok_fraction': float(np.mean(anchor_ok)) if anchor_ok else None,
                               'scale_error_vs_scene': med(err_net), 'anchor_scale_error_vs_scene': med(err_anchor),
                               'objects_with_gt': len(err_gt), 'error_vs_gt': med(err_gt),
                               'anchor_error_vs_gt': med(err_gt_anchor), 'stage1_error_vs_gt': med(err_gt_scene)},
        'frames': frames,
        'stage1': scene_sum, 'pseudo_labels': pseudo_sum, 'abs_rel_ratio_pseudo_over_stage1': ratios,
    }
    write_json_atomic(dsa_dir / f'method_eval_{split}.json', report)
    write_text_atomic(dsa_dir / f'method_eval_{split}.md', method_markdown(report))
    return report


def _f(v, fmt='.3f'):
    return '-' if v is None else format(v, fmt)


def method_markdown(r: dict) -> str:
    lines = [f'# Stages 2-3 on the {r["split"]} split', '', '## Static/dynamic labelling (vs the moving flags)', '',
             '| split | instances | moving | labelled dynamic | precision | recall | lead-car recall (n) |',
             '|---|---|---|---|---|---|---|']
    for s, m in r['labelling'].items():
        lines.append(f'| {s} | {m["instances"]} | {m["moving"]} | {m["labelled_dynamic"]} | {_f(m["precision"])} | '
                     f'{_f(m["recall"])} | {_f(m["lead_car_recall"])} ({m["lead_car_instances"]}) |')
    d = r['dsa_static_objects']
    lines += ['', f'## DSA on held-out static objects ({d["objects"]} objects, {d["objects_with_gt"]} with GT)', '',
              '| scale | median \\|β·D̃/D_scene − 1\\| | median \\|β·D̃/D_GT − 1\\| |', '|---|---|---|',
              f'| DSA network | {_f(d["scale_error_vs_scene"])} | {_f(d["error_vs_gt"])} |',
              f'| geometric anchor alone | {_f(d["anchor_scale_error_vs_scene"])} | {_f(d["anchor_error_vs_gt"])} |',
              f'| stage-1 scene depth itself | 0 | {_f(d["stage1_error_vs_gt"])} |', '',
              f'## Pseudo labels vs stage-1 depth ({r["frames"]} frames)', '',
              '| mode | region | frames | stage-1 AbsRel | pseudo AbsRel | ratio | stage-1 δ<1.25 | pseudo δ<1.25 |',
              '|---|---|---|---|---|---|---|---|']
    for mode in ('median_scaled', 'metric'):
        for region in REGIONS:
            a = (r['stage1'].get(mode) or {}).get(region)
            b = (r['pseudo_labels'].get(mode) or {}).get(region)
            if not a or not b:
                continue
            lines.append(f'| {mode} | {region} | {a["frames"]} | {a["abs_rel"]:.3f} | {b["abs_rel"]:.3f} | '
                         f'{b["abs_rel"] / a["abs_rel"]:.2f} | {a["a1"]:.3f} | {b["a1"]:.3f} |')
    lines.append('')
    return '\n'.join(lines) + '\n'
