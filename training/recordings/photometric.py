"""Photometric error per stage on a held-out split: how well each stage's depth, pose and residual motion
re-render frame t from frames t-1 and t+1 it never trained on. It needs no ground truth, so it is the figure a
run on recordings without depth or lidar can report.

The error is the stage-1 loss's photometric term at full resolution: per pixel the minimum over the two source
frames of 0.85 * (1 - SSIM) / 2 + 0.15 * L1 (colours in [0, 1]),
over the pixels that land inside at least one source frame (no auto-masking, so every stage is scored on the
same pixels), per frame, then averaged over frames. Next to it the same error of the unwarped source frames
(the identity baseline, on the pixels of the first stage scored): a stage that learned geometry scores below it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dynadepth_ros.atomic_files import write_json_atomic
from training.artifacts import read_manifest
from training.data import build_dataset
from training.losses import INVALID_ERROR, photometric_error
from training.loop import to_device
from training.geometry import warp
from training.stages.scene_model import OFFSETS

STAGE_MODEL_FILES = {'scene': 'scene_model.pt', 'final': 'final_model.pt'}


@torch.no_grad()
def photometric_errors(run_dir: str | os.PathLike, split: str = 'test', stages: tuple[str, ...] = ('scene', 'final'),
                       batch_size: int = 4, device: str = 'cpu') -> dict:
    """{'split', 'frames', 'identity', '<stage>': mean error} for the finished stages among `stages`;
    also written to <run_dir>/photometric_<split>.json."""
    from training.stages import scene as scene_stage

    run_dir = Path(run_dir)
    out: dict = {'split': split, 'error': 'per pixel min over t-1/t+1 of 0.85*(1-SSIM)/2 + 0.15*L1 (in-view pixels, full resolution), mean per frame, then over frames'}
    ds = None
    for stage in stages:
        if read_manifest(run_dir / stage) is None:
            continue
        model, cfg, _ = scene_stage.load_model(run_dir / stage, device, model_file=STAGE_MODEL_FILES[stage],
                                               stage=stage)
        if ds is None:
            ds = build_dataset(cfg.data, split, augment=False)
            loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
        total = ident = 0.0
        frames = 0
        for batch in loader:
            batch = to_device(batch, torch.device(device))
            frames_raw, K, inv_K = batch['frames_raw'], batch['K'], batch['inv_K']
            pred = model.predict(batch)
            _, _, poses = model._depth_and_pose(batch['frames'])
            flows = {-1: pred['flow_prev'], 1: pred['flow_next']}
            target = frames_raw[:, 1]
            sources = [frames_raw[:, off + 1] for off in OFFSETS]
            warped, valid = [], []
            for off in OFFSETS:
                img, ok = warp(frames_raw[:, off + 1], pred['depth'], K, inv_K, poses[off][0], flows[off])
                warped.append(img)
                valid.append(ok)
            w = cfg.scene.model.ssim_weight
            err = torch.cat([torch.where(ok > 0.5, photometric_error(img, target, w), torch.full_like(ok, INVALID_ERROR))
                             for img, ok in zip(warped, valid)], 1).min(1).values          # [B,H,W]
            seen = err < INVALID_ERROR
            idt = torch.cat([photometric_error(src, target, w) for src in sources], 1).min(1).values
            for e, i, m in zip(err, idt, seen):     # per frame, then averaged over frames
                if m.any():
                    total += float(e[m].mean())
                    ident += float(i[m].mean())
                    frames += 1
        out[stage] = total / max(frames, 1)
        out.setdefault('identity', ident / max(frames, 1))
        out['frames'] = frames
    write_json_atomic(run_dir / f'photometric_{split}.json', out)
    return out
