"""Stage 3 (`python -m training dsa`): Depth Scale Alignment and pseudo depth labels (reference §3.3).

Reads stage 1 (scene depth) and stage 2 (labels, object depth) and writes in `<run_dir>/dsa/`:

    dsa_model.pt                         the DSA network (last checkpoint)
    scales/<split>.json                  {"<seq>/<frame:06d>": [{"id", "beta", "log_anchor", "anchor_ok"}]}
                                         β of every dynamic object
    pseudo_labels/<split>/<seq>/<frame:06d>.npz
                                         depth float32 [H,W] metres: the scene depth, dynamic-object pixels
                                         replaced by β·(object depth normalised to mean 1), the nearer
                                         object winning where masks overlap; dynamic bool [H,W] (design §5).
                                         Every triplet centre frame gets one (no dynamic object: scene depth)
    previews/pseudo_<split>_<k>.png      RGB | stage-1 depth | pseudo label | dynamic pixels
    checkpoints/, metrics.csv, metrics.png, config.yaml, manifest.json

The DSA network (training.stages.dsa_model) is trained on the STATIC objects of the training split
against the stage-1 scene depth (trusted there) and applied to the DYNAMIC ones (where the scene
depth is wrong). Validation (logged, never used to pick weights) runs on the static objects of the
val split, which the network never trains on.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from dynadepth_ros.atomic_files import write_json_atomic
from training import checkpoint as ckpt_io
from training.artifacts import file_entry
from training.config import PipelineConfig, to_dict
from training.data import build_dataset
from training.data.triplets import Layer, TripletDataset
from training.ground import bottom_pixels, ground_mask
from training.loop import Phase, train
from training.previews import colourise_depth, compose, write_png
from training.stages import scene as scene_stage
from training.stages.dsa_model import DsaNet, dsa_inputs, scale_loss
from training.stages.labelling import road_ids, without_road
from training.stages.objects import instance_classes
from training.stages.outputs import (ObjectLabels, ObjectOutputs, PseudoLabel, PseudoLabels, ScenePredictions, frame_key,
                                     learned_masks_root)
from training.stages.runner import StageContext, data_settings, run_stage

NAME = 'dsa'
REQUIRES = ('scene', 'objects')
MODEL_FILE = 'dsa_model.pt'


def hash_parts(cfg: PipelineConfig) -> tuple[dict, dict]:
    d = to_dict(cfg.dsa)
    d.pop('infer_batch_size', None)
    return {'stage': NAME, 'data': data_settings(cfg), 'dsa': d}, {}


def run(cfg: PipelineConfig, run_dir, dist=None, *, restart: bool = False):
    return run_stage(NAME, cfg, run_dir, dist, restart=restart)


def sample_road_ids(cfg: PipelineConfig, triplets: TripletDataset, idx: int) -> set[int]:
    """Ids of road-class instances in sample idx's frame (ground, not objects)."""
    si, t = triplets.samples[idx]
    return road_ids(instance_classes(triplets.sequences[si], t), cfg.objects.labelling.road_classes)


def object_inputs(cfg: PipelineConfig, item: dict, oid: int, object_depth: np.ndarray, image_key: str = 'frames_raw',
                  ground=None, roads: set[int] = frozenset()):
    """dsa_inputs of object `oid` of a triplet sample carrying a scene_depth layer; object_depth [H,W] on the
    sample's grid (road-class instances `roads` count as ground)."""
    dc = cfg.dsa
    return dsa_inputs(item[image_key][1].numpy(), item['scene_depth'].numpy(), without_road(item['mask'].numpy(), roads),
                      oid, object_depth, item['K'].numpy().astype(np.float64), dc.box_margin_px,
                      dc.model.max_depth, dc.ground_angle_deg, dc.ground_step_px, ground=ground,
                      use_anchor=dc.model.use_anchor, anchor=dc.model.anchor, extend_to_ground=dc.extend_to_ground,
                      bottom_edge=dc.bottom_edge)


def _tensors(inp, scene_depth: np.ndarray) -> dict:
    return {'image': torch.from_numpy(inp.image), 'scalars': torch.from_numpy(inp.scalars),
            'log_anchor': torch.tensor(inp.log_anchor, dtype=torch.float32),
            'anchor_ok': torch.tensor(inp.anchor_ok),
            'norm_depth': torch.from_numpy(inp.norm_depth[None]),
            'scene_depth': torch.from_numpy(np.asarray(scene_depth, np.float32)[None]),
            'object_mask': torch.from_numpy(inp.mask[None])}


