"""Where is a moving object's scale lost? (`python -m training trace --run-dir R --split val`)

Follows every instance of a split (one that stages 2-3 ran on, so train or val) through the
pipeline, using what only data with ground truth knows (the moving flags, the GT depth), never
used by the stages:

    stage 2     was it labelled dynamic, labelled static, or not labelled at all (too small, on the
                road, no mask in a neighbouring frame)?
    stage 1     its scale in the scene depth: median over its pixels of depth / GT
    stage 3     its scale in the pseudo label the final network trains on (DSA-aligned object depth
                when labelled dynamic, the stage-1 depth otherwise)
    stage 4     its scale in the final network's prediction, and the uptake: how much of the gap
                between stage 1 and the pseudo label the final network closed,
                (log s1 - log final) / (log s1 - log pseudo), from the group medians

grouped like dynadepth_ros.object_scale (moving objects by label, by motion against the ego and by
distance; static objects, and those wrongly labelled dynamic). On the train split the uptake says
whether stage 4 learns its labels at all; on val, whether that carries to frames it never saw.

The final depth comes from the run's stage 4 when it has one, or from any exported model
(`--model final.onnx`, run through the node's inference core). Writes
<run_dir>/dsa/object_trace_<split>.json and .md.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dynadepth_ros.atomic_files import write_json_atomic, write_text_atomic
from dynadepth_ros.object_scale import MIN_PIXELS, distance_bin, distance_bin_names, motion_class, scale_stats
from training.artifacts import now_iso
from training.data import build_dataset
from training.evaluate import frame_instances, travel_direction
from training.stages import scene as scene_stage
from training.stages.outputs import ObjectLabels, PseudoLabels, ScenePredictions, learned_masks_root

COLUMNS = ('stage1', 'pseudo', 'final')


def _scale(values: np.ndarray, gt: np.ndarray, sel: np.ndarray) -> float | None:
    ok = sel & np.isfinite(values) & (values > 0)
    if ok.sum() < MIN_PIXELS:
        return None
    return float(np.median(values[ok] / gt[ok]))


class _FinalDepth:
    """The final network's depth at the network resolution: the run's stage 4, or an exported model."""

    def __init__(self, run_dir: Path, model: str | os.PathLike | None):
        self.net = self.estimator = None
        if model is not None:
            from dynadepth_ros.inference import DepthEstimator
            self.source = str(model)
            self.estimator = DepthEstimator(model, backend='onnxruntime', fallback=False, max_batch=1)
        elif (run_dir / 'final' / 'manifest.json').is_file():
            from training.stages import final as final_stage
            self.source = str(run_dir / 'final')
            self.net, _, _ = final_stage.load_depth_net(run_dir / 'final')
        else:
            raise FileNotFoundError(f'{run_dir / "final"} has no finished stage 4: run `python -m training final '
                                    f'--run-dir {run_dir}` or give an exported final model with --model')

    @torch.no_grad()
    def __call__(self, frame: torch.Tensor, K: np.ndarray) -> np.ndarray:
        """frame float [3,H,W] in [0,1] -> float32 [H,W] metres."""
        if self.net is not None:
            return self.net.depth(frame[None])[0, 0].float().numpy()
        rgb = (frame.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        return self.estimator.infer(rgb, K)

    def close(self):
        if self.estimator is not None:
            self.estimator.close()


def trace_records(run_dir: str | os.PathLike, split: str = 'val', model: str | os.PathLike | None = None,
                  max_frames: int | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """(one record per instance and frame, info). A record: {id, moving, motion, distance, label
    ('dynamic' | 'static' | 'unlabelled'), stage1, pseudo, final (scales, None when the object has too few
    valid pixels)}."""
    run_dir = Path(run_dir)
    _, cfg, _ = scene_stage.load_model(run_dir / 'scene')
    if split not in cfg.objects.splits:
        raise ValueError(f'stages 2-3 ran on {cfg.objects.splits}, not on {split!r}; pick one of those')
    ev = cfg.eval
    ds = build_dataset(cfg.data, split, augment=False, masks=learned_masks_root(cfg, run_dir))
    preds = ScenePredictions(run_dir / 'scene')
    labels = ObjectLabels(run_dir / 'objects', split)
    pseudo = PseudoLabels(run_dir / 'dsa')
    final = _FinalDepth(run_dir, model)
    indices = list(range(len(ds)))
    if max_frames is not None and max_frames < len(indices):
        indices = [indices[int(round(k))] for k in np.linspace(0, len(indices) - 1, max_frames)]
    records = []
    try:
        for idx in tqdm(indices, desc=f'trace objects on {split}', disable=not progress, mininterval=1.0):
            seq_name, t = ds.sample_location(idx)
            seq = ds.sequences[ds.samples[idx][0]]
            instances = frame_instances(seq, t)
            if not instances:
                continue
            item = ds.load(idx)
            gt = item['gt_depth'][0].numpy()
            mask = item['mask'].numpy()
            valid = (gt > ev.min_depth) & (gt < ev.max_depth)
            maps = {'stage1': preds.frame(split, seq_name, t).depth, 'pseudo': pseudo.frame(split, seq_name, t).depth,
                    'final': final(item['frames_raw'][1], item['K'].numpy().astype(np.float64))}
            label_of = {lab.id: lab.label for lab in labels.frame(seq_name, t)}
            ego = travel_direction(seq, t, cfg.data.frame_gap)
            for inst in instances:
                iid = int(inst['id'])
                sel = valid & (mask == iid)
                if iid <= 0 or sel.sum() < MIN_PIXELS:
                    continue
                moving = bool(inst.get('moving'))
                rec = {'frame': f'{seq_name}/{t:06d}', 'id': iid, 'moving': moving,
                       'motion': motion_class(inst.get('velocity'), ego) if moving else 'static',
                       'distance': float(np.median(gt[sel])), 'label': label_of.get(iid, 'unlabelled')}
                rec.update({c: _scale(maps[c], gt, sel) for c in COLUMNS})
                records.append(rec)
    finally:
        final.close()
    return records, {'frames': len(indices), 'final_source': final.source}


def trace_groups(records: list[dict]) -> dict[str, list[dict]]:
    """Moving objects: all, by stage-2 label, by motion, by distance (with the share labelled dynamic);
    static objects: all and those labelled dynamic (false positives)."""
    mv = [r for r in records if r['moving']]
    st = [r for r in records if not r['moving']]
    groups = {'moving': mv}
    for lab in ('dynamic', 'static', 'unlabelled'):
        groups[f'moving, labelled {lab}'] = [r for r in mv if r['label'] == lab]
    for m in ('same', 'oncoming', 'crossing'):
        groups[f'moving/{m}'] = [r for r in mv if r['motion'] == m]
        groups[f'moving/{m}, labelled dynamic'] = [r for r in mv if r['motion'] == m and r['label'] == 'dynamic']
    for d in distance_bin_names():
        groups[f'moving/{d}'] = [r for r in mv if distance_bin(r['distance']) == d]
        groups[f'moving/{d}, labelled dynamic'] = [r for r in mv if distance_bin(r['distance']) == d
                                                    and r['label'] == 'dynamic']
    groups['static'] = st
    groups['static, labelled dynamic'] = [r for r in st if r['label'] == 'dynamic']
    for d in distance_bin_names():
        groups[f'static/{d}'] = [r for r in st if distance_bin(r['distance']) == d]
    return {k: v for k, v in groups.items() if v}


def uptake(s1: float | None, pseudo: float | None, final: float | None) -> float | None:
    """Share of the log gap from stage 1 to the pseudo label that the final network closed (None when the
    gap is under 2 %: nothing to take up)."""
    if None in (s1, pseudo, final) or min(s1, pseudo, final) <= 0:
        return None
    gap = math.log(s1) - math.log(pseudo)
    if abs(gap) < math.log(1.02):
        return None
    return (math.log(s1) - math.log(final)) / gap


def summarise(records: list[dict]) -> dict:
    out = {}
    for name, recs in trace_groups(records).items():
        row = {'objects': len(recs), 'labelled_dynamic': sum(r['label'] == 'dynamic' for r in recs) / len(recs)}
        for c in COLUMNS:
            row[c] = scale_stats(r[c] for r in recs if r[c] is not None)
        med = [row[c]['median'] if row[c] else None for c in COLUMNS]
        row['uptake'] = uptake(*med)
        out[name] = row
    return out


def trace(run_dir: str | os.PathLike, split: str = 'val', model: str | os.PathLike | None = None,
          max_frames: int | None = None, progress: bool = True) -> dict:
    """Trace the split's objects; writes <run_dir>/dsa/object_trace_<split>.json/.md and returns the report."""
    run_dir = Path(run_dir)
    records, info = trace_records(run_dir, split, model, max_frames, progress)
    report = {'split': split, 'created': now_iso(), 'run_dir': str(run_dir.resolve()), **info,
              'groups': summarise(records), 'records': records}
    write_json_atomic(run_dir / 'dsa' / f'object_trace_{split}.json', report)
    write_text_atomic(run_dir / 'dsa' / f'object_trace_{split}.md', trace_markdown(report))
    return report


def _cell(st: dict | None) -> str:
    return '-' if st is None else f'{st["median"]:.2f} [{st["p25"]:.2f}-{st["p75"]:.2f}]'


def trace_markdown(report: dict) -> str:
    lines = [f'# Objects of the {report["split"]} split through the pipeline', '',
             f'{report["frames"]} frames; final depth from {report["final_source"]}. Per object the median over its '
             'pixels of depth / GT (1 = right, >1 = seen farther); per group the median over objects [quartiles]. '
             'Uptake: share of the gap between stage 1 and the pseudo label closed by the final network '
             '(from the medians; - when the gap is under 2 %).', '',
             '| objects | count | labelled dynamic | stage 1 | pseudo label | final | uptake |',
             '|---|---|---|---|---|---|---|']
    for name, row in report['groups'].items():
        up = row['uptake']
        lines.append(f'| {name} | {row["objects"]} | {row["labelled_dynamic"]:.0%} | {_cell(row["stage1"])} | '
                     f'{_cell(row["pseudo"])} | {_cell(row["final"])} | {"-" if up is None else format(up, ".2f")} |')
    return '\n'.join(lines) + '\n'
