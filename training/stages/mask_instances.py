"""Learned masks 3/3 (`python -m training instances`): the instance segmentation network, self-trained on the
seeds (reference §3U 1.3); its masks are what stage 2 reads with objects.masks: learned.

Runs only with objects.masks: learned. Reads the stage-1 depth network, the ground network and the seeds,
and writes in `<run_dir>/masks/instances/`:

    <split>/<seq>/<frame:06d>.png        the learned instance masks (design §5): uint16 ids, 0 = none, of
                                         every triplet centre frame of masks.instances.predict_splits
    inputs/<split>/<seq>/<frame:06d>.npz the network's extra inputs: disparity (stage-1 depth network,
                                         normalised by its maximum) and ground probability, uint8 x 255
    rounds/<r>/                          self-training round r: checkpoints/, metrics.csv/.png, previews/,
                                         model.pt, targets/ (the masks round r-1 predicted, which round r
                                         trains on; round 0 trains on the seeds), done.json
    instance_model.pt                    InstanceNet + GroundNet weights of the last round
    instances.onnx                       image + depth → foreground, centre, offset, ground (dynadepth_ros/
                                         instance_masks.py: contract, metadata and decoding), checked
                                         against torch with ONNX Runtime before it is written
    previews/instances_<split>_<k>.png   RGB | disparity | ground | seeds | learned masks
    stats.json, config.yaml, manifest.json

Each round trains masks.instances.steps_per_round steps through the shared loop (resumable), then predicts
the training frames at the round's score threshold (masks.instances.score_threshold, growing over the
rounds) and post-processes the masks (training/masks/postprocess.py) into the next round's targets; a
round whose predictions hold no mask keeps its targets. The last round predicts predict_splits with the
mirrored image added (flip_tta; the reference also adds zoomed crops, whose disparity it recomputes with
the depth network: left out for time).
"""
from __future__ import annotations

import copy
import io
import json
import os
import shutil
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

import dynadepth_ros
from dynadepth_ros.atomic_files import atomic_path, write_json_atomic
from dynadepth_ros.instance_masks import INPUTS, OUTPUTS, InstanceModelMetadata, decode_instances, read_instance_metadata
from training import checkpoint as ckpt_io
from training.artifacts import file_entry
from training.config import PipelineConfig, to_dict
from training.data import build_dataset
from training.data.triplets import Layer, TripletDataset
from training.export import ExportError
from training.loop import Phase, train
from training.masks.postprocess import PostprocessRules, add_missed_seeds, masks_of, postprocess
from training.networks.ground_net import GroundNet
from training.networks.instance_net import InstanceNet, instance_loss, instance_targets
from training.networks.segmentation import normalised_disparity
from training.previews import colourise_depth, compose, write_png
from training.stages import mask_ground
from training.stages import scene as scene_stage
from training.stages.mask_seeds import overlay_ids
from training.stages.outputs import LabelMaps, save_npz_atomic
from training.stages.runner import StageContext, StageError, data_settings, keep_outputs_of, run_stage

NAME = 'instances'
REQUIRES = ('scene', 'ground', 'seeds')
MODEL_FILE = 'instance_model.pt'
ONNX_FILE = 'instances.onnx'


def hash_parts(cfg: PipelineConfig) -> tuple[dict, dict]:
    i = to_dict(cfg.masks.instances)
    out = {'predict_splits': i.pop('predict_splits'), 'flip_tta': i.pop('flip_tta'),
           'export': cfg.export.hash_settings()}
    i.pop('infer_batch_size', None)
    return {'stage': NAME, 'data': data_settings(cfg), 'instances': i}, out


def run(cfg: PipelineConfig, run_dir, dist=None, *, restart: bool = False):
    return run_stage(NAME, cfg, run_dir, dist, restart=restart)


def rules(cfg: PipelineConfig) -> PostprocessRules:
    c = cfg.masks.instances
    return PostprocessRules(c.min_area_fraction, c.min_fill, c.duplicate_coverage, c.overlap_coverage)


