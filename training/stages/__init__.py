"""The pipeline's stages, in order. Each writes under `runs/<name>/<stage>/` and reads what the
stages before it left there (design §5).

A stage module provides:
    run(cfg: PipelineConfig, run_dir: Path, dist: DistContext, restart: bool = False) -> dict | None
        train (resuming / skipping when up to date), write its artifacts and manifest.json;
        returns the manifest on rank 0. restart: delete the stage's outputs first.
    load_depth_net(stage_dir: Path, device) -> (depth_net: DepthNet, cfg: PipelineConfig, manifest: dict)
        (stages that end with a depth network) the trained network for export and evaluation;
        the manifest carries `metric` and `intrinsics` for the model metadata.
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
}
# Stages 2-4 of design §5 register here when they are implemented: objects (requires scene),
# dsa (requires objects), final (requires dsa; exports the final model).
PLANNED_STAGES = ('objects', 'dsa', 'final')


def get_stage(name: str) -> StageSpec:
    if name in STAGES:
        return STAGES[name]
    if name in PLANNED_STAGES:
        raise KeyError(f'stage {name!r} is not implemented yet; available: {sorted(STAGES)}')
    raise KeyError(f'unknown stage {name!r}; available: {sorted(STAGES)}')