class DsaSampleDataset(Dataset):
    """One sample per labelled object of `label` ('static' to train / validate): the DSA input, the
    object's normalised depth and the scene depth (the target on static objects)."""

    def __init__(self, cfg: PipelineConfig, triplets: TripletDataset, run_dir: Path, split: str, label: str = 'static'):
        self.cfg, self.triplets, self.split = cfg, triplets, split
        self.preds = ScenePredictions(Path(run_dir) / 'scene')
        self.outputs = ObjectOutputs(Path(run_dir) / 'objects')
        labels = ObjectLabels(Path(run_dir) / 'objects', split)
        self.entries: list[tuple[int, int]] = []
        for idx in range(len(triplets)):
            seq, t = triplets.sample_location(idx)
            self.entries.extend((idx, lab.id) for lab in labels.frame(seq, t) if lab.label == label)
        self.image_key = 'frames' if triplets.augment is not None else 'frames_raw'

    def set_epoch(self, epoch: int) -> None:
        self.triplets.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, k: int) -> dict:
        idx, oid = self.entries[k]
        seq, t = self.triplets.sample_location(idx)
        od = self.outputs.depth(self.split, seq, t).get(oid)
        pred = self.preds.frame(self.split, seq, t)
        if od is None:
            raise FileNotFoundError(f'no object depth for {self.split} {seq}/{t} id {oid}: rerun stage 2')
        item = self.triplets.load(idx, extra={'scene_depth': Layer(pred.depth, 'depth'),
                                              'object_depth': Layer(od, 'depth')})
        inp = object_inputs(self.cfg, item, oid, item['object_depth'].numpy(), self.image_key,
                            roads=sample_road_ids(self.cfg, self.triplets, idx))
        if inp is None:   # cannot happen for a labelled object with depth; keep the batch shape anyway
            raise ValueError(f'{self.split} {seq}/{t} id {oid}: the object has no pixels with depth')
        return _tensors(inp, item['scene_depth'].numpy())


class DsaModule(nn.Module):
    def __init__(self, cfg: PipelineConfig):
        super().__init__()
        self.net = DsaNet(cfg.dsa.model)

    def forward(self, batch, phase='dsa'):
        return dsa_loss(self, batch, phase)


def optimal_log_scale(norm_depth: torch.Tensor, scene_depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] log of the median of D_scene / D̃ inside the mask: the scale the scene depth implies."""
    out = []
    for n, s, m in zip(norm_depth, scene_depth, mask):
        ok = m.bool() & (s > 0) & (n > 0)
        out.append(torch.log(torch.median(s[ok] / n[ok])) if ok.any() else torch.tensor(0.0))
    return torch.stack(out)


def dsa_loss(model: DsaModule, batch: dict, phase: str = 'dsa'):
    beta = model.net.scale(batch['image'], batch['scalars'], batch['log_anchor'])
    loss = scale_loss(beta, batch['norm_depth'], batch['scene_depth'], batch['object_mask'])
    with torch.no_grad():
        target = optimal_log_scale(batch['norm_depth'], batch['scene_depth'], batch['object_mask'])
        err = (torch.log(beta) - target).abs()
        anchor_err = (batch['log_anchor'] - target).abs()
        logs = {'scale_error': torch.expm1(err).median().item(),
                'anchor_scale_error': torch.expm1(anchor_err).median().item(),
                'anchor_ok_fraction': batch['anchor_ok'].float().mean().item()}
    previews = {'image': batch['image'][0, :3], 'ground_context': batch['image'][0, 3:4],
                'object_norm_depth': batch['image'][0, 4:5]}
    return loss, logs, previews


def _val(model, batch, phase):
    loss, logs, _ = dsa_loss(model, batch, phase)
    return {'loss': loss.item(), **logs}


def load_model(stage_dir: str | os.PathLike, device='cpu'):
    """(DsaNet in eval mode, PipelineConfig) of a finished stage 3."""
    from training.config import load_config

    stage_dir = Path(stage_dir)
    cfg = load_config(config_file=stage_dir / 'config.yaml')
    module = DsaModule(cfg)
    module.load_state_dict(ckpt_io.load(stage_dir / MODEL_FILE, map_location='cpu')['model'])
    return module.net.to(device).eval(), cfg


@torch.no_grad()
def frame_scales(cfg: PipelineConfig, net: DsaNet, item: dict, object_depths: dict[int, np.ndarray],
                 image_key='frames_raw', roads: set[int] = frozenset()):
    """[(id, β, DsaInput)] of the objects {id: object depth [H,W]} of one un-augmented sample carrying a
    scene_depth layer; the frame's ground is computed once for all of them."""
    K = item['K'].numpy().astype(np.float64)
    instances = without_road(item['mask'].numpy(), roads)
    ground = ground_mask(item['scene_depth'].numpy(), K, cfg.dsa.ground_angle_deg, cfg.dsa.ground_step_px,
                         exclude=instances > 0)
    inputs = []
    for oid, depth in object_depths.items():
        inp = object_inputs(cfg, item, oid, depth, image_key, ground=ground, roads=roads)
        if inp is not None:
            inputs.append((oid, inp))
    if not inputs:
        return []
    image = torch.from_numpy(np.stack([i.image for _, i in inputs]))
    scalars = torch.from_numpy(np.stack([i.scalars for _, i in inputs]))
    anchor = torch.tensor([i.log_anchor for _, i in inputs], dtype=torch.float32)
    beta = net.scale(image, scalars, anchor).numpy()
    return [(oid, float(b), inp) for (oid, inp), b in zip(inputs, beta)]


