"""Optional stage after stage 4 (`python -m training distill`): the final network distilled into a network
built for INT8 (runs when distill.decoder is set, e.g. relu_zero).

Why: ONNX Runtime's INT8 kernels fuse a quantized convolution with a ReLU, but not with the reference's ELU,
and its reflection padding stays a float operation, so with the reference's decoder an INT8 model spends
most of its time going back and forth between int8 and float at the decoder's full-resolution levels
(docs/models.md "INT8"). The relu_zero decoder (ReLU, zero padding; training.networks.depth) quantizes into
a graph without those float islands. Training it with the self-supervised losses of stage 4 from the final
weights lost accuracy at the cpu-small budget (800 steps: test AbsRel of moving objects 0.245 vs 0.213);
distilling the final network into it is a regression to the teacher's output, which converges in far fewer
steps and keeps what stages 2-4 taught the teacher about moving objects.

The student starts from the final network's weights (the encoder and every convolution have the same shapes
in both decoders) and learns, on the augmented centre frames of the train split, the teacher's full-
resolution depth: loss = mean |log D_student - log D_teacher| (scale-free, so near and far pixels count
alike). Only scale 0 is exported, so only scale 0 is trained. Writes in `<run_dir>/distill/`:

    distill_model.pt    the student's DepthNet weights (last checkpoint)
    distill.onnx        the student in the design §3 format (dynadepth.stage = final: it is the final
                        network's depth, in another architecture); quantize it with `python -m training
                        quantize` or export.int8 as any final model
    checkpoints/, metrics.csv, metrics.png, previews/, config.yaml, manifest.json (with the student's
    agreement with the teacher on the val split: mean |log ratio| and the share of pixels within 5 %)
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from training import checkpoint as ckpt_io
from training.artifacts import file_entry
from training.config import PipelineConfig, to_dict
from training.data import build_dataset
from training.loop import Phase, train
from training.networks.depth import DepthNet, disp_to_depth
from training.stages import final as final_stage
from training.stages import scene as scene_stage
from training.stages.runner import StageContext, data_settings, run_stage

NAME = 'distill'
REQUIRES = ('final',)
MODEL_FILE = 'distill_model.pt'
ONNX_FILE = 'distill.onnx'


def hash_parts(cfg: PipelineConfig) -> tuple[dict, dict]:
    return ({'stage': NAME, 'data': data_settings(cfg), 'model': to_dict(cfg.scene.model),
             'distill': to_dict(cfg.distill)}, {'export': cfg.export.hash_settings()})


def run(cfg: PipelineConfig, run_dir, dist=None, *, restart: bool = False):
    return run_stage(NAME, cfg, run_dir, dist, restart=restart)


def build_student(cfg: PipelineConfig) -> DepthNet:
    m = cfg.scene.model
    return DepthNet(m.encoder_depth, m.width_mult, m.min_depth, m.max_depth, scales=(0,), decoder=cfg.distill.decoder)


def log_depth_l1(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean |log student - log teacher| of two depth maps [B,1,H,W] (metres, > 0)."""
    return (torch.log(student) - torch.log(teacher)).abs().mean()


class DistillModel(nn.Module):
    """`student` (trained) learns the depth of `teacher` (frozen, kept out of the state dict and of the
    optimiser) on the batch's augmented centre frames."""

    def __init__(self, student: DepthNet, teacher: DepthNet):
        super().__init__()
        self.student = student
        object.__setattr__(self, '_teacher', teacher.eval().requires_grad_(False))

    @property
    def teacher(self) -> DepthNet:
        return self._teacher

    def to(self, *args, **kwargs):
        self._teacher.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def loss(self, batch: dict, phase: str):
        image = batch['frames'][:, 1].to(next(self.student.parameters()).device)
        with torch.no_grad():
            target = self.teacher.depth(image)
        depth = disp_to_depth(self.student(image, scales=(0,))[0], self.student.min_depth, self.student.max_depth)[1]
        loss = log_depth_l1(depth, target)
        with torch.no_grad():
            ratio = (depth / target).log().abs()
            within = float((ratio < np.log(1.05)).float().mean())
        previews = {'image': image[:1], 'teacher depth': target[:1], 'student depth': depth[:1]}
        return loss, {'loss': loss.item(), 'within_5pct': within}, previews


def _loss(model, batch, phase):
    return model.loss(batch, phase)