def min_area(cfg: PipelineConfig) -> int:
    return max(1, int(np.ceil(cfg.masks.instances.min_area_fraction * cfg.data.height * cfg.data.width)))


# ------------------------------------------------------------------------------------- inputs


class InputCache:
    """inputs/<split>/<seq>/<frame:06d>.npz: uint8 [2,H,W] normalised disparity and ground probability x 255."""

    def __init__(self, stage_dir: Path):
        self.root = Path(stage_dir) / 'inputs'

    def path(self, split: str, seq: str, t: int) -> Path:
        return self.root / split / seq / f'{int(t):06d}.npz'

    def write(self, split: str, seq: str, t: int, inputs: np.ndarray) -> None:
        save_npz_atomic(self.path(split, seq, t), compressed=True,
                        inputs=np.clip(np.rint(inputs * 255.0), 0, 255).astype(np.uint8))

    def frame(self, split: str, seq: str, t: int) -> np.ndarray:
        """float32 [2,H,W]: disparity / max, ground probability."""
        with np.load(self.path(split, seq, t)) as z:
            return z['inputs'].astype(np.float32) / 255.0


@torch.no_grad()
def write_inputs(ctx: StageContext, depth_net, ground_net: GroundNet, split: str) -> int:
    """The disparity and ground inputs of every triplet centre frame of `split` not cached yet."""
    cfg = ctx.cfg
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist)
    if ds is None:
        return 0
    cache = InputCache(ctx.stage_dir)
    todo = [i for i in range(len(ds)) if not cache.path(split, *ds.sample_location(i)).is_file()]
    step = cfg.masks.instances.infer_batch_size
    for s in tqdm(range(0, len(todo), step), desc=f'instances: inputs {split}', disable=not cfg.runtime.progress,
                  mininterval=1.0, dynamic_ncols=True):
        idx = todo[s:s + step]
        rgb = torch.stack([ds[i]['frames_raw'][1] for i in idx])
        depth = depth_net.depth(rgb)
        disp = normalised_disparity(depth)
        ground = torch.sigmoid(ground_net(rgb, disp))
        both = torch.cat([disp, ground], 1).numpy()
        for i, x in zip(idx, both):
            cache.write(split, *ds.sample_location(i), x)
    return len(ds)


# ------------------------------------------------------------------------------------- training


class InstanceSampleDataset(Dataset):
    """Training frames with at least one target mask: rgb, disparity, ground (inputs) and foreground, centre,
    offset (instance_targets of the flipped-with-the-frame target ids)."""

    def __init__(self, triplets: TripletDataset, cache: InputCache, targets: LabelMaps, split: str):
        self.triplets, self.cache, self.targets, self.split = triplets, cache, targets, split
        self.entries = []
        for idx in range(len(triplets)):
            where = triplets.sample_location(idx)
            if targets.exists(split, *where) and targets.frame(split, *where).max() > 0:
                self.entries.append(idx)

    def set_epoch(self, epoch: int) -> None:
        self.triplets.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, k: int) -> dict:
        idx = self.entries[k]
        where = self.triplets.sample_location(idx)
        item = self.triplets.load(idx, extra={'inputs': Layer(self.cache.frame(self.split, *where), 'value'),
                                              'targets': Layer(self.targets.frame(self.split, *where).astype(np.int32),
                                                               'mask')})
        tg = instance_targets(item['targets'].numpy())
        key = 'frames' if self.triplets.augment is not None else 'frames_raw'
        return {'rgb': item[key][1], 'disparity': item['inputs'][0:1], 'ground': item['inputs'][1:2],
                **{k: torch.from_numpy(v) for k, v in tg.items()}}


