"""The pipeline's stages, in order (design §5). Each writes under `runs/<name>/<stage>/` and reads
what the stages it requires left there; `training.stages.runner` runs every stage through one life
cycle (resume, skip when up to date, upstream hashes, manifest), and the command line has one
subcommand per registered stage.

A stage module provides NAME, REQUIRES, hash_parts(cfg) and execute(ctx) (see stages.runner), and,
when the stage ends with a depth network, load_depth_net(stage_dir, device) -> (DepthNet, cfg,
manifest) and model_metadata(cfg, config_hash, metric, intrinsics) for export and evaluation.
Typed readers of the stages' outputs live in training.stages.outputs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str
    summary: str
    requires: tuple[str, ...] = ()
    has_depth_model: bool = True

    def load(self):
        return importlib.import_module(self.module)


STAGES: dict[str, StageSpec] = {
    'scene': StageSpec('scene', 'training.stages.scene',
                       'stage 1: scene depth + pose + residual pixel motion (self-supervised); writes depth and '
                       'residual flow per frame and a scene-depth ONNX model'),
    'objects': StageSpec('objects', 'training.stages.objects',
                         'stage 2: static/dynamic labels of instances from the stage-1 outputs, temporal mask '
                         'correspondences, object depth network with one rigid motion per object',
                         requires=('scene',), has_depth_model=False),
    'dsa': StageSpec('dsa', 'training.stages.dsa',
                     'stage 3: Depth Scale Alignment trained on static objects; pseudo depth labels with dynamic '
                     'objects at their aligned depth', requires=('scene', 'objects'), has_depth_model=False),
    'final': StageSpec('final', 'training.stages.final',
                       'stage 4: the final depth network, stage-1 losses + pseudo-label loss on dynamic pixels; '
                       'exports final.onnx', requires=('scene', 'dsa')),
}
PLANNED_STAGES: tuple[str, ...] = ()


def get_stage(name: str) -> StageSpec:
    if name in STAGES:
        return STAGES[name]
    if name in PLANNED_STAGES:
        raise KeyError(f'stage {name!r} is not implemented yet; available: {sorted(STAGES)}')
    raise KeyError(f'unknown stage {name!r}; available: {sorted(STAGES)}')
