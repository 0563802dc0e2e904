"""Stage 2 (`python -m training objects`): static/dynamic labels, mask correspondences, object depth.

Reads the stage-1 outputs (scene predictions and weights) and writes in `<run_dir>/objects/`:

    labels/<split>.json                  {"<seq>/<frame:06d>": [{"id", "label", "area", cues...}]} (design §5)
    masks/<split>/<seq>/<frame>.npz      ids [N], masks uint8 [N,3,H,W]: each kept instance in frames
                                         t-gap, t, t+gap (its three masks are all large enough)
    object_model.pt                      the object depth + pose networks (last checkpoint)
    object_depth/<split>/<seq>/<frame>.npz
                                         ids [N], depth float16 [N,H,W]: object-network depth of every
                                         labelled instance, inside its mask (0 outside)
    previews/labels_<split>_<k>.png      RGB | labels (green static, red dynamic) | residual flow | object depth
    checkpoints/, metrics.csv, metrics.png, previews/step_*.png, config.yaml, manifest.json

Labelling: training.stages.labelling (stage-1 outputs only). Correspondences (reference §3.1 step
7): each instance mask is forward-splatted into frames t±gap with the stage-1 depth, pose and
residual flow (z-buffered, kept where ≥ 0.5) — the way that works with any segmentation node — or,
when the source keeps instance ids consistent over time (`correspondence: id`; `auto` picks it for
synthetic data), taken from the neighbouring frames' masks by id. With ids available both are
computed and their agreement (IoU) is recorded in the manifest.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dynadepth_ros.atomic_files import write_json_atomic
from dynadepth_ros.camera import resize_nearest
from training import checkpoint as ckpt_io
from training.artifacts import file_entry
from training.config import PipelineConfig, to_dict
from training.data import build_dataset
from training.data.triplets import Layer, TripletDataset
from training.geometry import splat_to_source
from training.loop import Phase, train
from training.previews import colourise_depth, colourise_flow, compose, write_png
from training.stages import scene as scene_stage
from training.stages.labelling import label_frame
from training.stages.mask_seeds import optical_cue
from training.stages.object_model import ObjectModel
from training.stages.outputs import ObjectLabels, ObjectOutputs, ScenePredictions, frame_key, learned_masks_root
from training.stages.runner import StageContext, data_settings, run_stage
from training.stages.scene_model import OFFSETS

NAME = 'objects'
REQUIRES = ('scene',)
MODEL_FILE = 'object_model.pt'


def hash_parts(cfg: PipelineConfig) -> tuple[dict, dict]:
    o = to_dict(cfg.objects)
    train_part = {'stage': NAME, 'data': data_settings(cfg), 'objects': {k: v for k, v in o.items()
                                                                          if k not in ('infer_batch_size',)}}
    if cfg.objects.labelling.optical_log_ratio > 0:     # the optical cue compares flows above this rigid flow
        train_part['optical_min_rigid_px'] = cfg.masks.seeds.optical_min_rigid_px
    return train_part, {}


def run(cfg: PipelineConfig, run_dir, dist=None, *, restart: bool = False):
    return run_stage(NAME, cfg, run_dir, dist, restart=restart)


def stable_ids(cfg: PipelineConfig) -> bool:
    """Whether instance ids name the same object across frames: the synthetic data's own masks (learned
    masks are numbered per frame)."""
    return cfg.data.source == 'synthetic' and cfg.objects.masks == 'topic'


def correspondence_mode(cfg: PipelineConfig) -> str:
    mode = cfg.objects.correspondence
    if mode == 'auto':
        return 'id' if stable_ids(cfg) else 'splat'
    if mode == 'id' and cfg.objects.masks == 'learned':
        raise ValueError('objects.correspondence: id needs instance ids that are stable over time; learned masks '
                         '(objects.masks: learned) are numbered per frame: use auto or splat')
    return mode


def instance_classes(seq, t):
    """{instance id: class name} of frame t of a sequence that records instances, else None (stages 2 and 3
    read it to drop road classes)."""
    get = getattr(seq, 'instances', None)
    inst = get(t) if get is not None else None
    if inst is None:
        return None
    out = {}
    for i in inst:
        d = i if isinstance(i, dict) else vars(i)
        out[int(d['id'])] = str(d.get('class', d.get('cls', d.get('class_name', ''))))
    return out


def splat_masks(depth: torch.Tensor, K: torch.Tensor, T: torch.Tensor, masks: torch.Tensor,
                flow: torch.Tensor | None, upsample: int = 3) -> torch.Tensor:
    """Instance masks [1,N,H,W] (reference frame) forward-splatted into a source view → bool [N,H,W]
    (z-buffered; a source pixel belongs to an instance when ≥ half of its winning points do)."""
    _, warped = splat_to_source(depth, K, T, values=masks, residual_flow=flow, upsample=upsample)
    return warped[0] >= 0.5


def neighbour_masks_by_id(seq, t: int, gap: int, ids: list[int], height: int, width: int) -> dict[int, np.ndarray]:
    """{id: bool [2,H,W]} masks of the same ids in frames t-gap and t+gap (network resolution)."""
    frames = [seq.instance_mask(t - gap), seq.instance_mask(t + gap)]
    out = {}
    resized = [None if m is None else resize_nearest(np.asarray(m, np.int32), height, width) for m in frames]
    for i in ids:
        out[i] = np.stack([np.zeros((height, width), bool) if m is None else m == i for m in resized])
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 1.0


@torch.no_grad()
def label_split(ctx: StageContext, scene_model, split: str, mode: str) -> dict:
    """Labels + mask triplets of every triplet centre frame of `split`; returns statistics."""
    cfg = ctx.cfg
    oc = cfg.objects
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist, learned_masks_root(cfg, ctx.run_dir))
    if ds is None:
        return {}
    preds = ScenePredictions(ctx.upstream_dir('scene'))
    outputs = ObjectOutputs(ctx.stage_dir)
    H, W = cfg.data.height, cfg.data.width
    need_triplet = max(1, int(math.ceil(oc.min_triplet_area_fraction * H * W)))
    frames: dict[str, list] = {}
    stats = {'frames': 0, 'instances': 0, 'dynamic': 0, 'static': 0, 'with_correspondences': 0,
             'cues': {}, 'splat_vs_id_iou': []}
    loader = DataLoader(ds, batch_size=oc.infer_batch_size, shuffle=False, num_workers=cfg.runtime.num_workers)
    check = oc.check_splat_against_ids and stable_ids(cfg)   # ids are stable only there
    splat_needed = mode == 'splat' or check
    optical = oc.labelling.optical_log_ratio > 0
    for batch in tqdm(loader, desc=f'objects: label {split}', disable=not cfg.runtime.progress, mininterval=1.0,
                      dynamic_ncols=True):
        raw = batch['frames_raw']
        poses = {}
        if splat_needed or optical:           # the camera motion of the batch, for splatting and the optical cue
            for off in OFFSETS:
                poses[off] = scene_model.pose.reference_to_source(raw[:, 1], raw[:, off + 1], off)[0]
        for j, idx in enumerate(batch['index'].tolist()):
            seq_name, t = ds.sample_location(idx)
            seq = ds.sequences[ds.samples[idx][0]]
            pred = preds.frame(split, seq_name, t)
            mask = batch['mask'][j].numpy()
            K = batch['K'][j].numpy().astype(np.float64)
            disagreement = None
            if optical:
                disagreement, _ = optical_cue({'frames_raw': raw[j], 'K': batch['K'][j]}, pred.depth,
                                              lambda off, frames: poses[off][j].numpy(),
                                              cfg.masks.seeds.optical_min_rigid_px)
            labels, inst = label_frame(mask, pred, K, oc.labelling, instance_classes(seq, t),
                                       seed=idx, disagreement=disagreement)
            frames[frame_key(seq_name, t)] = labels
            stats['frames'] += 1
            for lab in labels:
                stats['instances'] += 1
                stats[lab.label] += 1
                for c in lab.extra.get('cues', []):
                    stats['cues'][c] = stats['cues'].get(c, 0) + 1
            if not inst:
                outputs.write_masks(split, seq_name, t, {})
                continue
            ids = sorted(inst)
            ref = np.stack([inst[i] for i in ids])
            by_id = neighbour_masks_by_id(seq, t, cfg.data.frame_gap, ids, H, W) if mode == 'id' or check else None
            splat = None
            if splat_needed:
                depth = torch.from_numpy(pred.depth)[None, None]
                vals = torch.from_numpy(ref.astype(np.float32))[None]
                Kt = batch['K'][j:j + 1]
                splat = {}
                for off, flow in ((-1, pred.flow_prev), (1, pred.flow_next)):
                    splat[off] = splat_masks(depth, Kt, poses[off][j:j + 1], vals,
                                             torch.from_numpy(flow)[None], cfg.scene.model.splat_upsample).numpy()
            kept = {}
            for n, i in enumerate(ids):
                if mode == 'id':
                    prev, nxt = by_id[i]
                else:
                    prev, nxt = splat[-1][n], splat[1][n]
                if by_id is not None and splat is not None:
                    for k, off in enumerate(OFFSETS):
                        if by_id[i][k].sum() >= need_triplet:
                            stats['splat_vs_id_iou'].append(_iou(splat[off][n], by_id[i][k]))
                if prev.sum() >= need_triplet and nxt.sum() >= need_triplet:   # inst: already >= min area
                    kept[i] = np.stack([prev, inst[i], nxt]).astype(np.uint8)
            stats['with_correspondences'] += len(kept)
            outputs.write_masks(split, seq_name, t, kept)
    ObjectLabels.write(ctx.stage_dir, split, frames)
    ious = stats.pop('splat_vs_id_iou')
    if ious:
        stats['splat_vs_id_iou'] = {'mean': float(np.mean(ious)), 'median': float(np.median(ious)), 'n': len(ious)}
    ctx.log(f'{split}: {stats["instances"]} instances in {stats["frames"]} frames: {stats["dynamic"]} dynamic, '
            f'{stats["static"]} static (cues {stats["cues"]}); {stats["with_correspondences"]} with mask triplets '
            f'({mode})' + (f'; splat vs id IoU {stats["splat_vs_id_iou"]["mean"]:.2f}' if ious else ''))
    return stats


class ObjectSampleDataset(Dataset):
    """One sample per (frame, instance) with a mask triplet: the triplet sample plus `object_masks`
    uint8 [3,H,W], flipped and resized with the frames (TripletDataset layers)."""

    def __init__(self, triplets: TripletDataset, outputs: ObjectOutputs, split: str):
        self.triplets, self.outputs, self.split = triplets, outputs, split
        self.entries: list[tuple[int, int]] = []
        for idx in range(len(triplets)):
            seq, t = triplets.sample_location(idx)
            p = outputs.masks_path(split, seq, t)
            if p.is_file():
                with np.load(p) as z:
                    self.entries.extend((idx, int(i)) for i in z['ids'])
        if not self.entries:
            raise ValueError(f'no {split} instance has a mask triplet: nothing to train the object network on '
                             f'(lower objects.min_triplet_area_fraction / objects.labelling.min_area_fraction, '
                             f'or use data with instance masks)')

    def set_epoch(self, epoch: int) -> None:
        self.triplets.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, k: int) -> dict:
        idx, oid = self.entries[k]
        seq, t = self.triplets.sample_location(idx)
        masks = self.outputs.masks(self.split, seq, t)[oid]
        item = self.triplets.load(idx, extra={'object_masks': Layer(masks, 'mask')})
        item['object_id'] = torch.tensor(oid, dtype=torch.int64)
        return item


def _loss(model, batch, phase):
    return model.loss(batch, phase)


@torch.no_grad()
def write_object_depth(ctx: StageContext, model: ObjectModel, split: str) -> int:
    """Object-network depth of every labelled instance of `split` (inside its mask)."""
    cfg = ctx.cfg
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist, learned_masks_root(cfg, ctx.run_dir))
    if ds is None:
        return 0
    labels = ObjectLabels(ctx.stage_dir, split)
    outputs = ObjectOutputs(ctx.stage_dir)
    model.eval()
    count = 0
    loader = DataLoader(ds, batch_size=cfg.objects.infer_batch_size, shuffle=False,
                        num_workers=cfg.runtime.num_workers)
    for batch in tqdm(loader, desc=f'objects: object depth {split}', disable=not cfg.runtime.progress,
                      mininterval=1.0, dynamic_ncols=True):
        images, masks, where = [], [], []
        for j, idx in enumerate(batch['index'].tolist()):
            seq, t = ds.sample_location(idx)
            for lab in labels.frame(seq, t):
                images.append(batch['frames_raw'][j, 1])
                masks.append((batch['mask'][j] == lab.id)[None])
                where.append((seq, t, lab.id))
        per_frame: dict[tuple[str, int], dict[int, np.ndarray]] = {}
        for j in range(len(batch['index'])):
            per_frame[ds.sample_location(batch['index'][j].item())] = {}
        step = cfg.objects.infer_batch_size
        for s in range(0, len(images), step):
            d = model.object_depth(torch.stack(images[s:s + step]), torch.stack(masks[s:s + step]).float())
            for k, (seq, t, oid) in enumerate(where[s:s + step]):
                per_frame[(seq, t)][oid] = d[k, 0].numpy()
        for (seq, t), depths in per_frame.items():
            outputs.write_depth(split, seq, t, depths)
            count += len(depths)
    return count


def write_label_previews(ctx: StageContext, split: str, n: int = 4) -> list[str]:
    """A few frames with dynamic instances: RGB | labels (green static, red dynamic) | flow | object depth."""
    cfg = ctx.cfg
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist, learned_masks_root(cfg, ctx.run_dir))
    if ds is None:
        return []
    labels = ObjectLabels(ctx.stage_dir, split)
    outputs = ObjectOutputs(ctx.stage_dir)
    preds = ScenePredictions(ctx.upstream_dir('scene'))
    chosen = [(seq, t, labs) for seq, t, labs in labels.items() if any(lab.dynamic for lab in labs)]
    if not chosen:
        chosen = list(labels.items())
    chosen = chosen[::max(1, len(chosen) // n)][:n]
    index = {ds.sample_location(i): i for i in range(len(ds))}
    written = []
    for k, (seq, t, labs) in enumerate(chosen):
        item = ds[index[(seq, t)]]
        rgb = (item['frames_raw'][1].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        mask = item['mask'].numpy()
        over = rgb.copy()
        for lab in labs:
            colour = np.array([230, 40, 40] if lab.dynamic else [40, 200, 60], np.uint8)
            m = mask == lab.id
            over[m] = (0.45 * over[m] + 0.55 * colour).astype(np.uint8)
        pred = preds.frame(split, seq, t)
        obj = np.zeros(mask.shape, np.float32)
        for oid, d in outputs.depth(split, seq, t).items():
            obj = np.where(d > 0, d / max(float(d[d > 0].mean()), 1e-6) * 10.0, obj)
        panels = {'rgb': rgb, 'labels (red dynamic)': over,
                  'residual flow': colourise_flow(np.stack([pred.flow_prev, pred.flow_next]).mean(0)),
                  'object depth (mean-normalised)': colourise_depth(obj)}
        path = ctx.stage_dir / 'previews' / f'labels_{split}_{k}.png'
        write_png(path, compose(panels, columns=2))
        written.append(path.name)
    return written


def execute(ctx: StageContext) -> dict | None:
    cfg, dist, stage_dir = ctx.cfg, ctx.dist, ctx.stage_dir
    oc = cfg.objects
    if dist.distributed:
        raise RuntimeError('stage 2 runs in one process (its training set is small); run it without torchrun')
    scene_model, _, scene_manifest = scene_stage.load_model(ctx.upstream_dir('scene'))
    mode = correspondence_mode(cfg)
    source_marker = {'scene': ctx.upstream['scene'].get('config_hash'), 'objects': ctx.hashes.train}
    marker = stage_dir / 'labels' / 'source.json'
    if marker.is_file():
        import json
        try:
            same = json.loads(marker.read_text()) == source_marker
        except ValueError:
            same = False
        if not same:
            for d in ('labels', ObjectOutputs.MASKS, ObjectOutputs.DEPTH):
                shutil.rmtree(stage_dir / d, ignore_errors=True)
    label_stats = {}
    for split in oc.splits:
        if (stage_dir / 'labels' / f'{split}.json').is_file() and marker.is_file():
            ctx.log(f'{split}: labels already written by this configuration; kept')
            continue
        label_stats[split] = label_split(ctx, scene_model, split, mode)
    write_json_atomic(marker, source_marker)
    stats_path = stage_dir / 'labels' / 'stats.json'
    if label_stats:
        write_json_atomic(stats_path, label_stats)

    # the object depth network, started from the stage-1 weights
    ckpt_io.seed_everything(oc.loop.seed)
    model = ObjectModel(cfg.scene.model, oc.smoothness_weight)
    model.load_scene_weights(scene_model.state_dict())
    del scene_model
    triplets = build_dataset(cfg.data, 'train', augment=True, seed=oc.loop.seed, masks=learned_masks_root(cfg, ctx.run_dir))
    train_set = ObjectSampleDataset(triplets, ObjectOutputs(stage_dir), 'train')
    phases = [Phase(p.name, p.steps, ('depth', 'pose'), p.lr, tuple(p.lr_decay_at), p.lr_decay) for p in oc.phases]
    ctx.log(f'{len(train_set)} training objects (instance triplets); {sum(p.steps for p in phases)} steps of batch '
            f'{oc.loop.batch_size}')
    result = train(model, _loss, train_set, phases, oc.loop, stage_dir, config_hash=ctx.hashes.train, dist=dist,
                   num_workers=cfg.runtime.num_workers, progress=cfg.runtime.progress, desc='objects')
    model.eval()
    ckpt_io.save_atomic({'format': ckpt_io.CHECKPOINT_FORMAT, 'stage': NAME, 'model': model.state_dict(),
                         'config_hash': ctx.hashes.train, 'global_step': result.global_step}, stage_dir / MODEL_FILE)
    depth_counts = {split: write_object_depth(ctx, model, split) for split in oc.splits}
    previews = []
    for split in oc.splits:
        previews += write_label_previews(ctx, split)
    import json
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else label_stats
    return {
        'training': {'steps': result.global_step, 'phases': [[p.name, p.steps] for p in oc.phases],
                     'batch_size': oc.loop.batch_size, 'objects': len(train_set),
                     'resumed_from': result.resumed_from, 'steps_this_run': result.trained_steps,
                     'seconds_per_step': result.seconds_per_step},
        'model_selection': 'last checkpoint (label-free)',
        'correspondence': mode,
        'labelling': {'rule': to_dict(oc.labelling), 'stats': stats},
        'object_depth_counts': depth_counts,
        'previews': previews,
        'files': {'checkpoint': file_entry(stage_dir, MODEL_FILE),
                  **{f'labels_{s}': file_entry(stage_dir, Path('labels') / f'{s}.json') for s in oc.splits
                     if (stage_dir / 'labels' / f'{s}.json').is_file()}},
        'scene_checkpoint_sha256': scene_manifest['files']['checkpoint']['sha256'],
    }


def load_model(stage_dir: str | os.PathLike, device='cpu'):
    """(ObjectModel in eval mode, PipelineConfig) of a finished stage 2."""
    from training.config import load_config

    stage_dir = Path(stage_dir)
    cfg = load_config(config_file=stage_dir / 'config.yaml')
    model = ObjectModel(cfg.scene.model, cfg.objects.smoothness_weight)
    saved = ckpt_io.load(stage_dir / MODEL_FILE, map_location='cpu')
    model.load_state_dict(saved['model'])
    return model.to(device).eval(), cfg