class InstanceModule(nn.Module):
    def __init__(self, cfg: PipelineConfig):
        super().__init__()
        c = cfg.masks.instances
        self.instances = InstanceNet(c.width, offset_scale=max(cfg.data.height, cfg.data.width) / 8.0)
        self.settings = c

    def loss(self, batch: dict, phase: str):
        return instance_loss(self.instances, batch, self.settings.centre_weight, self.settings.offset_weight)


def _loss(model, batch, phase):
    return model.loss(batch, phase)


# ------------------------------------------------------------------------------------- prediction


def _flip_outputs(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs [B,C,H,W] of the mirrored image mapped back onto the image (offset x negated)."""
    back = {k: v[..., ::-1].copy() for k, v in out.items()}
    back['offset'][:, 0] *= -1
    return back


@torch.no_grad()
def network_outputs(net: InstanceNet, rgb: torch.Tensor, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    """{'foreground', 'centre': probabilities [B,1,H,W], 'offset': [B,2,H,W] px} for rgb [B,3,H,W] and the
    cached inputs [B,2,H,W]."""
    net.eval()
    out = net(rgb, inputs[:, 0:1], inputs[:, 1:2])
    return {'foreground': torch.sigmoid(out['foreground']).numpy(), 'centre': torch.sigmoid(out['centre']).numpy(),
            'offset': out['offset'].numpy()}


def decode_frame(cfg: PipelineConfig, outs: list[dict[str, np.ndarray]], j: int, ground: np.ndarray,
                 threshold: float, stats: dict | None = None) -> tuple[np.ndarray, list[float]]:
    """(uint16 ids, scores) of frame j from one or more sets of network outputs (the image, its mirror),
    decoded, pooled and post-processed."""
    c = cfg.masks.instances
    masks, scores = [], []
    for out in outs:
        ids, sc = decode_instances(out['foreground'][j, 0], out['centre'][j, 0], out['offset'][j],
                                   score_threshold=threshold, foreground_threshold=c.foreground_threshold,
                                   centre_kernel=c.centre_kernel, min_area=min_area(cfg))
        masks += masks_of(ids)
        scores += sc
    return postprocess(masks, scores, ground >= 0.5, rules(cfg), stats)


def predict_split(ctx: StageContext, net: InstanceNet, split: str, threshold: float, tta: bool,
                  dest: LabelMaps) -> dict:
    """Masks of every triplet centre frame of `split` into dest (with masks.instances.keep_seeds, plus the seeds
    of the frame that the network missed: training.masks.postprocess.add_missed_seeds); returns counts."""
    cfg = ctx.cfg
    seeds = LabelMaps(ctx.upstream_dir('seeds'), 'the seeds stage') if cfg.masks.instances.keep_seeds else None
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist)
    if ds is None:
        return {}
    cache = InputCache(ctx.stage_dir)
    step = cfg.masks.instances.infer_batch_size
    stats = {'frames': 0, 'frames_with_masks': 0, 'masks': 0, 'rules': {}, 'seeds_added': 0}
    for s in tqdm(range(0, len(ds), step), desc=f'instances: predict {split}', disable=not cfg.runtime.progress,
                  mininterval=1.0, dynamic_ncols=True):
        idx = list(range(s, min(len(ds), s + step)))
        where = [ds.sample_location(i) for i in idx]
        rgb = torch.stack([ds[i]['frames_raw'][1] for i in idx])
        inputs = torch.from_numpy(np.stack([cache.frame(split, *w) for w in where]))
        outs = [network_outputs(net, rgb, inputs)]
        if tta:
            outs.append(_flip_outputs(network_outputs(net, rgb.flip(-1), inputs.flip(-1))))
        for j, w in enumerate(where):
            ids, _ = decode_frame(cfg, outs, j, inputs[j, 1].numpy(), threshold, stats['rules'])
            if seeds is not None and seeds.exists(split, *w):
                ids, added = add_missed_seeds(ids, seeds.frame(split, *w))
                stats['seeds_added'] += added
            dest.write(split, *w, ids)
            n = int(ids.max())
            stats['frames'] += 1
            stats['frames_with_masks'] += n > 0
            stats['masks'] += n
    return stats


# ------------------------------------------------------------------------------------- export


class InstanceExportModule(nn.Module):
    """image [N,3,H,W], depth [N,1,H,W] → foreground, centre, offset, ground (dynadepth_ros/instance_masks.py)."""

    def __init__(self, ground: GroundNet, instances: InstanceNet):
        super().__init__()
        self.ground, self.instances = ground, instances

    def forward(self, image: torch.Tensor, depth: torch.Tensor):
        disp = normalised_disparity(depth)
        ground = torch.sigmoid(self.ground(image, disp))
        out = self.instances(image, disp, ground)
        return torch.sigmoid(out['foreground']), torch.sigmoid(out['centre']), out['offset'], ground


def export_instance_onnx(ground: GroundNet, instances: InstanceNet, out_path: Path, meta: InstanceModelMetadata,
                         images: np.ndarray, depths: np.ndarray, *, opset: int = 18, max_batch: int = 16,
                         tolerance: float = 1e-3) -> dict:
    """Write the instance model (atomically) after checking ONNX Runtime against torch on `images` [k,3,H,W] with
    `depths` [k,1,H,W]: every output within `tolerance` (probabilities; offsets within tolerance x the offset
    scale) and the decoded masks identical; ExportError and nothing written otherwise."""
    import onnx
    import onnxruntime as ort

    module = InstanceExportModule(copy.deepcopy(ground).cpu().float(), copy.deepcopy(instances).cpu().float()).eval()
    example = (torch.from_numpy(images[:2].astype(np.float32)), torch.from_numpy(depths[:2].astype(np.float32)))
    with atomic_path(out_path) as tmp:
        batch = torch.export.Dim('batch', min=1, max=int(max_batch))
        sink = io.StringIO()
        try:
            with warnings.catch_warnings(), redirect_stdout(sink):
                warnings.simplefilter('ignore')
                torch.onnx.export(module, example, str(tmp), input_names=list(INPUTS), output_names=list(OUTPUTS),
                                  opset_version=opset, dynamo=True, external_data=False,
                                  dynamic_shapes=({0: batch}, {0: batch}))
        except Exception as exc:
            raise ExportError(f'torch.onnx.export of the instance model failed ({type(exc).__name__}: {exc}); '
                              f'exporter output:\n{sink.getvalue()[-2000:]}') from exc
        model = onnx.load(str(tmp))
        for k, v in meta.to_props().items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, str(tmp))
        read_instance_metadata(tmp)
        session = ort.InferenceSession(str(tmp), providers=['CPUExecutionProvider'])
        worst = {name: 0.0 for name in OUTPUTS}
        same_masks = 0
        for s in range(0, len(images), 2):
            x, d = images[s:s + 2].astype(np.float32), depths[s:s + 2].astype(np.float32)
            with torch.no_grad():
                ref = [t.numpy() for t in module(torch.from_numpy(x), torch.from_numpy(d))]
            got = session.run(list(OUTPUTS), {'image': x, 'depth': d})
            for name, a, b in zip(OUTPUTS, ref, got):
                if b.shape != a.shape:
                    raise ExportError(f'ONNX Runtime output {name} is {b.shape}, torch {a.shape}')
                worst[name] = max(worst[name], float(np.abs(a - b).max()))
            for j in range(len(x)):
                kw = dict(score_threshold=meta.score_threshold, foreground_threshold=meta.foreground_threshold,
                          centre_kernel=meta.centre_kernel, min_area=meta.min_area())
                ia, _ = decode_instances(ref[0][j, 0], ref[1][j, 0], ref[2][j], **kw)
                ib, _ = decode_instances(got[0][j, 0], got[1][j, 0], got[2][j], **kw)
                same_masks += int(np.array_equal(ia, ib))
        limits = {name: tolerance * (instances.offset_scale if name == 'offset' else 1.0) for name in OUTPUTS}
        bad = [f'{n} {worst[n]:.2g} > {limits[n]:.2g}' for n in OUTPUTS if not worst[n] <= limits[n]]
        if bad:
            raise ExportError(f'the exported instance model disagrees with torch ({", ".join(bad)}); refusing to '
                              f'write {out_path}')
    return {'max_abs_diff': worst, 'frames': int(len(images)), 'identical_decoded_masks': same_masks,
            'bytes': out_path.stat().st_size, 'opset': opset, 'max_batch': int(max_batch), 'inputs': list(INPUTS),
            'outputs': list(OUTPUTS)}


# ------------------------------------------------------------------------------------- previews


def write_previews(ctx: StageContext, split: str, n: int = 4) -> list[str]:
    """Frames with masks: RGB | disparity | ground | seeds (train/val) | learned masks."""
    cfg = ctx.cfg
    ds = scene_stage.optional_dataset(cfg, split, ctx.dist)
    if ds is None or not len(ds):
        return []
    learned = LabelMaps(ctx.stage_dir)
    seeds = LabelMaps(ctx.upstream_dir('seeds'))
    cache = InputCache(ctx.stage_dir)
    with_masks = [i for i in range(len(ds)) if learned.frame(split, *ds.sample_location(i)).max() > 0]
    picked = (with_masks or list(range(len(ds))))
    picked = picked[::max(1, len(picked) // n)][:n]
    out = []
    for k, i in enumerate(picked):
        seq, t = ds.sample_location(i)
        rgb = (ds[i]['frames_raw'][1].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        inputs = cache.frame(split, seq, t)
        ids = learned.frame(split, seq, t)
        grey = np.repeat((inputs[1] * 255).astype(np.uint8)[..., None], 3, -1)
        panels = {f'rgb {split} {seq}/{t}': rgb, 'disparity (stage 1)': colourise_depth(1.0 / np.maximum(inputs[0], 1e-3)),
                  'ground': grey}
        if seeds.exists(split, seq, t):
            s_ids = seeds.frame(split, seq, t)
            panels[f'seeds ({int(s_ids.max())})'] = overlay_ids(rgb, s_ids)
        panels[f'learned masks ({int(ids.max())})'] = overlay_ids(rgb, ids)
        path = ctx.stage_dir / 'previews' / f'instances_{split}_{k}.png'
        write_png(path, compose(panels, columns=len(panels)))
        out.append(path.name)
    return out


# ------------------------------------------------------------------------------------- the stage


def _round_dir(stage_dir: Path, r: int) -> Path:
    return stage_dir / 'rounds' / f'{r:02d}'


def _targets(ctx: StageContext, r: int) -> LabelMaps:
    if r == 0:
        return LabelMaps(ctx.upstream_dir('seeds'), 'the seeds stage')
    return LabelMaps(_round_dir(ctx.stage_dir, r) / 'targets', f'self-training round {r - 1}')


def self_train(ctx: StageContext, module: InstanceModule, triplets: TripletDataset, cache: InputCache) -> list[dict]:
    """The self-training rounds (module docstring); resumes a killed run; returns one record per round."""
    cfg, stage_dir = ctx.cfg, ctx.stage_dir
    c = cfg.masks.instances
    records = []
    for r in range(c.rounds):
        rd = _round_dir(stage_dir, r)
        done = rd / 'done.json'
        tag = f'{ctx.hashes.train}/round{r}'
        try:
            record = json.loads(done.read_text())
            finished = record.get('hash') == tag
        except (OSError, ValueError):
            finished = False
        if finished:
            module.instances.load_state_dict(ckpt_io.load(rd / 'model.pt')['model'])
            ctx.log(f'round {r + 1}/{c.rounds}: done earlier ({record["targets"]} target masks -> '
                    f'{record.get("next_targets", "-")})')
            records.append(record)
            continue
        targets = _targets(ctx, r)
        data = InstanceSampleDataset(triplets, cache, targets, 'train')
        if not len(data):
            raise StageError(f'self-training round {r}: no training frame has a target mask (the seeds stage found '
                             f'none); see masks/seeds/stats.json')
        n_targets = sum(int(targets.frame('train', *triplets.sample_location(i)).max()) for i in data.entries)
        threshold = c.threshold_of_round(r)
        ctx.log(f'round {r + 1}/{c.rounds}: {len(data)} frames, {n_targets} target masks; {c.steps_per_round} steps, '
                f'then predictions at score >= {threshold:.2f}')
        phase = Phase(f'round{r}', c.steps_per_round, ('instances',), c.lr)
        result = train(module, _loss, data, [phase], c.loop, rd, config_hash=tag, dist=ctx.dist,
                       num_workers=cfg.runtime.num_workers, progress=cfg.runtime.progress, desc=f'instances: round {r}')
        ckpt_io.save_atomic({'format': ckpt_io.CHECKPOINT_FORMAT, 'model': module.instances.state_dict(),
                             'config_hash': tag}, rd / 'model.pt')
        record = {'hash': tag, 'round': r, 'frames': len(data), 'targets': n_targets, 'threshold': threshold,
                  'steps': result.global_step, 'seconds_per_step': result.seconds_per_step}
        if r + 1 < c.rounds:
            nxt = _round_dir(stage_dir, r + 1) / 'targets'
            shutil.rmtree(nxt, ignore_errors=True)
            stats = predict_split(ctx, module.instances, 'train', threshold, False, LabelMaps(nxt))
            record['next_targets'] = stats['masks']
            record['postprocess'] = stats['rules']
            if not stats['masks']:
                ctx.log(f'round {r + 1}: the network predicted no mask at score >= {threshold:.2f}; the next round '
                        f'keeps these targets')
                shutil.rmtree(nxt, ignore_errors=True)
                shutil.copytree(targets.root, nxt)
                record['next_targets'] = n_targets
        write_json_atomic(done, record)
        records.append(record)
    return records


def execute(ctx: StageContext) -> dict | None:
    cfg, dist, stage_dir = ctx.cfg, ctx.dist, ctx.stage_dir
    c = cfg.masks.instances
    if dist.distributed:
        raise RuntimeError('the instances stage runs in one process; run it without torchrun')
    # inputs, rounds and masks of other settings must go
    keep_outputs_of(stage_dir / 'source.json', {'instances': ctx.hashes.train},
                    [stage_dir / d for d in ('inputs', 'rounds', 'train', 'val', 'test')])

    scene_model, _, scene_manifest = scene_stage.load_model(ctx.upstream_dir('scene'))
    depth_net = scene_model.depth.eval()
    ground_net = mask_ground.load_model(ctx.upstream_dir('ground'))
    cache = InputCache(stage_dir)
    for split in c.predict_splits:
        write_inputs(ctx, depth_net, ground_net, split)

    ckpt_io.seed_everything(c.loop.seed)
    module = InstanceModule(cfg)
    triplets = build_dataset(cfg.data, 'train', augment=True, seed=c.loop.seed)
    rounds = self_train(ctx, module, triplets, cache)
    module.eval()
    ckpt_io.save_atomic({'format': ckpt_io.CHECKPOINT_FORMAT, 'stage': NAME, 'instances': module.instances.state_dict(),
                         'ground': ground_net.state_dict(), 'width': c.width, 'ground_width': cfg.masks.ground.width,
                         'offset_scale': module.instances.offset_scale, 'config_hash': ctx.hashes.train},
                        stage_dir / MODEL_FILE)

    final_threshold = c.threshold_of_round(c.rounds - 1)
    learned = LabelMaps(stage_dir)
    counts = {}
    for split in c.predict_splits:
        shutil.rmtree(stage_dir / split, ignore_errors=True)
        counts[split] = predict_split(ctx, module.instances, split, final_threshold, c.flip_tta, learned)
        if counts[split]:
            ctx.log(f'{split}: {counts[split]["masks"]} masks in {counts[split]["frames_with_masks"]}/'
                    f'{counts[split]["frames"]} frames under {stage_dir / split}')
    write_json_atomic(stage_dir / 'stats.json', {'rounds': rounds, 'masks': counts})
    if not counts.get('train', {}).get('masks'):
        raise StageError(f'the instance network found no object in the training split at score >= {final_threshold:.2f}, '
                         f'so stage 2 has nothing to label: the seeds gave it nothing it could learn with confidence. '
                         f'See the previews of masks/seeds and masks/instances/rounds/*/previews; train longer '
                         f'(masks.instances.steps_per_round), lower masks.instances.score_threshold, or record a mask '
                         f'topic')
    previews = []
    for split in c.predict_splits:
        if counts.get(split):
            previews += write_previews(ctx, split, n=3)

    ctx.log('exporting the instance network (with the ground network) to ONNX and checking it against torch')
    sample = scene_stage.optional_dataset(cfg, 'val', dist) or build_dataset(cfg.data, 'train', augment=False)
    pick = np.unique(np.linspace(0, len(sample) - 1, min(4, len(sample))).round().astype(int))
    images = np.stack([sample[int(i)]['frames_raw'][1].numpy() for i in pick])
    with torch.no_grad():
        depths = depth_net.depth(torch.from_numpy(images)).numpy()
    meta = InstanceModelMetadata(input_height=cfg.data.height, input_width=cfg.data.width,
                                 dataset=f'{cfg.data.source}:{Path(cfg.data.root).name}', config_hash=ctx.hashes.config,
                                 version=dynadepth_ros.__version__, score_threshold=final_threshold,
                                 foreground_threshold=c.foreground_threshold, centre_kernel=c.centre_kernel,
                                 min_area_fraction=c.min_area_fraction)
    report = export_instance_onnx(ground_net, module.instances, stage_dir / ONNX_FILE, meta, images, depths,
                                  opset=cfg.export.opset, max_batch=cfg.export.max_batch)
    ctx.log(f'wrote {stage_dir / ONNX_FILE} (max |torch - onnxruntime|: '
            + ', '.join(f'{k} {v:.1e}' for k, v in report['max_abs_diff'].items())
            + f'; decoded masks identical on {report["identical_decoded_masks"]}/{report["frames"]} frames)')
    return {
        'training': {'rounds': rounds, 'steps_per_round': c.steps_per_round, 'batch_size': c.loop.batch_size},
        'model_selection': 'last round (label-free)',
        'masks': {'counts': counts, 'score_threshold': final_threshold, 'flip_tta': c.flip_tta},
        'predictions': {'root': '.', 'layout': '<split>/<sequence>/<frame:06d>.png (uint16 ids, 0 = none; design §5)',
                        'pattern': '*.png', 'counts': {s: v['frames'] for s, v in counts.items() if v}},
        'previews': previews,
        'files': {'checkpoint': file_entry(stage_dir, MODEL_FILE), 'onnx': file_entry(stage_dir, ONNX_FILE)},
        'onnx': {'metadata': meta.to_props(), 'check': report},
        'scene_checkpoint_sha256': scene_manifest['files']['checkpoint']['sha256'],
    }


def load_model(stage_dir: str | os.PathLike, device='cpu') -> tuple[GroundNet, InstanceNet]:
    """(GroundNet, InstanceNet) of a finished instances stage, in eval mode."""
    saved = ckpt_io.load(Path(stage_dir) / MODEL_FILE, map_location='cpu')
    ground = GroundNet(int(saved['ground_width']))
    ground.load_state_dict(saved['ground'])
    net = InstanceNet(int(saved['width']), float(saved['offset_scale']))
    net.load_state_dict(saved['instances'])
    return ground.to(device).eval(), net.to(device).eval()