def object_label(inp, beta: float, scene_depth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, depth [H,W]) of one dynamic object in the pseudo label: β·D̃ on its mask and, with
    dsa.extend_to_ground, on the gap down to the ground below it (dsa_model.dsa_inputs' `fill`). With
    scene_depth (dsa.label_shape 'scene') the depth on those pixels is k·scene_depth instead, k = the median of
    β·D̃ / scene_depth over them: the same scale, stage 1's shape."""
    if inp.fill is None:
        pixels, depth = inp.mask, beta * inp.norm_depth
    else:
        pixels, depth = inp.mask | (inp.fill > 0), beta * (inp.norm_depth + inp.fill)
    if scene_depth is None:
        return pixels, depth
    on = pixels.astype(bool) & (depth > 0) & (scene_depth > 0)
    if not on.any():
        return pixels, depth
    k = float(np.median(depth[on] / scene_depth[on]))
    shaped = (k * scene_depth).astype(np.float32)
    if inp.fill is not None:     # the gap keeps the upright-back rule: its column's lowest mask pixel's depth
        gap = inp.fill > 0
        cols, lowest = bottom_pixels(inp.mask)
        shaped[:, cols] = np.where(gap[:, cols], shaped[lowest, cols][None], shaped[:, cols])
    return pixels, np.where(on, shaped, depth)


def compose_pseudo_label(scene_depth: np.ndarray, objects: list[tuple[np.ndarray, np.ndarray]]) -> PseudoLabel:
    """Scene depth with each object's pixels (mask, depth) replaced, the nearer object winning on overlaps."""
    best = np.full(scene_depth.shape, np.inf, np.float32)
    for mask, depth in objects:
        m = mask.astype(bool) & (depth > 0)
        best[m] = np.minimum(best[m], depth[m])
    dynamic = np.isfinite(best)
    out = scene_depth.astype(np.float32).copy()
    out[dynamic] = best[dynamic]
    return PseudoLabel(depth=out, dynamic=dynamic)


@torch.no_grad()
def write_pseudo_labels(ctx: StageContext, net: DsaNet, split: str) -> dict:
    cfg = ctx.cfg
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist, learned_masks_root(cfg, ctx.run_dir))
    if ds is None:
        return {}
    preds = ScenePredictions(ctx.upstream_dir('scene'))
    outputs = ObjectOutputs(ctx.upstream_dir('objects'))
    labels = ObjectLabels(ctx.upstream_dir('objects'), split)
    writer = PseudoLabels(ctx.stage_dir)
    scales = {}
    n_frames = n_dynamic_frames = n_objects = 0
    for idx in tqdm(range(len(ds)), desc=f'dsa: pseudo labels {split}', disable=not cfg.runtime.progress,
                    mininterval=1.0, dynamic_ncols=True):
        seq, t = ds.sample_location(idx)
        pred = preds.frame(split, seq, t)
        dyn = [lab.id for lab in labels.frame(seq, t) if lab.dynamic]
        objects = []
        if dyn:
            depth = outputs.depth(split, seq, t)
            item = ds.load(idx, extra={'scene_depth': Layer(pred.depth, 'depth')})
            entries = frame_scales(cfg, net, item, {oid: depth[oid] for oid in dyn if oid in depth},
                                   roads=sample_road_ids(cfg, ds, idx))
            shape = pred.depth if cfg.dsa.label_shape == 'scene' else None
            objects.extend(object_label(inp, beta, shape) for _, beta, inp in entries)
            scales[frame_key(seq, t)] = [{'id': oid, 'beta': round(beta, 5), 'log_anchor': round(inp.log_anchor, 5),
                                          'anchor_ok': inp.anchor_ok} for oid, beta, inp in entries]
            n_objects += len(entries)
            n_dynamic_frames += bool(entries)
        writer.write(split, seq, t, compose_pseudo_label(pred.depth, objects))
        n_frames += 1
    write_json_atomic(ctx.stage_dir / 'scales' / f'{split}.json', scales)
    ctx.log(f'{split}: {n_frames} pseudo labels, {n_dynamic_frames} with dynamic objects ({n_objects} objects)')
    return {'frames': n_frames, 'frames_with_dynamic': n_dynamic_frames, 'dynamic_objects': n_objects}


