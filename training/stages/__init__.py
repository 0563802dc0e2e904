"""The pipeline's stages, in order (design §5). Each writes under `runs/<name>/<stage>/` and reads
what the stages it requires left there; `training.stages.runner` runs every stage through one life
cycle (resume, skip when up to date, upstream hashes, manifest), and the command line has one
subcommand per registered stage.

Without instance masks in the data (`objects.masks: learned`), three stages learn them after stage 1
(research/reference-pipeline.md §3U) and write under `runs/<name>/masks/`: ground (a ground segmentation
network from the stage-1 normals), seeds (moving regions grouped into objects) and instances (an instance
network self-trained on the seeds, whose masks stage 2 reads). `stages_for(cfg)` lists the stages a
configuration runs, `stage_dir(run_dir, name)` where a stage writes.

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
    folder: str = ''                               # under the run dir; '' = the stage's name
    learned_masks_only: bool = False               # runs only with objects.masks: learned
    optional: bool = False                         # runs only when enabled(cfg) (distill: distill.decoder set)
    requires_learned: tuple[str, ...] = ()         # further stages it reads with objects.masks: learned

    def load(self):
        return importlib.import_module(self.module)

    def requires_for(self, cfg) -> tuple[str, ...]:
        """The stages whose outputs this stage reads under `cfg`."""
        return self.requires + (self.requires_learned if learned_masks(cfg) else ())


def enabled(spec: 'StageSpec', cfg) -> bool:
    """Whether `cfg` runs stage `spec` (the mask stages only with learned masks, distill only when
    distill.decoder is set)."""
    if spec.learned_masks_only and not learned_masks(cfg):
        return False
    if spec.optional and not getattr(getattr(cfg, 'distill', None), 'decoder', ''):
        return False
    return True


def learned_masks(cfg) -> bool:
    """Whether `cfg` learns its instance masks (objects.masks: learned) instead of reading the data's."""
    return getattr(cfg.objects, 'masks', 'topic') == 'learned'


STAGES: dict[str, StageSpec] = {
    'scene': StageSpec('scene', 'training.stages.scene',
                       'stage 1: scene depth + pose + residual pixel motion (self-supervised); writes depth and '
                       'residual flow per frame and a scene-depth ONNX model'),
    'ground': StageSpec('ground', 'training.stages.mask_ground',
                        'learned masks 1/3: ground segmentation network trained from the stage-1 normals (only with '
                        'objects.masks: learned)', requires=('scene',), has_depth_model=False,
                        folder='masks/ground', learned_masks_only=True),
    'seeds': StageSpec('seeds', 'training.stages.mask_seeds',
                       'learned masks 2/3: moving regions of the stage-1 residual flow grouped into seed objects '
                       '(only with objects.masks: learned)', requires=('scene', 'ground'), has_depth_model=False,
                       folder='masks/seeds', learned_masks_only=True),
    'instances': StageSpec('instances', 'training.stages.mask_instances',
                           'learned masks 3/3: instance segmentation network self-trained on the seeds; writes the '
                           'instance masks stage 2 reads and instances.onnx (only with objects.masks: learned)',
                           requires=('scene', 'ground', 'seeds'), has_depth_model=False,
                           folder='masks/instances', learned_masks_only=True),
    'objects': StageSpec('objects', 'training.stages.objects',
                         'stage 2: static/dynamic labels of instances from the stage-1 outputs, temporal mask '
                         'correspondences, object depth network with one rigid motion per object',
                         requires=('scene',), has_depth_model=False, requires_learned=('instances',)),
    'dsa': StageSpec('dsa', 'training.stages.dsa',
                     'stage 3: Depth Scale Alignment trained on static objects; pseudo depth labels with dynamic '
                     'objects at their aligned depth', requires=('scene', 'objects'), has_depth_model=False),
    'final': StageSpec('final', 'training.stages.final',
                       'stage 4: the final depth network, stage-1 losses + pseudo-label loss on dynamic pixels; '
                       'exports final.onnx', requires=('scene', 'dsa')),
    'distill': StageSpec('distill', 'training.stages.distill',
                         'optional: the final network distilled into a network that quantizes to INT8 without '
                         'float islands (only with distill.decoder set, e.g. relu_zero); exports distill.onnx',
                         requires=('final',), optional=True),
}
PLANNED_STAGES: tuple[str, ...] = ()


def stages_for(cfg) -> list[str]:
    """The registered stages `cfg` runs, in order (the mask stages only with objects.masks: learned, distill
    only with distill.decoder set)."""
    return [n for n, s in STAGES.items() if enabled(s, cfg)]


def stage_dir(run_dir, name: str):
    """Where stage `name` writes in run_dir (runs/<name>/<stage>/, the mask stages under masks/)."""
    from pathlib import Path

    spec = STAGES.get(name)
    return Path(run_dir) / (spec.folder if spec is not None and spec.folder else name)


def get_stage(name: str) -> StageSpec:
    if name in STAGES:
        return STAGES[name]
    if name in PLANNED_STAGES:
        raise KeyError(f'stage {name!r} is not implemented yet; available: {sorted(STAGES)}')
    raise KeyError(f'unknown stage {name!r}; available: {sorted(STAGES)}')
