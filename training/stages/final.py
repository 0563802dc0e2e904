"""Stage 4 (`python -m training final`): the final depth network (reference §3.4).

Starts from the stage-1 weights (depth, pose, residual motion) and trains all three with the
stage-1 self-supervised losses of the joint phase plus a pseudo-label term on dynamic-object pixels
only. Writes in `<run_dir>/final/`:

    final_model.pt      the SceneModel weights (last checkpoint)
    final.onnx          the depth network in the design §3 format (dynadepth.stage = final)
    unexplained/<split>/<seq>/<frame:06d>.png   with final.unexplained_motion > 0: 1 on the pixels whose
                        optical flow stage 1's depth and camera motion do not explain (left out of the
                        photometric and static-anchor terms unless labelled dynamic); written once, reused
    checkpoints/, metrics.csv, metrics.png, previews/, config.yaml, manifest.json

Pseudo-label term (weight final.pseudo_weight, reference 0.1): for each scale's full-resolution
depth D, the stage-3 label P is aligned by k = median(D / P) over the label's NON-dynamic valid
pixels (no gradient; k ≈ 1 for a metric model started from stage 1), then the loss is the mean of
|D − k·P| (metres, L1 on depth as the reference) over the dynamic pixels, averaged over scales. The
reference took the median over the whole image and dropped pixels beyond the 90th percentile of
the prediction, which silently removes distant dynamic objects (§6.9); we align on the static part,
where the label is the stage-1 depth, and keep every dynamic pixel.

Two options depart from the reference (config final.*; defaults = the reference): pseudo_loss
'relative' divides each pixel's error by its label (the metres form, through the sigmoid-disparity
output, weights a pixel's pull by depth squared, so the least certain, distant labels dominate), and
static_weight > 0 adds the relative L1 to the label on the static pixels (the stage-1 depth there),
which holds the static scene where stage 1 had it; scale_weight > 0 adds |mean log(D / P)| over each
image's static pixels, which holds only the scene's scale there and leaves its shape free (measured worse
than the anchor, docs/training.md); pseudo_align 'none' drops k (k = 1: the labels have the scale of the
stage-1 network stage 4 starts from, and a k that follows the network lets the whole scene drift nearer
with the dynamic pixels). What cpu-small uses and why is in its preset.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dynadepth_ros.atomic_files import write_json_atomic
from training import checkpoint as ckpt_io
from training.artifacts import file_entry, read_manifest
from training.config import PipelineConfig, to_dict
from training.data import build_dataset
from training.data.triplets import Layer
from training.export import export_depth_onnx, sample_frames
from training.loop import Phase, train
from training.stages import scene as scene_stage
from training.stages.outputs import GroundMaps, LabelMaps, PseudoLabels, ScenePredictions
from training.stages.runner import StageContext, StageError, data_settings, run_stage
from training.stages.scene_model import SceneModel

NAME = 'final'
REQUIRES = ('scene', 'dsa')
MODEL_FILE = 'final_model.pt'
ONNX_FILE = 'final.onnx'
UNEXPLAINED_DIR = 'unexplained'


def hash_parts(cfg: PipelineConfig) -> tuple[dict, dict]:
    f = to_dict(cfg.final)
    if cfg.final.unexplained_motion > 0:
        f['unexplained_min_rigid_px'] = cfg.masks.seeds.optical_min_rigid_px
    return ({'stage': NAME, 'data': data_settings(cfg), 'model': to_dict(cfg.scene.model), 'final': f},
            {'export': cfg.export.hash_settings()})


def run(cfg: PipelineConfig, run_dir, dist=None, *, restart: bool = False):
    return run_stage(NAME, cfg, run_dir, dist, restart=restart)


def pseudo_label_loss(depths: dict[int, torch.Tensor], label: torch.Tensor, dynamic: torch.Tensor,
                      mode: str = 'l1', align: str = 'static') -> tuple[torch.Tensor, float]:
    """Mean over scales of the aligned L1 on dynamic pixels (module docstring); mode 'relative' divides
    each pixel's error by its aligned label; align 'none' takes the label as it is (k = 1, metric runs).
    depths {s: [B,1,H,W]}; label [B,1,H,W] metres (0 = none); dynamic bool [B,1,H,W].
    Returns (loss, pixels counted)."""
    dyn = dynamic.bool() & (label > 0)
    static = (~dynamic.bool()) & (label > 0)
    if not dyn.any():
        return torch.zeros((), device=label.device), 0.0
    terms = []
    for d in depths.values():
        with torch.no_grad():
            k = torch.ones(d.shape[0], 1, 1, 1, device=d.device, dtype=d.dtype)
            if align == 'static':
                for b in range(d.shape[0]):
                    if static[b].sum() >= 10:
                        k[b] = torch.median(d[b][static[b]] / label[b][static[b]])
        target = k * label
        err = (d - target).abs()
        if mode == 'relative':
            err = err / target.clamp(min=1e-3)
        terms.append(err[dyn].mean())
    return torch.stack(terms).mean(), float(dyn.sum())


def static_anchor_loss(depths: dict[int, torch.Tensor], label: torch.Tensor, dynamic: torch.Tensor) -> torch.Tensor:
    """Mean over scales of |D - P| / P on the label's static pixels, where P is the stage-1 depth: keeps
    the static scene where stage 1 had it while the dynamic pixels move to their labels."""
    static = (~dynamic.bool()) & (label > 0)
    if not static.any():
        return torch.zeros((), device=label.device)
    return torch.stack([((d - label).abs() / label.clamp(min=1e-3))[static].mean() for d in depths.values()]).mean()


def scale_hold_loss(depths: dict[int, torch.Tensor], label: torch.Tensor, dynamic: torch.Tensor,
                    min_pixels: int = 10) -> torch.Tensor:
    """Mean over scales and images of |mean of log(D / P) over the label's static pixels| (P the stage-1 depth):
    zero whenever each image's static scene keeps stage 1's scale on average, whatever its shape. Images with
    fewer than min_pixels static pixels are left out."""
    static = (~dynamic.bool()) & (label > 0)
    counts = static.flatten(1).sum(1)
    keep = counts >= min_pixels
    if not keep.any():
        return torch.zeros((), device=label.device)
    log_label = torch.log(label.clamp(min=1e-3))
    terms = []
    for d in depths.values():
        ratio = torch.where(static, torch.log(d.clamp(min=1e-3)) - log_label, torch.zeros_like(d))
        per_image = ratio.flatten(1).sum(1) / counts.clamp(min=1)
        terms.append(per_image[keep].abs().mean())
    return torch.stack(terms).mean()


class FinalModel(SceneModel):
    """The stage-1 model with the pseudo-label term (batches carry pseudo_depth and pseudo_dynamic)."""

    def __init__(self, config, pseudo_weight: float = 0.1, pseudo_loss: str = 'l1', static_weight: float = 0.0,
                 dynamic_photometric: bool = True, pseudo_align: str = 'static', decoder: str = 'elu_reflect',
                 scale_weight: float = 0.0):
        """Batches may also carry `unexplained` (final.unexplained_motion): pixels that are not labelled
        dynamic there leave the photometric and static-anchor terms."""
        super().__init__(config, decoder)
        self.pseudo_align = pseudo_align
        self.pseudo_weight = float(pseudo_weight)
        self.pseudo_loss = pseudo_loss
        self.static_weight = float(static_weight)
        self.scale_weight = float(scale_weight)
        self.dynamic_photometric = bool(dynamic_photometric)

    def photometric_keep(self, batch, target):
        dynamic, unexplained = _as_4d(batch.get('pseudo_dynamic')), _as_4d(batch.get('unexplained'))
        drop = None
        if not self.dynamic_photometric and dynamic is not None:
            drop = dynamic
        if unexplained is not None:
            loose = unexplained if dynamic is None else unexplained & ~dynamic
            drop = loose if drop is None else drop | loose
        if drop is None:
            return None
        return (~drop.to(target.device)).to(target.dtype)

    def extra_loss(self, batch, depths):
        label, dynamic = batch.get('pseudo_depth'), batch.get('pseudo_dynamic')
        if label is None or dynamic is None:
            return super().extra_loss(batch, depths)
        if label.dim() == 3:
            label, dynamic = label[:, None], dynamic[:, None]
        label = label.to(depths[0].dtype)
        unexplained = _as_4d(batch.get('unexplained'))
        if unexplained is not None:     # neither anchored nor used to align: the label there is stage 1's
            label = torch.where(unexplained.to(label.device) & ~dynamic.bool(), torch.zeros_like(label), label)
        loss, n = pseudo_label_loss(depths, label, dynamic, self.pseudo_loss, self.pseudo_align)
        total = self.pseudo_weight * loss
        logs = {'pseudo_loss': loss.item(), 'pseudo_pixels': n}
        if self.static_weight > 0:
            anchor = static_anchor_loss(depths, label, dynamic)
            total = total + self.static_weight * anchor
            logs['static_anchor'] = anchor.item()
        if self.scale_weight > 0:
            hold = scale_hold_loss(depths, label, dynamic)
            total = total + self.scale_weight * hold
            logs['scale_hold'] = hold.item()
        return total, logs


def _as_4d(mask: torch.Tensor | None) -> torch.Tensor | None:
    """bool [B,1,H,W] of a batch mask layer ([B,H,W] or [B,1,H,W]), None stays None."""
    if mask is None:
        return None
    return (mask[:, None] if mask.dim() == 3 else mask).bool()


def _loss(model, batch, phase):
    return model.loss(batch, phase)


def pseudo_layers(dsa_dir: Path, unexplained: LabelMaps | None = None):
    reader = PseudoLabels(dsa_dir)

    def layers(split, seq, t):
        p = reader.frame(split, seq, t)
        out = {'pseudo_depth': Layer(p.depth, 'depth'), 'pseudo_dynamic': Layer(p.dynamic, 'mask')}
        if unexplained is not None:
            out['unexplained'] = Layer(unexplained.frame(split, seq, t) > 0, 'mask')
        return out
    return layers


def write_unexplained(ctx: StageContext, split: str) -> dict:
    """The unexplained-motion mask of every triplet centre frame of `split` (module docstring), from stage 1's
    depth predictions and pose network; frames already written are kept (the stage's hash covers the
    threshold). Where the run has a ground network's road (learned masks: masks/ground), it is never
    flagged: the road is where optical flow is least reliable (little texture, the focus of expansion) and a
    moving object is never road. Returns {'frames', 'written', 'share'} (share: mean fraction of pixels flagged)."""
    from training.stages import learned_masks
    from training.stages.mask_seeds import optical_cue, stage1_pose

    cfg = ctx.cfg
    root = ctx.stage_dir / UNEXPLAINED_DIR
    threshold = cfg.final.unexplained_motion
    settings = {'unexplained_motion': threshold,
                'optical_min_rigid_px': cfg.masks.seeds.optical_min_rigid_px,
                'scene': (read_manifest(ctx.upstream_dir('scene')) or {}).get('config_hash')}
    grounds = None
    if learned_masks(cfg) and read_manifest(ctx.upstream_dir('ground')) is not None:
        grounds = GroundMaps(ctx.upstream_dir('ground'))
        settings['ground'] = read_manifest(ctx.upstream_dir('ground')).get('config_hash')
    if (root / 'settings.json').is_file() and json.loads((root / 'settings.json').read_text()) != settings:
        shutil.rmtree(root)         # masks of another threshold or another stage 1 (a killed earlier run)
    write_json_atomic(root / 'settings.json', settings)
    maps = LabelMaps(root, 'stage 4 (python -m training final)')
    ds = build_dataset(cfg.data, split, augment=False)
    preds, pose, written, shares = ScenePredictions(ctx.upstream_dir('scene')), None, 0, []
    for index in tqdm(range(len(ds)), desc=f'unexplained motion ({split})', disable=not cfg.runtime.progress,
                      mininterval=2.0):
        seq, t = ds.sample_location(index)
        if maps.exists(split, seq, t):
            shares.append(float((maps.frame(split, seq, t) > 0).mean()))
            continue
        if pose is None:
            pose = stage1_pose(ctx.upstream_dir('scene'))
        cue, _ = optical_cue(ds[index], preds.frame(split, seq, t).depth,
                             lambda off, frames: pose(index, off, frames), cfg.masks.seeds.optical_min_rigid_px)
        flagged = np.isfinite(cue) & (np.abs(np.nan_to_num(cue)) >= threshold)
        if grounds is not None:
            flagged &= grounds.frame(split, seq, t) < 0.5
        maps.write(split, seq, t, flagged.astype(np.uint16))
        shares.append(float(flagged.mean()))
        written += 1
    return {'frames': len(shares), 'written': written, 'share': float(np.mean(shares)) if shares else 0.0}


def write_unexplained_previews(ctx: StageContext, split: str, maps: LabelMaps, n: int = 4) -> list[str]:
    """previews/unexplained_<split>_<k>.png of n frames spread over the split: RGB | pixels labelled dynamic
    (their pseudo labels set the depth) | unexplained pixels that are not (left out of the photometric and
    static-anchor terms)."""
    from training.previews import compose, write_png
    from training.stages.mask_seeds import overlay_ids

    ds = build_dataset(ctx.cfg.data, split, augment=False)
    labels = PseudoLabels(ctx.upstream_dir('dsa'))
    out = []
    for k, i in enumerate(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int).tolist()):
        seq, t = ds.sample_location(i)
        rgb = (ds[i]['frames_raw'][1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        dynamic = labels.frame(split, seq, t).dynamic
        left_out = (maps.frame(split, seq, t) > 0) & ~dynamic
        panels = {f'rgb {seq}/{t}': rgb, 'labelled dynamic': overlay_ids(rgb, dynamic.astype(np.int32)),
                  f'unexplained motion >= {ctx.cfg.final.unexplained_motion:g}, left out':
                      overlay_ids(rgb, 2 * left_out.astype(np.int32))}
        path = ctx.stage_dir / 'previews' / f'unexplained_{split}_{k}.png'
        write_png(path, compose(panels, columns=3))
        out.append(path.name)
    return out


def execute(ctx: StageContext) -> dict | None:
    cfg, dist, stage_dir = ctx.cfg, ctx.dist, ctx.stage_dir
    fc = cfg.final
    ckpt_io.seed_everything(fc.loop.seed)
    model = FinalModel(cfg.scene.model, fc.pseudo_weight, fc.pseudo_loss, fc.static_weight, fc.dynamic_photometric,
                       fc.pseudo_align, fc.decoder, fc.scale_weight)
    scene_model, _, scene_manifest = scene_stage.load_model(ctx.upstream_dir('scene'))
    model.load_state_dict(scene_model.state_dict())
    del scene_model
    val_set = scene_stage.optional_dataset(cfg, 'val', dist)
    unexplained, unexplained_stats, splits = None, {}, []
    if cfg.final.unexplained_motion > 0:
        if 'train' not in cfg.scene.predict_splits:
            raise StageError('final.unexplained_motion needs stage 1\'s predictions of the train split: add train to '
                             'scene.predict_splits (or set final.unexplained_motion=0)')
        splits = ['train'] + (['val'] if val_set is not None and 'val' in cfg.scene.predict_splits else [])
        if dist.is_main:
            for split in splits:
                unexplained_stats[split] = write_unexplained(ctx, split)
                ctx.log(f'unexplained motion ({split}): {unexplained_stats[split]["frames"]} frames, '
                        f'{100 * unexplained_stats[split]["share"]:.1f} % of the pixels on average')
            unexplained_stats['previews'] = write_unexplained_previews(
                ctx, 'train', LabelMaps(stage_dir / UNEXPLAINED_DIR))
        dist.barrier()
        unexplained = LabelMaps(stage_dir / UNEXPLAINED_DIR, 'stage 4 (python -m training final)')
    triplets = build_dataset(cfg.data, 'train', augment=True, seed=fc.loop.seed)
    triplets.layers = pseudo_layers(ctx.upstream_dir('dsa'), unexplained)
    if val_set is not None:
        val_set.layers = pseudo_layers(ctx.upstream_dir('dsa'), unexplained if 'val' in splits else None)
    phases = [Phase(p.name, p.steps, tuple(model.trainable(p.name)), p.lr, tuple(p.lr_decay_at), p.lr_decay)
              for p in fc.phases]
    ctx.log(f'{len(triplets)} training triplets with pseudo labels; {sum(p.steps for p in phases)} steps of batch '
            f'{fc.loop.batch_size}' + (f' x {dist.world_size} processes' if dist.distributed else ''))
    result = train(model, _loss, triplets, phases, fc.loop, stage_dir, config_hash=ctx.hashes.train, dist=dist,
                   val_set=val_set, val_fn=lambda m, b, p: m.loss(b, p)[1], num_workers=cfg.runtime.num_workers,
                   progress=cfg.runtime.progress, debug_param_digest=cfg.runtime.debug_param_digest, desc='final')
    if not dist.is_main:
        return None
    model.eval()
    ckpt_io.save_atomic({'format': ckpt_io.CHECKPOINT_FORMAT, 'stage': NAME, 'model': model.state_dict(),
                         'config_hash': ctx.hashes.train, 'global_step': result.global_step}, stage_dir / MODEL_FILE)
    metric, intrinsics, meta, report = export_final_network(ctx, model.depth, scene_manifest, ONNX_FILE)
    return {
        'training': {'steps': result.global_step, 'phases': [[p.name, p.steps] for p in fc.phases],
                     'batch_size': fc.loop.batch_size, 'world_size': dist.world_size,
                     'resumed_from': result.resumed_from, 'steps_this_run': result.trained_steps,
                     'seconds_per_step': result.seconds_per_step, 'pseudo_weight': fc.pseudo_weight,
                     'pseudo_loss': fc.pseudo_loss, 'static_weight': fc.static_weight, 'scale_weight': fc.scale_weight,
                     'dynamic_photometric': fc.dynamic_photometric, 'pseudo_align': fc.pseudo_align,
                     'unexplained_motion': cfg.final.unexplained_motion},
        'unexplained_motion': unexplained_stats,
        'model_selection': 'last checkpoint (label-free)',
        'metric': metric, 'intrinsics': list(intrinsics),
        'files': {'checkpoint': file_entry(stage_dir, MODEL_FILE), 'onnx': file_entry(stage_dir, ONNX_FILE)},
        'onnx': {'metadata': meta.to_props(), 'check': report},
    }


def export_final_network(ctx: StageContext, depth_net, scale_manifest: dict, onnx_file: str):
    """Export a final depth network to ctx.stage_dir/onnx_file (design §3, dynadepth.stage = final) with the
    metric flag and intrinsics of `scale_manifest` (the stage whose scale it has) and check it against torch
    on real frames. Returns (metric, intrinsics, metadata, export report)."""
    cfg = ctx.cfg
    metric = bool(scale_manifest.get('metric'))
    intrinsics = scale_manifest.get('intrinsics') or build_dataset(cfg.data, 'train', augment=False).median_intrinsics()
    meta = scene_stage.model_metadata(cfg, ctx.hashes.config, metric, intrinsics, stage=NAME)
    ctx.log(f'exporting {onnx_file} and checking it against torch')
    report = export_depth_onnx(depth_net, ctx.stage_dir / onnx_file, meta, opset=cfg.export.opset,
                               frames=sample_frames(build_dataset(cfg.data, 'train', augment=False)),
                               max_batch=cfg.export.max_batch, tolerance=cfg.export.tolerance)
    ctx.log(f'wrote {ctx.stage_dir / onnx_file} (max |torch - onnxruntime| = {report["max_abs_diff"]:.2e} m)')
    return metric, intrinsics, meta, report


def load_depth_net(stage_dir: str | os.PathLike, device: str | torch.device = 'cpu'):
    """(DepthNet in eval mode, PipelineConfig, manifest) of a finished stage 4."""
    model, cfg, manifest = scene_stage.load_model(stage_dir, device, model_file=MODEL_FILE, stage=NAME)
    return model.depth, cfg, manifest


def model_metadata(cfg: PipelineConfig, config_hash: str, metric: bool, intrinsics):
    return scene_stage.model_metadata(cfg, config_hash, metric, intrinsics, stage=NAME)