def write_pseudo_previews(ctx: StageContext, split: str, n: int = 4) -> list[str]:
    cfg = ctx.cfg
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist, learned_masks_root(cfg, ctx.run_dir))
    if ds is None:
        return []
    reader = PseudoLabels(ctx.stage_dir)
    preds = ScenePredictions(ctx.upstream_dir('scene'))
    candidates = []
    for idx in range(len(ds)):
        seq, t = ds.sample_location(idx)
        if reader.frame(split, seq, t).dynamic.any():
            candidates.append(idx)
    chosen = candidates[::max(1, len(candidates) // n)][:n]
    written = []
    for k, idx in enumerate(chosen):
        seq, t = ds.sample_location(idx)
        item = ds[idx]
        label = reader.frame(split, seq, t)
        panels = {'rgb': (item['frames_raw'][1].permute(1, 2, 0).numpy() * 255).astype(np.uint8),
                  'stage-1 depth': colourise_depth(preds.frame(split, seq, t).depth),
                  'pseudo label': colourise_depth(label.depth),
                  'dynamic pixels': np.repeat((label.dynamic * 255).astype(np.uint8)[..., None], 3, -1)}
        gt = item['gt_depth'][0].numpy()
        if (gt > 0).any():
            panels['GT depth'] = colourise_depth(gt)
        path = ctx.stage_dir / 'previews' / f'pseudo_{split}_{k}.png'
        write_png(path, compose(panels, columns=2))
        written.append(path.name)
    return written


def execute(ctx: StageContext) -> dict | None:
    cfg, dist, stage_dir = ctx.cfg, ctx.dist, ctx.stage_dir
    dc = cfg.dsa
    if dist.distributed:
        raise RuntimeError('stage 3 runs in one process; run it without torchrun')
    ckpt_io.seed_everything(dc.loop.seed)
    module = DsaModule(cfg)
    train_set = DsaSampleDataset(cfg, build_dataset(cfg.data, 'train', augment=True, seed=dc.loop.seed,
                                                     masks=learned_masks_root(cfg, ctx.run_dir)),
                                 ctx.run_dir, 'train', 'static')
    if not len(train_set):
        raise ValueError('stage 2 labelled no static object in the training split: DSA has nothing to learn from')
    val_set = None
    if 'val' in cfg.objects.splits:
        vds = scene_stage.optional_dataset(cfg, 'val', dist, learned_masks_root(cfg, ctx.run_dir))
        if vds is not None:
            val_set = DsaSampleDataset(cfg, vds, ctx.run_dir, 'val', 'static') or None
            if val_set is not None and not len(val_set):
                val_set = None
    phases = [Phase(p.name, p.steps, ('net',), p.lr, tuple(p.lr_decay_at), p.lr_decay) for p in dc.phases]
    ctx.log(f'{len(train_set)} static training objects' + (f', {len(val_set)} static val objects' if val_set else '')
            + (f'; {sum(p.steps for p in phases)} steps of batch {dc.loop.batch_size}' if sum(p.steps for p in phases)
               else '; no DSA training (0 steps): beta is the geometric anchor'))
    result = train(module, lambda m, b, p: dsa_loss(m, b, p), train_set, phases, dc.loop, stage_dir,
                   config_hash=ctx.hashes.train, dist=dist, val_set=val_set, val_fn=_val,
                   num_workers=cfg.runtime.num_workers, progress=cfg.runtime.progress, desc='dsa')
    module.eval()
    ckpt_io.save_atomic({'format': ckpt_io.CHECKPOINT_FORMAT, 'stage': NAME, 'model': module.state_dict(),
                         'config_hash': ctx.hashes.train, 'global_step': result.global_step}, stage_dir / MODEL_FILE)
    counts = {split: write_pseudo_labels(ctx, module.net, split) for split in cfg.objects.splits}
    previews = []
    for split in cfg.objects.splits:
        previews += write_pseudo_previews(ctx, split)
    return {
        'training': {'steps': result.global_step, 'phases': [[p.name, p.steps] for p in dc.phases],
                     'batch_size': dc.loop.batch_size, 'static_objects': len(train_set),
                     'resumed_from': result.resumed_from, 'steps_this_run': result.trained_steps,
                     'seconds_per_step': result.seconds_per_step},
        'model_selection': 'last checkpoint (label-free)',
        'pseudo_labels': {'root': 'pseudo_labels', 'layout': '<split>/<sequence>/<frame:06d>.npz',
                          'arrays': {'depth': 'float32 [H,W] metres', 'dynamic': 'bool [H,W]'},
                          'counts': {s: c['frames'] for s, c in counts.items() if c}},
        'pseudo_label_stats': counts,
        'previews': previews,
        'files': {'checkpoint': file_entry(stage_dir, MODEL_FILE)},
    }
