"""Stage 1 (`python -m training scene`): scene depth, camera pose and residual pixel motion.

Runs in `<run_dir>/scene/`:

    config.yaml              the resolved configuration of this run
    checkpoints/last.pt      training state (resume after a kill by running the same command again)
    metrics.csv, metrics.png, previews/step_XXXXXX.png
    scene_model.pt           the trained SceneModel weights (the LAST checkpoint: model selection is
                             label-free, ground truth is never used to pick weights)
    predictions/<split>/<sequence>/<frame:06d>.npz
                             for every train/val triplet centre frame: depth float32 [H,W] metres,
                             flow_prev / flow_next float16 [2,H,W] residual object flow in pixels on
                             the reference grid, towards frames t-gap and t+gap
    scene.onnx               the depth network in the design §3 format (dynadepth.stage = scene)
    manifest.json            config hash, data fingerprint, files with SHA-256, prediction counts

Idempotent: when manifest.json matches the configuration and the data, nothing is done.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from dynadepth_ros.atomic_files import file_sha256, write_json_atomic
from dynadepth_ros.datasets.base import DatasetError
from dynadepth_ros.model_format import ModelMetadata
from training import checkpoint as ckpt_io
from training.artifacts import MANIFEST_NAME, file_entry, read_manifest
from training.config import PipelineConfig, load_config, to_dict
from training.data import build_dataset
from training.distributed import DistContext
from training.export import export_depth_onnx, sample_frames
from training.loop import Phase, to_device, train
from training.stages.outputs import ScenePredictions, save_npz_atomic
from training.stages.runner import StageContext, StageError, data_settings, run_stage
from training.stages.scene_model import SceneModel

NAME = 'scene'
MODEL_FILE = 'scene_model.pt'
ONNX_FILE = 'scene.onnx'
PREDICTIONS = 'predictions'
PREDICTION_ARRAYS = {
    'depth': 'float32 [H,W] scene depth, metres when metric',
    'flow_prev': 'float16 [2,H,W] residual object flow (x, y) in pixels on the reference grid towards frame t-gap',
    'flow_next': 'float16 [2,H,W] residual object flow (x, y) in pixels on the reference grid towards frame t+gap',
}


REQUIRES: tuple[str, ...] = ()


def hash_parts(cfg: PipelineConfig) -> tuple[dict, dict]:
    """(what the weights depend on, what the outputs further depend on); see stages.runner."""
    scene = to_dict(cfg.scene)
    train_part = {'stage': NAME, 'data': data_settings(cfg), 'model': scene['model'], 'loop': scene['loop'],
                  'phases': scene['phases']}
    return train_part, {'predict_splits': scene['predict_splits'], 'export': cfg.export.hash_settings()}


def build_model(cfg: PipelineConfig, decoder: str = 'elu_reflect') -> SceneModel:
    """A fresh SceneModel of the configuration (seed the RNGs first for a reproducible init); `decoder` is the
    depth decoder's style (stage 4's final.decoder)."""
    return SceneModel(cfg.scene.model, decoder)


def _phases(cfg: PipelineConfig, model: SceneModel) -> list[Phase]:
    return [Phase(p.name, p.steps, tuple(model.trainable(p.name)), p.lr, tuple(p.lr_decay_at), p.lr_decay)
            for p in cfg.scene.phases]


def _loss(model, batch, phase):
    return model.loss(batch, phase)


def _val(model, batch, phase):
    """Validation metrics (logged only, never used to pick weights): the loss terms and, where the
    split has ground truth, the median-scaled AbsRel and the GT/prediction scale ratio."""
    return model.loss(batch, phase)[1]


def _log(dist: DistContext, msg: str) -> None:
    if dist.is_main:
        print(f'scene: {msg}', flush=True)


def odometry_fraction(dataset) -> float:
    """Fraction of samples whose three frames all have a pose (so odometry supervises the scale)."""
    if not len(dataset):
        return 0.0
    have = 0
    for si, t in dataset.samples:
        seq = dataset.sequences[si]
        g = dataset.frame_gap
        if all(seq.pose(i) is not None for i in (t - g, t, t + g)):
            have += 1
    return have / len(dataset)


def model_metadata(cfg: PipelineConfig, config_hash: str, metric: bool, intrinsics, stage: str = NAME) -> ModelMetadata:
    import dynadepth_ros

    return ModelMetadata(input_height=cfg.data.height, input_width=cfg.data.width,
                         min_depth=cfg.scene.model.min_depth, max_depth=cfg.scene.model.max_depth, metric=metric,
                         intrinsics=tuple(float(v) for v in intrinsics), stage=stage,
                         dataset=f'{cfg.data.source}:{Path(cfg.data.root).name}', config_hash=config_hash,
                         version=dynadepth_ros.__version__)


def optional_dataset(cfg: PipelineConfig, split: str, dist: DistContext, masks=None):
    """The un-augmented dataset of a configured split, or None (with a message) when the split is not
    configured or holds no triplets (e.g. a recording imported without validation bags); `masks`: as
    training.data.build_dataset (learned masks instead of the data's)."""
    if not cfg.data.split_name(split):
        return None
    try:
        return build_dataset(cfg.data, split, augment=False, masks=masks)
    except (DatasetError, ValueError) as exc:
        _log(dist, f'no usable {split} split ({exc}); continuing without it')
        return None


COLLAPSE_ROWS = 3          # consecutive logged rows ...
COLLAPSE_SHARE = 0.95      # ... with the median depth at this share of max_depth or beyond


class CollapseCheck:
    """Stops stage 1 when its depth has collapsed to the far end of the range (`check_row` of training.loop).

    From random weights at the cpu-small budget the depth can run to max_depth within a few dozen steps, while
    the pose network is still learning the odometry's translation, and never come back: the sigmoid disparity
    head saturates and its gradient vanishes (measured 2026-12-08: 3 of 4 seed / data pairs at
    `odometry_weight` 0.1 collapsed by step 80, none of 3 at 1.0 within 140 steps). Without this check it trains
    on for an hour and the later stages run on a flat far depth."""

    def __init__(self, cfg: PipelineConfig, odometry: bool = True):
        """`odometry`: whether the training data has poses (odometry_fraction >= 0.5), so that the odometry
        weight is the fix to name; without them it names another seed."""
        self.max_depth = cfg.scene.model.max_depth
        self.odometry_weight = cfg.scene.model.odometry_weight
        self.odometry = odometry
        self.rows: list[tuple[int, float]] = []

    def __call__(self, row: dict) -> None:
        median = row.get('depth_median')
        if median is None:
            return
        self.rows = (self.rows + [(int(row['step']), float(median))])[-COLLAPSE_ROWS:]
        if len(self.rows) == COLLAPSE_ROWS and all(m >= COLLAPSE_SHARE * self.max_depth for _, m in self.rows):
            hint = ('--set scene.model.odometry_weight=1.0 (measured to avoid it; now '
                    f'{self.odometry_weight:g})' if self.odometry and self.odometry_weight < 1.0
                    else '--set scene.loop.seed=<another>')
            raise StageError(f'stage 1 collapsed: its median depth has been {self.rows[-1][1]:.1f} m, the far end of '
                             f'its range (scene.model.max_depth {self.max_depth:g} m), since step {self.rows[0][0]}; '
                             f'it does not recover from that. Train it again with --restart and {hint}')


def run(cfg: PipelineConfig, run_dir: str | os.PathLike, dist: DistContext | None = None, *,
        restart: bool = False) -> dict | None:
    """Train stage 1 (or resume / skip), write predictions, export ONNX, write the manifest (stages.runner)."""
    return run_stage(NAME, cfg, run_dir, dist, restart=restart)


def execute(ctx: StageContext) -> dict | None:
    """Stage 1 proper: train, save the weights, write predictions, export ONNX; the manifest body on rank 0."""
    cfg, dist, stage_dir, hashes = ctx.cfg, ctx.dist, ctx.stage_dir, ctx.hashes
    ckpt_io.seed_everything(cfg.scene.loop.seed)
    model = build_model(cfg)
    train_set = build_dataset(cfg.data, 'train', augment=True, seed=cfg.scene.loop.seed)
    val_set = optional_dataset(cfg, 'val', dist)
    _log(dist, f'{len(train_set)} training triplets'
               + (f', {len(val_set)} validation triplets' if val_set is not None else '')
               + f'; {sum(p.steps for p in cfg.scene.phases)} steps of batch {cfg.scene.loop.batch_size}'
               + (f' x {dist.world_size} processes' if dist.distributed else '') + f' on {dist.device}')
    odom = odometry_fraction(train_set)
    has_poses = odom >= 0.5            # enough triplets with poses for the odometry term to set the scale
    t0 = time.perf_counter()
    result = train(model, _loss, train_set, _phases(cfg, model), cfg.scene.loop, stage_dir,
                   config_hash=hashes.train, dist=dist, val_set=val_set, val_fn=_val,
                   num_workers=cfg.runtime.num_workers, progress=cfg.runtime.progress,
                   debug_param_digest=cfg.runtime.debug_param_digest, desc='scene',
                   check_row=CollapseCheck(cfg, odometry=has_poses))
    train_seconds = time.perf_counter() - t0
    if not dist.is_main:
        return None

    model.eval()
    model_path = stage_dir / MODEL_FILE
    ckpt_io.save_atomic({'format': ckpt_io.CHECKPOINT_FORMAT, 'stage': NAME, 'model': model.state_dict(),
                         'config_hash': hashes.train, 'global_step': result.global_step}, model_path)
    model_sha = file_sha256(model_path)

    metric = cfg.scene.model.odometry_weight > 0 and has_poses
    plain_train = build_dataset(cfg.data, 'train', augment=False)
    intrinsics = plain_train.median_intrinsics()
    if not metric:
        _log(dist, f'depth is relative (not metric): odometry weight {cfg.scene.model.odometry_weight}, '
                   f'{100 * odom:.0f} % of training triplets have poses')

    counts = write_predictions(model, cfg, stage_dir, model_sha, dist, plain_train)

    _log(dist, 'exporting the depth network to ONNX and checking it against torch')
    meta = model_metadata(cfg, hashes.config, metric, intrinsics)
    report = export_depth_onnx(model.depth, stage_dir / ONNX_FILE, meta, opset=cfg.export.opset,
                               frames=sample_frames(plain_train),
                               max_batch=cfg.export.max_batch, tolerance=cfg.export.tolerance)
    _log(dist, f'wrote {stage_dir / ONNX_FILE} (max |torch - onnxruntime| = {report["max_abs_diff"]:.2e} m)')

    splits = {}
    for split in ('train', 'val', 'test'):
        ds = plain_train if split == 'train' else optional_dataset(cfg, split, dist)
        if ds is not None:
            splits[split] = {'sequences': len(ds.sequences), 'triplets': len(ds)}
    return {
        'data': {'splits': splits},
        'training': {'steps': result.global_step, 'phases': [[p.name, p.steps] for p in cfg.scene.phases],
                     'batch_size': cfg.scene.loop.batch_size, 'world_size': dist.world_size,
                     'resumed_from': result.resumed_from, 'steps_this_run': result.trained_steps,
                     'seconds_per_step': result.seconds_per_step,
                     'seconds_per_step_by_phase': result.phase_seconds_per_step,
                     'wall_seconds_this_run': round(train_seconds, 1),
                     'odometry_fraction': odom},
        'model_selection': 'last checkpoint (label-free: ground truth is never used to choose weights)',
        'metric': metric, 'intrinsics': list(intrinsics),
        'files': {'checkpoint': file_entry(stage_dir, MODEL_FILE), 'onnx': file_entry(stage_dir, ONNX_FILE)},
        'predictions': {'root': PREDICTIONS, 'layout': '<split>/<sequence>/<frame:06d>.npz',
                        'arrays': PREDICTION_ARRAYS,
                        'counts': counts, 'flow_threshold_px': cfg.scene.model.flow_threshold},
        'onnx': {'metadata': meta.to_props(), 'check': report},
    }


def prediction_path(stage_dir: Path, split: str, sequence: str, frame: int) -> Path:
    return ScenePredictions(stage_dir).path(split, sequence, frame)


@torch.no_grad()
def write_predictions(model: SceneModel, cfg: PipelineConfig, stage_dir: Path, model_sha: str,
                      dist: DistContext, plain=None) -> dict[str, int]:
    """Depth and residual flow of every triplet centre frame of cfg.scene.predict_splits.

    Resumable: files already written by the same weights are kept (predictions/source.json
    records which weights); predictions of other weights are deleted first.
    """
    root = stage_dir / PREDICTIONS
    source = {'model_sha256': model_sha, 'height': cfg.data.height, 'width': cfg.data.width,
              'frame_gap': cfg.data.frame_gap}
    marker = root / 'source.json'
    if root.exists():
        import json
        try:
            old = json.loads(marker.read_text())
        except (OSError, ValueError):
            old = None
        if old != source:
            shutil.rmtree(root)
    write_json_atomic(marker, source)
    model.eval()
    counts = {}
    for split in cfg.scene.predict_splits:
        ds = plain if split == 'train' and plain is not None else optional_dataset(cfg, split, dist)
        if ds is None:
            _log(dist, f'no predictions for the {split} split')
            continue
        paths = [prediction_path(stage_dir, split, *ds.sample_location(i)) for i in range(len(ds))]
        todo = [i for i, p in enumerate(paths) if not p.is_file()]
        loader = DataLoader(Subset(ds, todo), batch_size=cfg.scene.predict_batch_size, shuffle=False,
                            num_workers=cfg.runtime.num_workers)
        for batch in tqdm(loader, desc=f'scene: predict {split}', disable=not cfg.runtime.progress,
                          dynamic_ncols=True, mininterval=1.0):
            out = model.predict(to_device(batch, dist.device))
            depth = out['depth'][:, 0].float().cpu().numpy()
            fp = out['flow_prev'].cpu().numpy().astype(np.float16)
            fn = out['flow_next'].cpu().numpy().astype(np.float16)
            for j, idx in enumerate(batch['index'].tolist()):
                save_npz_atomic(paths[idx], depth=depth[j].astype(np.float32), flow_prev=fp[j], flow_next=fn[j])
        counts[split] = len(paths)
        _log(dist, f'{split}: {len(paths)} predictions ({len(todo)} written now) under {root / split}')
    return counts


def finished_stage(stage_dir: str | os.PathLike, stage: str):
    """(Path, PipelineConfig, manifest) of a finished stage's folder; FileNotFoundError naming the command
    that finishes it when it has no manifest."""
    stage_dir = Path(stage_dir)
    manifest = read_manifest(stage_dir)
    if manifest is None:
        raise FileNotFoundError(f'{stage_dir} has no {MANIFEST_NAME}: stage {stage!r} has not finished there; run '
                                f'`python -m training {stage} --run-dir {stage_dir.parent}` first')
    return stage_dir, load_config(config_file=stage_dir / 'config.yaml'), manifest


def load_model(stage_dir: str | os.PathLike, device: str | torch.device = 'cpu', model_file: str = MODEL_FILE,
               stage: str = NAME):
    """(SceneModel with the trained weights in eval mode, PipelineConfig, manifest) of a finished stage that
    saves a SceneModel (stage 1, and stage 4 with model_file='final_model.pt', stage='final')."""
    stage_dir, cfg, manifest = finished_stage(stage_dir, stage)
    model = build_model(cfg, cfg.final.decoder if stage == 'final' else 'elu_reflect')
    saved = ckpt_io.load(stage_dir / model_file, map_location='cpu')
    model.load_state_dict(saved['model'])
    return model.to(device).eval(), cfg, manifest


def load_depth_net(stage_dir: str | os.PathLike, device: str | torch.device = 'cpu'):
    """(DepthNet in eval mode, PipelineConfig, manifest) of a finished stage: what export and evaluate use."""
    model, cfg, manifest = load_model(stage_dir, device)
    return model.depth, cfg, manifest
