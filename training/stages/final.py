"""Stage 4 (`python -m training final`): the final depth network (reference §3.4).

Starts from the stage-1 weights (depth, pose, residual motion) and trains all three with the
stage-1 self-supervised losses of the joint phase plus a pseudo-label term on dynamic-object pixels
only. Writes in `<run_dir>/final/`:

    final_model.pt      the SceneModel weights (last checkpoint)
    final.onnx          the depth network in the design §3 format (dynadepth.stage = final)
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
which holds the static scene where stage 1 had it; pseudo_align 'none' drops k (k = 1: the labels
have the scale of the stage-1 network stage 4 starts from, and a k that follows the network lets the
whole scene drift nearer with the dynamic pixels). What cpu-small uses and why is in its preset.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from training import checkpoint as ckpt_io
from training.artifacts import file_entry
from training.config import PipelineConfig, to_dict
from training.data import build_dataset
from training.data.triplets import Layer
from training.export import export_depth_onnx, sample_frames
from training.loop import Phase, train
from training.stages import scene as scene_stage
from training.stages.outputs import PseudoLabels
from training.stages.runner import StageContext, data_settings, run_stage
from training.stages.scene_model import SceneModel

NAME = 'final'
REQUIRES = ('scene', 'dsa')
MODEL_FILE = 'final_model.pt'
ONNX_FILE = 'final.onnx'


def hash_parts(cfg: PipelineConfig) -> tuple[dict, dict]:
    f = to_dict(cfg.final)
    return ({'stage': NAME, 'data': data_settings(cfg), 'model': to_dict(cfg.scene.model), 'final': f},
            {'export': to_dict(cfg.export)})


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


class FinalModel(SceneModel):
    """The stage-1 model with the pseudo-label term (batches carry pseudo_depth and pseudo_dynamic)."""

    def __init__(self, config, pseudo_weight: float = 0.1, pseudo_loss: str = 'l1', static_weight: float = 0.0,
                 dynamic_photometric: bool = True, pseudo_align: str = 'static', decoder: str = 'elu_reflect'):
        super().__init__(config, decoder)
        self.pseudo_align = pseudo_align
        self.pseudo_weight = float(pseudo_weight)
        self.pseudo_loss = pseudo_loss
        self.static_weight = float(static_weight)
        self.dynamic_photometric = bool(dynamic_photometric)

    def photometric_keep(self, batch, target):
        dynamic = batch.get('pseudo_dynamic')
        if self.dynamic_photometric or dynamic is None:
            return None
        if dynamic.dim() == 3:
            dynamic = dynamic[:, None]
        return (~dynamic.to(target.device).bool()).to(target.dtype)

    def extra_loss(self, batch, depths):
        label, dynamic = batch.get('pseudo_depth'), batch.get('pseudo_dynamic')
        if label is None or dynamic is None:
            return super().extra_loss(batch, depths)
        if label.dim() == 3:
            label, dynamic = label[:, None], dynamic[:, None]
        label = label.to(depths[0].dtype)
        loss, n = pseudo_label_loss(depths, label, dynamic, self.pseudo_loss, self.pseudo_align)
        total = self.pseudo_weight * loss
        logs = {'pseudo_loss': loss.item(), 'pseudo_pixels': n}
        if self.static_weight > 0:
            anchor = static_anchor_loss(depths, label, dynamic)
            total = total + self.static_weight * anchor
            logs['static_anchor'] = anchor.item()
        return total, logs


def _loss(model, batch, phase):
    return model.loss(batch, phase)


def pseudo_layers(dsa_dir: Path):
    reader = PseudoLabels(dsa_dir)

    def layers(split, seq, t):
        p = reader.frame(split, seq, t)
        return {'pseudo_depth': Layer(p.depth, 'depth'), 'pseudo_dynamic': Layer(p.dynamic, 'mask')}
    return layers


def execute(ctx: StageContext) -> dict | None:
    cfg, dist, stage_dir = ctx.cfg, ctx.dist, ctx.stage_dir
    fc = cfg.final
    ckpt_io.seed_everything(fc.loop.seed)
    model = FinalModel(cfg.scene.model, fc.pseudo_weight, fc.pseudo_loss, fc.static_weight, fc.dynamic_photometric,
                       fc.pseudo_align, fc.decoder)
    scene_model, _, scene_manifest = scene_stage.load_model(ctx.upstream_dir('scene'))
    model.load_state_dict(scene_model.state_dict())
    del scene_model
    triplets = build_dataset(cfg.data, 'train', augment=True, seed=fc.loop.seed)
    triplets.layers = pseudo_layers(ctx.upstream_dir('dsa'))
    val_set = scene_stage.optional_dataset(cfg, 'val', dist)
    if val_set is not None:
        val_set.layers = pseudo_layers(ctx.upstream_dir('dsa'))
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
    metric = bool(scene_manifest.get('metric'))
    intrinsics = scene_manifest.get('intrinsics') or build_dataset(cfg.data, 'train', augment=False).median_intrinsics()
    meta = scene_stage.model_metadata(cfg, ctx.hashes.config, metric, intrinsics, stage=NAME)
    ctx.log('exporting the final depth network to ONNX and checking it against torch')
    report = export_depth_onnx(model.depth, stage_dir / ONNX_FILE, meta, opset=cfg.export.opset,
                               frames=sample_frames(build_dataset(cfg.data, 'train', augment=False)),
                               max_batch=cfg.export.max_batch, tolerance=cfg.export.tolerance)
    ctx.log(f'wrote {stage_dir / ONNX_FILE} (max |torch - onnxruntime| = {report["max_abs_diff"]:.2e} m)')
    return {
        'training': {'steps': result.global_step, 'phases': [[p.name, p.steps] for p in fc.phases],
                     'batch_size': fc.loop.batch_size, 'world_size': dist.world_size,
                     'resumed_from': result.resumed_from, 'steps_this_run': result.trained_steps,
                     'seconds_per_step': result.seconds_per_step, 'pseudo_weight': fc.pseudo_weight,
                     'pseudo_loss': fc.pseudo_loss, 'static_weight': fc.static_weight,
                     'dynamic_photometric': fc.dynamic_photometric, 'pseudo_align': fc.pseudo_align},
        'model_selection': 'last checkpoint (label-free)',
        'metric': metric, 'intrinsics': list(intrinsics),
        'files': {'checkpoint': file_entry(stage_dir, MODEL_FILE), 'onnx': file_entry(stage_dir, ONNX_FILE)},
        'onnx': {'metadata': meta.to_props(), 'check': report},
    }


def load_depth_net(stage_dir: str | os.PathLike, device: str | torch.device = 'cpu'):
    """(DepthNet in eval mode, PipelineConfig, manifest) of a finished stage 4."""
    model, cfg, manifest = scene_stage.load_model(stage_dir, device, model_file=MODEL_FILE, stage=NAME)
    return model.depth, cfg, manifest


def model_metadata(cfg: PipelineConfig, config_hash: str, metric: bool, intrinsics):
    return scene_stage.model_metadata(cfg, config_hash, metric, intrinsics, stage=NAME)
