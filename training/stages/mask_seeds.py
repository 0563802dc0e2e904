"""Learned masks 2/3 (`python -m training seeds`): moving regions grouped into seed objects (reference §3U
1.1 and the seed rules of 1.3).

Runs only with objects.masks: learned. Reads the frames, the stage-1 predictions (depth, residual flows), the
stage-1 pose network (masks.seeds.motion: optical, the default) and the ground maps, and writes in
`<run_dir>/masks/seeds/`:

    <split>/<seq>/<frame:06d>.png        uint16 seed ids (0 = none) of every triplet centre frame of
                                         masks.seeds.splits (network resolution)
    stats.json                           per split: frames, seeds, groups dropped per seed rule
    previews/seeds_<split>_<k>.png       RGB | residual flow (optical: observed - rigid) | moving pixels |
                                         groups | seeds
    slots_model.pt, checkpoints/, metrics.csv, metrics.png, previews/step_*.png
                                         with method: slots (the slot-attention network and its training)
    config.yaml, manifest.json

Grouping (masks.seeds.method): `cluster` — connected components of the moving pixels cut at depth and flow
edges (training/masks/seeds.py) — or `slots` — the reference's slot attention on the colour-coded residual
flow and transformed depth (training/networks/slot_attention.py), one group per slot above the mask
threshold, the largest slot (the background) dropped. `python -m training evaluate-masks --masks seeds`
measures both against a dataset's own masks.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from dynadepth_ros.atomic_files import write_json_atomic
from training import checkpoint as ckpt_io
from training.artifacts import file_entry
from training.config import PipelineConfig, to_dict
from training.loop import Phase, train
from training.ground import ground_mask, ground_plane
from training.masks.seeds import (floating_pixels, group_moving_regions, moving_pixels, moving_pixels_optical,
                                  seed_masks, triplet_disagreement)
from training.networks.slot_attention import SlotAutoEncoder, slot_inputs, slot_loss
from training.previews import colourise_flow, compose, write_png
from training.stages import scene as scene_stage
from training.stages.outputs import GroundMaps, LabelMaps, ScenePrediction, ScenePredictions
from training.stages.runner import StageContext, StageError, data_settings, keep_outputs_of, run_stage

NAME = 'seeds'
REQUIRES = ('scene', 'ground')
SLOTS_FILE = 'slots_model.pt'


def hash_parts(cfg: PipelineConfig) -> tuple[dict, dict]:
    s = to_dict(cfg.masks.seeds)
    if cfg.masks.seeds.floating_log_ratio > 0:      # MotionCue.floating reads stage 1's normals like the ground stage
        s['floating_ground'] = {'angle_deg': cfg.masks.ground.angle_deg, 'step_px': cfg.masks.ground.step_px}
    if s['method'] != 'slots':
        s.pop('slots')                   # the slot settings do not matter to the cluster grouping
    else:
        s['slots'].pop('infer_batch_size', None)
    return {'stage': NAME, 'data': data_settings(cfg), 'seeds': s}, {}


def run(cfg: PipelineConfig, run_dir, dist=None, *, restart: bool = False):
    return run_stage(NAME, cfg, run_dir, dist, restart=restart)


def frame_moving(pred: ScenePrediction, ground: np.ndarray, cfg: PipelineConfig) -> np.ndarray:
    """bool [H,W] moving pixels of a frame (training.masks.seeds.moving_pixels with ground = probability >= 0.5)."""
    return moving_pixels(pred.flow_magnitude(), ground >= 0.5, cfg.masks.seeds)


class MotionCue:
    """The moving pixels of a split's frames under masks.seeds.motion, and the flow the grouping cuts at.

    network: stage 1's residual flows (the reference's cue). optical: DIS optical flow between the triplet's
    frames (the dataset's frames at the network resolution) against the rigid flow of stage 1's depth moved by
    the camera motion `pose(index, offset, frames)` (4x4 reference -> source camera of sample `index`, whose
    frames_raw [3,3,H,W] are given; `for_stage` uses stage 1's pose network), compared by
    training.masks.seeds.flow_disagreement; the grouping then cuts where the flow unexplained by the rigid
    motion (observed - rigid, both directions) jumps."""

    def __init__(self, cfg: PipelineConfig, split: str, ds, preds: ScenePredictions, grounds: GroundMaps, pose=None):
        self.cfg, self.split, self.ds, self.preds, self.grounds = cfg, split, ds, preds, grounds
        self.sc = cfg.masks.seeds
        if self.sc.motion == 'optical' and pose is None:
            raise ValueError('masks.seeds.motion optical needs the camera motion (pose)')
        self.pose = pose

    @classmethod
    def for_stage(cls, ctx: StageContext, split: str, ds) -> 'MotionCue':
        pose = stage1_pose(ctx.upstream_dir('scene')) if ctx.cfg.masks.seeds.motion == 'optical' else None
        return cls(ctx.cfg, split, ds, ScenePredictions(ctx.upstream_dir('scene')),
                   GroundMaps(ctx.upstream_dir('ground')), pose)

    def frame(self, index: int) -> dict:
        """{'moving': bool [H,W], 'edges_flow': float [4,H,W], 'shown': float [2,H,W] flow to draw,
        'cue': float [H,W] (optical: the disagreement), 'depth', 'ground'} of sample `index`."""
        seq, t = self.ds.sample_location(index)
        pred = self.preds.frame(self.split, seq, t)
        ground = self.grounds.frame(self.split, seq, t) >= 0.5
        item = self.ds[index] if (self.sc.motion == 'optical' or self.sc.floating_log_ratio > 0) else None
        if self.sc.motion == 'network':
            out = {'moving': moving_pixels(pred.flow_magnitude(), ground, self.sc), 'depth': pred.depth,
                   'edges_flow': np.concatenate([pred.flow_prev, pred.flow_next]), 'ground': ground,
                   'shown': np.stack([pred.flow_prev, pred.flow_next]).mean(0), 'cue': pred.flow_magnitude()}
        else:
            cue, residual = optical_cue(item, pred.depth, lambda off, frames: self.pose(index, off, frames),
                                        self.sc.optical_min_rigid_px)
            out = {'moving': moving_pixels_optical(cue, ground, self.sc), 'depth': pred.depth, 'edges_flow': residual,
                   'ground': ground, 'shown': np.stack([residual[:2], residual[2:]]).mean(0), 'cue': cue}
        if self.sc.floating_log_ratio > 0:
            out['moving'] = out['moving'] | self.floating(pred.depth, ground, item['K'].numpy())
        return out

    def floating(self, depth: np.ndarray, ground: np.ndarray, K: np.ndarray) -> np.ndarray:
        """training.masks.seeds.floating_pixels on the ground both the ground network and stage 1's normals call
        ground: the network's map alone has false patches on bus sides and roofs whose contacts made 2/3 of the
        flagged pixels background (train, cpu-small, 2026-12-07; with both, 0.85 of them are on movers at 0.6)."""
        g = self.cfg.masks.ground
        road = ground & ground_mask(depth, K, g.angle_deg, g.step_px)
        return floating_pixels(depth, road, K, ground_plane(depth, K, road), self.sc.floating_log_ratio,
                               self.sc.floating_rows)


def stage1_pose(scene_dir):
    """pose(index, offset, frames_raw [3,3,H,W]) -> 4x4 centre -> neighbour camera from stage 1's pose network
    (the camera motion MotionCue and the final stage's unexplained-motion mask compare the flow with)."""
    model, _, _ = scene_stage.load_model(scene_dir)
    net = model.pose.eval()

    @torch.no_grad()
    def pose(index: int, off: int, frames: torch.Tensor) -> np.ndarray:
        return net.reference_to_source(frames[1][None], frames[off + 1][None], off)[0][0].numpy()
    return pose


def optical_cue(item: dict, depth: np.ndarray, pose, min_rigid_px: float) -> tuple[np.ndarray, np.ndarray]:
    """training.masks.seeds.triplet_disagreement of a dataset sample (its frames_raw and K, network
    resolution) with stage 1's `depth` and camera motion pose(offset, frames_raw)."""
    rgb = [(f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for f in item['frames_raw']]
    poses = {off: pose(off, item['frames_raw']) for off in (-1, 1)}
    return triplet_disagreement(rgb, depth, item['K'].numpy(), poses, min_rigid_px)


# ------------------------------------------------------------------------------------- slot attention


def slot_size(cfg: PipelineConfig) -> tuple[int, int]:
    d = cfg.masks.seeds.slots.downsample
    h, w = cfg.data.height // d, cfg.data.width // d
    if h % 8 or w % 8:
        raise ValueError(f'masks.seeds.slots.downsample {d} gives a {h}x{w} slot input; height and width must '
                         f'divide by 8 ({cfg.data.height}x{cfg.data.width} network input)')
    return h, w


class SlotSampleDataset(Dataset):
    """Both flow directions of every triplet centre frame with predictions: x [2,4,h,w], still [2,1,h,w]."""

    def __init__(self, cfg: PipelineConfig, preds: ScenePredictions, grounds: GroundMaps, split: str, locations):
        self.cfg, self.preds, self.grounds, self.split = cfg, preds, grounds, split
        self.locations = list(locations)
        self.size = slot_size(cfg)

    def __len__(self) -> int:
        return len(self.locations)

    def item(self, k: int) -> dict:
        seq, t = self.locations[k]
        pred = self.preds.frame(self.split, seq, t)
        moving = frame_moving(pred, self.grounds.frame(self.split, seq, t), self.cfg)
        h, w = self.size
        xs = [slot_inputs(f, pred.depth, moving, (h, w)) for f in (pred.flow_prev, pred.flow_next)]
        still = cv2.resize((~moving).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        return {'x': torch.from_numpy(np.stack(xs)), 'still': torch.from_numpy(np.stack([still[None]] * 2))}

    def __getitem__(self, k: int) -> dict:
        return self.item(k)


class SlotModule(nn.Module):
    def __init__(self, cfg: PipelineConfig):
        super().__init__()
        s = cfg.masks.seeds.slots
        self.slots = SlotAutoEncoder(s.slots, s.slot_dim, s.iterations, s.channels)
        self.settings = s

    def loss(self, batch: dict, phase: str):
        x = batch['x'].flatten(0, 1)                 # both directions batched together (reference)
        still = batch['still'].flatten(0, 1)
        return slot_loss(self.slots, x, still, self.settings.depth_weight, self.settings.background_weight,
                         background=phase == 'slots_background')


def _slot_loss(model, batch, phase):
    return model.loss(batch, phase)


def slot_phases(cfg: PipelineConfig) -> list[Phase]:
    s = cfg.masks.seeds.slots
    first = int(round(s.steps * s.background_from))
    out = [Phase('slots', first, ('slots',), s.lr, tuple(x for x in s.lr_decay_at if x < first), 0.5)]
    if s.steps > first:
        lr = s.lr * 0.5 ** sum(1 for x in s.lr_decay_at if x <= first)
        out.append(Phase('slots_background', s.steps - first, ('slots',), lr,
                         tuple(x - first for x in s.lr_decay_at if x > first), 0.5))
    return [p for p in out if p.steps > 0] or out[:1]


@torch.no_grad()
def slot_groups(net: SlotAutoEncoder, batch_x: torch.Tensor, height: int, width: int, threshold: float) -> np.ndarray:
    """int32 [B,H,W] group ids from the slot masks of the -1 direction (batch_x [B,4,h,w]): each pixel joins
    its most likely slot where that slot's mask reaches `threshold`; the largest slot (the background) and
    pixels of no slot are 0."""
    net.eval()
    masks = net(batch_x)['masks'][:, :, 0]                              # [B,K,h,w]
    masks = torch.nn.functional.interpolate(masks, size=(height, width), mode='bilinear', align_corners=False)
    best = masks.argmax(1)
    reach = masks.max(1).values >= threshold
    out = np.zeros(best.shape, np.int32)
    for b in range(best.shape[0]):
        ids = best[b].numpy() + 1
        ids[~reach[b].numpy()] = 0
        counts = np.bincount(ids.ravel(), minlength=masks.shape[1] + 1)
        counts[0] = 0
        ids[ids == int(np.argmax(counts))] = 0                          # the largest slot is the background
        out[b] = ids
    return out


def train_slots(ctx: StageContext) -> tuple[SlotAutoEncoder, dict]:
    cfg = ctx.cfg
    s = cfg.masks.seeds.slots
    ds = scene_stage.optional_dataset(cfg, 'train', ctx.dist)
    locations = [ds.sample_location(i) for i in range(len(ds))]
    data = SlotSampleDataset(cfg, ScenePredictions(ctx.upstream_dir('scene')), GroundMaps(ctx.upstream_dir('ground')),
                             'train', locations)
    ckpt_io.seed_everything(s.loop.seed)
    module = SlotModule(cfg)
    plan = slot_phases(cfg)
    ctx.log(f'slot attention: {len(data)} frames x 2 directions, {s.steps} steps of batch {s.loop.batch_size} at '
            f'{data.size[0]}x{data.size[1]}')
    result = train(module, _slot_loss, data, plan, s.loop, ctx.stage_dir, config_hash=ctx.hashes.train,
                   dist=ctx.dist, num_workers=cfg.runtime.num_workers, progress=cfg.runtime.progress, desc='seeds: slots')
    module.eval()
    ckpt_io.save_atomic({'format': ckpt_io.CHECKPOINT_FORMAT, 'stage': NAME, 'model': module.slots.state_dict(),
                         'config_hash': ctx.hashes.train, 'global_step': result.global_step}, ctx.stage_dir / SLOTS_FILE)
    return module.slots, {'steps': result.global_step, 'phases': [[p.name, p.steps] for p in plan],
                          'batch_size': s.loop.batch_size, 'frames': len(data), 'resumed_from': result.resumed_from,
                          'steps_this_run': result.trained_steps, 'seconds_per_step': result.seconds_per_step}


# ------------------------------------------------------------------------------------- seeds


def write_seeds(ctx: StageContext, split: str, net: SlotAutoEncoder | None) -> dict:
    """Seeds of every triplet centre frame of `split`; returns its statistics."""
    cfg = ctx.cfg
    sc = cfg.masks.seeds
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist)
    if ds is None:
        return {}
    preds = ScenePredictions(ctx.upstream_dir('scene'))
    grounds = GroundMaps(ctx.upstream_dir('ground'))
    seeds = LabelMaps(ctx.stage_dir, 'the seeds stage (python -m training seeds)')
    locations = [ds.sample_location(i) for i in range(len(ds))]
    stats = {'frames': 0, 'frames_with_seeds': 0, 'seeds': 0, 'groups': {}, 'motion': sc.motion}
    cue = MotionCue.for_stage(ctx, split, ds)
    step = sc.slots.infer_batch_size
    slot_data = SlotSampleDataset(cfg, preds, grounds, split, locations) if net is not None else None
    H, W = cfg.data.height, cfg.data.width
    for s in tqdm(range(0, len(locations), step), desc=f'seeds: {split}', disable=not cfg.runtime.progress,
                  mininterval=1.0, dynamic_ncols=True):
        chunk = list(range(s, min(len(locations), s + step)))
        groups_batch = None
        if net is not None:
            x = torch.stack([slot_data[k]['x'][0] for k in chunk])       # the -1 direction (reference)
            torch.manual_seed(sc.slots.loop.seed + s)                      # the slots' random start, reproducible
            groups_batch = slot_groups(net, x, H, W, sc.slots.mask_threshold)
        for j, k in enumerate(chunk):
            seq, t = locations[k]
            c = cue.frame(k)
            moving, ground = c['moving'], c['ground']
            if groups_batch is None:
                groups = group_moving_regions(moving, c['depth'], c['edges_flow'], sc)
            else:
                groups = groups_batch[j]
            ids = seed_masks(groups, moving, ground, sc, stats['groups'])
            seeds.write(split, seq, t, ids)
            n = int(ids.max())
            stats['frames'] += 1
            stats['frames_with_seeds'] += n > 0
            stats['seeds'] += n
    ctx.log(f'{split}: {stats["seeds"]} seeds in {stats["frames_with_seeds"]}/{stats["frames"]} frames '
            f'(groups: {stats["groups"]})')
    return stats


def _label_colours(ids: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(3)
    lut = rng.integers(60, 256, (int(ids.max()) + 1, 3)).astype(np.uint8)
    lut[0] = 0
    return lut[ids]


def overlay_ids(rgb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """uint8 RGB [H,W,3]: each instance of an id map tinted in its own colour over the image (0 untouched)."""
    col = _label_colours(ids.astype(np.int64))
    m = ids > 0
    out = rgb.copy()
    out[m] = (0.4 * rgb[m] + 0.6 * col[m]).astype(np.uint8)
    return out


def write_previews(ctx: StageContext, split: str, net: SlotAutoEncoder | None, n: int = 4) -> list[str]:
    """Frames with seeds first: RGB | residual flow (optical: observed - rigid) | moving pixels | groups | seeds."""
    cfg = ctx.cfg
    sc = cfg.masks.seeds
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist)
    if ds is None or not len(ds):
        return []
    preds = ScenePredictions(ctx.upstream_dir('scene'))
    grounds = GroundMaps(ctx.upstream_dir('ground'))
    seeds = LabelMaps(ctx.stage_dir)
    order = sorted(range(len(ds)), key=lambda i: -int(seeds.frame(split, *ds.sample_location(i)).max() > 0))
    picked = sorted(order[:max(1, len(order) // 2)])
    picked = picked[::max(1, len(picked) // n)][:n]
    out = []
    cue = MotionCue.for_stage(ctx, split, ds)
    for k, i in enumerate(picked):
        seq, t = ds.sample_location(i)
        rgb = (ds[i]['frames_raw'][1].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        c = cue.frame(i)
        moving = c['moving']
        if net is None:
            groups = group_moving_regions(moving, c['depth'], c['edges_flow'], sc)
        else:
            data = SlotSampleDataset(cfg, preds, grounds, split, [(seq, t)])
            torch.manual_seed(sc.slots.loop.seed)
            groups = slot_groups(net, data[0]['x'][:1], cfg.data.height, cfg.data.width, sc.slots.mask_threshold)[0]
        ids = seeds.frame(split, seq, t)
        grey = np.repeat((moving * 255).astype(np.uint8)[..., None], 3, -1)
        panels = {f'rgb {seq}/{t}': rgb,
                  ('residual flow' if sc.motion == 'network' else 'observed - rigid flow'): colourise_flow(c['shown']),
                  'moving (not ground)': grey, f'groups ({sc.method})': _label_colours(groups.astype(np.int64)),
                  f'seeds ({int(ids.max())})': overlay_ids(rgb, ids)}
        path = ctx.stage_dir / 'previews' / f'seeds_{split}_{k}.png'
        write_png(path, compose(panels, columns=5))
        out.append(path.name)
    return out


def execute(ctx: StageContext) -> dict | None:
    cfg, stage_dir = ctx.cfg, ctx.stage_dir
    sc = cfg.masks.seeds
    if ctx.dist.distributed:
        raise RuntimeError('the seeds stage runs in one process; run it without torchrun')
    # seeds of other settings must not survive
    keep_outputs_of(stage_dir / 'source.json', {'seeds': ctx.hashes.train},
                    [stage_dir / split for split in ('train', 'val', 'test')])
    net, training = None, None
    if sc.method == 'slots':
        net, training = train_slots(ctx)
    stats = {split: write_seeds(ctx, split, net) for split in sc.splits}
    write_json_atomic(stage_dir / 'stats.json', stats)
    if not stats.get('train', {}).get('seeds'):
        if sc.motion == 'optical':
            raise StageError('no seed masks in the training split: no moving object passes the seed rules where the '
                             'observed flow disagrees with stage 1\'s depth and pose (masks.seeds.motion optical). '
                             'Train stage 1 longer, lower masks.seeds.optical_log_ratio, relax '
                             'masks.seeds.require_ground_contact, or record while other traffic moves')
        raise StageError('no seed masks in the training split: the stage-1 residual flow shows no moving object that '
                         'passes the seed rules. Lower masks.seeds.flow_threshold_px / contrast_factor, relax '
                         'masks.seeds.require_ground_contact, or record while other traffic moves')
    previews = []
    for split in sc.splits:
        if stats.get(split):
            previews += write_previews(ctx, split, net)
    body = {'method': sc.method, 'stats': stats, 'previews': previews,
            'predictions': {'root': '.', 'layout': '<split>/<sequence>/<frame:06d>.png (uint16 seed ids, 0 = none)',
                            'pattern': '*.png', 'counts': {s: v['frames'] for s, v in stats.items() if v}}}
    if training is not None:
        body['training'] = training
        body['model_selection'] = 'last checkpoint (label-free)'
        body['files'] = {'checkpoint': file_entry(stage_dir, SLOTS_FILE)}
    return body


def load_slots(stage_dir: str | os.PathLike, cfg: PipelineConfig) -> SlotAutoEncoder:
    s = cfg.masks.seeds.slots
    net = SlotAutoEncoder(s.slots, s.slot_dim, s.iterations, s.channels)
    net.load_state_dict(ckpt_io.load(Path(stage_dir) / SLOTS_FILE, map_location='cpu')['model'])
    return net.eval()