@torch.no_grad()
def agreement(student: DepthNet, teacher: DepthNet, dataset, max_frames: int = 64) -> dict:
    """{'frames', 'mean_abs_log_ratio', 'within_5pct'} of the student against the teacher on up to max_frames
    evenly spaced un-augmented frames of `dataset`."""
    if dataset is None or not len(dataset):
        return {'frames': 0}
    idx = np.unique(np.linspace(0, len(dataset) - 1, min(max_frames, len(dataset))).round().astype(int))
    logs, within = [], []
    for i in idx.tolist():
        image = dataset[i]['frames_raw'][1][None]
        r = (student.depth(image) / teacher.depth(image)).log().abs()
        logs.append(float(r.mean()))
        within.append(float((r < np.log(1.05)).float().mean()))
    return {'frames': len(idx), 'mean_abs_log_ratio': float(np.mean(logs)), 'within_5pct': float(np.mean(within))}


def execute(ctx: StageContext) -> dict | None:
    cfg, dist, stage_dir = ctx.cfg, ctx.dist, ctx.stage_dir
    dc = cfg.distill
    ckpt_io.seed_everything(dc.loop.seed)
    teacher, _, final_manifest = final_stage.load_depth_net(ctx.upstream_dir('final'))
    student = build_student(cfg)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected and any(not k.startswith('decoder.heads.') for k in unexpected) or missing:
        raise RuntimeError(f'the final network\'s weights do not fit the {dc.decoder} student '
                           f'(missing {missing[:3]}, unexpected {unexpected[:3]})')
    model = DistillModel(student, teacher)
    triplets = build_dataset(cfg.data, 'train', augment=True, seed=dc.loop.seed)
    val_set = scene_stage.optional_dataset(cfg, 'val', dist)
    phases = [Phase(p.name, p.steps, ('student',), p.lr, tuple(p.lr_decay_at), p.lr_decay) for p in dc.phases]
    ctx.log(f'distilling the final network into a {dc.decoder} network: {len(triplets)} training frames, '
            f'{sum(p.steps for p in phases)} steps of batch {dc.loop.batch_size}')
    result = train(model, _loss, triplets, phases, dc.loop, stage_dir, config_hash=ctx.hashes.train, dist=dist,
                   val_set=val_set, val_fn=lambda m, b, p: m.loss(b, p)[1], num_workers=cfg.runtime.num_workers,
                   progress=cfg.runtime.progress, debug_param_digest=cfg.runtime.debug_param_digest, desc='distill')
    if not dist.is_main:
        return None
    student.eval()
    ckpt_io.save_atomic({'format': ckpt_io.CHECKPOINT_FORMAT, 'stage': NAME, 'model': student.state_dict(),
                         'decoder': dc.decoder, 'config_hash': ctx.hashes.train, 'global_step': result.global_step},
                        stage_dir / MODEL_FILE)
    agree = agreement(student, teacher, val_set)
    if agree.get('frames'):
        ctx.log(f'student vs teacher on val ({agree["frames"]} frames): mean |log ratio| '
                f'{agree["mean_abs_log_ratio"]:.4f}, {100 * agree["within_5pct"]:.1f} % of the pixels within 5 %')
    metric, intrinsics, meta, report = final_stage.export_final_network(ctx, student, final_manifest, ONNX_FILE)
    return {
        'training': {'steps': result.global_step, 'phases': [[p.name, p.steps] for p in dc.phases],
                     'batch_size': dc.loop.batch_size, 'world_size': dist.world_size, 'decoder': dc.decoder,
                     'resumed_from': result.resumed_from, 'steps_this_run': result.trained_steps,
                     'seconds_per_step': result.seconds_per_step},
        'teacher': {'stage': 'final', 'config_hash': final_manifest.get('config_hash')},
        'agreement_val': agree,
        'model_selection': 'last checkpoint (label-free)',
        'metric': metric, 'intrinsics': list(intrinsics),
        'files': {'checkpoint': file_entry(stage_dir, MODEL_FILE), 'onnx': file_entry(stage_dir, ONNX_FILE)},
        'onnx': {'metadata': meta.to_props(), 'check': report},
    }


def load_depth_net(stage_dir: str | os.PathLike, device: str | torch.device = 'cpu'):
    """(student DepthNet in eval mode, PipelineConfig, manifest) of a finished distill stage."""
    stage_dir, cfg, manifest = scene_stage.finished_stage(stage_dir, NAME)
    net = build_student(cfg)
    net.load_state_dict(ckpt_io.load(stage_dir / MODEL_FILE, map_location='cpu')['model'])
    return net.to(device).eval(), cfg, manifest


def model_metadata(cfg: PipelineConfig, config_hash: str, metric: bool, intrinsics):
    return scene_stage.model_metadata(cfg, config_hash, metric, intrinsics, stage='final')
