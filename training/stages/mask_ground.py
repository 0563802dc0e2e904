"""Learned masks 1/3 (`python -m training ground`): the ground segmentation network (reference §3U 1.2).

Runs only with objects.masks: learned. Reads the stage-1 predictions (depth) and writes in
`<run_dir>/masks/ground/`:

    ground_model.pt                      GroundNet weights (the last checkpoint)
    predictions/<split>/<seq>/<frame:06d>.png
                                         ground probability x 255 of every triplet centre frame of
                                         masks.ground.predict_splits (the seeds stage reads them)
    previews/ground_<split>_<k>.png      RGB | noisy target (stage-1 normals) | ground probability
    checkpoints/, metrics.csv, metrics.png, previews/step_*.png, config.yaml, manifest.json

Noisy target: training.ground.ground_mask of the stage-1 depth (normals within masks.ground.angle_deg of
the vertical, from neighbours step_px away, below the camera). Training: training/networks/ground_net.py;
the crop self-supervision starts at crop_from of the steps (a second phase, `ground_crops`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from training import checkpoint as ckpt_io
from training.artifacts import file_entry
from training.config import PipelineConfig, to_dict
from training.data import build_dataset
from training.data.triplets import Layer, TripletDataset
from training.ground import ground_mask
from training.loop import Phase, train
from training.networks.ground_net import GroundNet, ground_loss
from training.networks.segmentation import normalised_disparity
from training.previews import colourise_depth, compose, write_png
from training.stages import scene as scene_stage
from training.stages.outputs import GroundMaps, ScenePredictions
from training.stages.runner import StageContext, data_settings, run_stage

NAME = 'ground'
REQUIRES = ('scene',)
MODEL_FILE = 'ground_model.pt'


def hash_parts(cfg: PipelineConfig) -> tuple[dict, dict]:
    g = to_dict(cfg.masks.ground)
    out = {'predict_splits': g.pop('predict_splits')}
    g.pop('infer_batch_size', None)
    return {'stage': NAME, 'data': data_settings(cfg), 'ground': g}, out


def run(cfg: PipelineConfig, run_dir, dist=None, *, restart: bool = False):
    return run_stage(NAME, cfg, run_dir, dist, restart=restart)


def noisy_target(depth: np.ndarray, K: np.ndarray, cfg: PipelineConfig) -> np.ndarray:
    """float32 [H,W] in {0,1}: the ground of a stage-1 depth map [H,W] (metres) with intrinsics K [3,3]."""
    g = cfg.masks.ground
    return ground_mask(depth, K, g.angle_deg, g.step_px).astype(np.float32)


class GroundSampleDataset(Dataset):
    """Triplet centre frames with their stage-1 depth: rgb [3,H,W] (colour-augmented), disparity [1,H,W]
    (normalised), target [1,H,W] (noisy ground of the flipped-with-the-frame depth and intrinsics)."""

    def __init__(self, cfg: PipelineConfig, triplets: TripletDataset, preds: ScenePredictions, split: str):
        self.cfg, self.triplets, self.preds, self.split = cfg, triplets, preds, split

    def set_epoch(self, epoch: int) -> None:
        self.triplets.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, idx: int) -> dict:
        seq, t = self.triplets.sample_location(idx)
        depth = self.preds.frame(self.split, seq, t).depth
        item = self.triplets.load(idx, extra={'scene_depth': Layer(depth, 'depth')})
        d = item['scene_depth'].numpy()
        target = noisy_target(d, item['K'].numpy().astype(np.float64), self.cfg)
        disp = normalised_disparity(item['scene_depth'][None, None])[0]
        key = 'frames' if self.triplets.augment is not None else 'frames_raw'
        return {'rgb': item[key][1], 'disparity': disp, 'target': torch.from_numpy(target[None])}


class GroundModule(nn.Module):
    """The trainable parts (one: `ground`) and the loss of the stage."""

    def __init__(self, cfg: PipelineConfig):
        super().__init__()
        self.ground = GroundNet(cfg.masks.ground.width)
        self.settings = cfg.masks.ground

    def loss(self, batch: dict, phase: str):
        crop = self.settings.crop_weight if phase == 'ground_crops' else 0.0
        return ground_loss(self.ground, batch['rgb'], batch['disparity'], batch['target'],
                           self.settings.smoothness_weight, crop)


def _loss(model, batch, phase):
    return model.loss(batch, phase)


def phases(cfg: PipelineConfig) -> list[Phase]:
    """Two phases of one schedule: without, then with the crop self-supervision (the decay steps split)."""
    g = cfg.masks.ground
    first = int(round(g.steps * g.crop_from)) if g.crop_weight > 0 else g.steps
    out = [Phase('ground', first, ('ground',), g.lr, tuple(s for s in g.lr_decay_at if s < first), 0.5)]
    if g.steps > first:
        lr = g.lr * 0.5 ** sum(1 for s in g.lr_decay_at if s <= first)
        out.append(Phase('ground_crops', g.steps - first, ('ground',), lr,
                         tuple(s - first for s in g.lr_decay_at if s > first), 0.5))
    return out


@torch.no_grad()
def ground_probability(net: GroundNet, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """float32 [B,1,H,W] ground probability of rgb [B,3,H,W] in [0,1] with depth [B,1,H,W] (any scale)."""
    net.eval()
    return torch.sigmoid(net(rgb, normalised_disparity(depth)))


def write_predictions(ctx: StageContext, net: GroundNet, split: str) -> int:
    cfg = ctx.cfg
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist)
    if ds is None:
        return 0
    preds = ScenePredictions(ctx.upstream_dir('scene'))
    maps = GroundMaps(ctx.stage_dir)
    step = cfg.masks.ground.infer_batch_size
    n = 0
    for s in tqdm(range(0, len(ds), step), desc=f'ground: predict {split}', disable=not cfg.runtime.progress,
                  mininterval=1.0, dynamic_ncols=True):
        idx = list(range(s, min(len(ds), s + step)))
        where = [ds.sample_location(i) for i in idx]
        if not all(preds.path(split, *w).is_file() for w in where):
            raise FileNotFoundError(f'stage 1 wrote no predictions for the {split} split ({preds.root / split}); '
                                    f'add it to scene.predict_splits or drop it from masks.ground.predict_splits')
        rgb = torch.stack([ds[i]['frames_raw'][1] for i in idx])
        depth = torch.stack([torch.from_numpy(preds.frame(split, *w).depth)[None] for w in where])
        prob = ground_probability(net, rgb, depth)[:, 0].numpy()
        for w, p in zip(where, prob):
            maps.write(split, *w, p)
        n += len(idx)
    ctx.log(f'{split}: {n} ground maps under {maps.root / split}')
    return n


def write_previews(ctx: StageContext, split: str, n: int = 3) -> list[str]:
    cfg = ctx.cfg
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist)
    if ds is None or not len(ds):
        return []
    preds = ScenePredictions(ctx.upstream_dir('scene'))
    maps = GroundMaps(ctx.stage_dir)
    out = []
    for k, i in enumerate(np.unique(np.linspace(0, len(ds) - 1, n).round().astype(int)).tolist()):
        seq, t = ds.sample_location(i)
        item = ds[i]
        rgb = (item['frames_raw'][1].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        depth = preds.frame(split, seq, t).depth
        target = noisy_target(depth, item['K'].numpy().astype(np.float64), cfg)
        prob = maps.frame(split, seq, t)
        grey = lambda a: np.repeat((np.clip(a, 0, 1) * 255).astype(np.uint8)[..., None], 3, -1)  # noqa: E731
        over = rgb.copy()
        over[prob >= 0.5] = (0.5 * over[prob >= 0.5] + [0, 110, 0]).astype(np.uint8)
        panels = {f'rgb {seq}/{t}': rgb, 'stage-1 depth': colourise_depth(depth),
                  'noisy target (normals)': grey(target), 'ground probability': grey(prob), 'ground >= 0.5': over}
        path = ctx.stage_dir / 'previews' / f'ground_{split}_{k}.png'
        write_png(path, compose(panels, columns=5))
        out.append(path.name)
    return out


def execute(ctx: StageContext) -> dict | None:
    cfg, dist, stage_dir = ctx.cfg, ctx.dist, ctx.stage_dir
    g = cfg.masks.ground
    if dist.distributed:
        raise RuntimeError('the ground stage runs in one process; run it without torchrun')
    ckpt_io.seed_everything(g.loop.seed)
    module = GroundModule(cfg)
    preds = ScenePredictions(ctx.upstream_dir('scene'))
    train_set = GroundSampleDataset(cfg, build_dataset(cfg.data, 'train', augment=True, seed=g.loop.seed), preds,
                                    'train')
    plan = phases(cfg)
    ctx.log(f'{len(train_set)} training frames; {g.steps} steps of batch {g.loop.batch_size} '
            f'(crop self-supervision from step {plan[0].steps if len(plan) > 1 else "-"})')
    result = train(module, _loss, train_set, plan, g.loop, stage_dir, config_hash=ctx.hashes.train, dist=dist,
                   num_workers=cfg.runtime.num_workers, progress=cfg.runtime.progress, desc='ground')
    module.eval()
    ckpt_io.save_atomic({'format': ckpt_io.CHECKPOINT_FORMAT, 'stage': NAME, 'model': module.ground.state_dict(),
                         'width': g.width, 'config_hash': ctx.hashes.train, 'global_step': result.global_step},
                        stage_dir / MODEL_FILE)
    counts = {split: write_predictions(ctx, module.ground, split) for split in g.predict_splits}
    previews = []
    for split in g.predict_splits:
        if counts.get(split):
            previews += write_previews(ctx, split)
    shares = {}
    for split in g.predict_splits:
        if counts.get(split):
            maps = GroundMaps(stage_dir)
            files = sorted((maps.root / split).rglob('*.png'))[::max(1, counts[split] // 50)]
            import cv2
            shares[split] = float(np.mean([(cv2.imread(str(p), cv2.IMREAD_UNCHANGED) >= 128).mean() for p in files]))
    ctx.log('ground share of the image (probability >= 0.5): '
            + ', '.join(f'{s} {v:.2f}' for s, v in shares.items()))
    return {
        'training': {'steps': result.global_step, 'phases': [[p.name, p.steps] for p in plan],
                     'batch_size': g.loop.batch_size, 'frames': len(train_set), 'resumed_from': result.resumed_from,
                     'steps_this_run': result.trained_steps, 'seconds_per_step': result.seconds_per_step},
        'model_selection': 'last checkpoint (label-free)',
        'predictions': {'root': 'predictions', 'layout': '<split>/<sequence>/<frame:06d>.png (probability x 255)',
                        'pattern': '*.png', 'counts': {s: n for s, n in counts.items() if n}, 'ground_share': shares},
        'previews': previews,
        'files': {'checkpoint': file_entry(stage_dir, MODEL_FILE)},
    }


def load_model(stage_dir: str | os.PathLike, device='cpu') -> GroundNet:
    """The GroundNet of a finished ground stage, in eval mode."""
    saved = ckpt_io.load(Path(stage_dir) / MODEL_FILE, map_location='cpu')
    net = GroundNet(int(saved['width']))
    net.load_state_dict(saved['model'])
    return net.to(device).eval()
