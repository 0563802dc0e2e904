"""The whole pipeline: every registered stage in order through the shared stage runner
(training.stages.runner), with a time-left estimate, then the method's evaluation (design §5).

This sits above the runner: the runner knows one stage's life cycle and nothing of what the stages are
or how the method is evaluated; the pipeline knows the order of the stages and what to evaluate after.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from training.artifacts import MANIFEST_NAME
from training.config import PipelineConfig
from training.distributed import DistContext
from training.stages.runner import StageError, lock_run_dir, run_stage


# Wall time per optimiser step of each stage relative to stage 1's (measured on cpu-small, 2 CPU cores:
# 1.0 / 0.79 / 0.64 / 1.55, each including the stage's inference passes), for the time-left estimate.
RELATIVE_STEP_COST = {'scene': 1.0, 'objects': 0.8, 'dsa': 0.65, 'final': 1.55,
                      # the learned-mask stages (objects.masks: learned), per step on cpu-small (0.71 / 0.47 / 0.40 s
                      # against stage 1's 1.92; their inference passes over every frame add minutes)
                      'ground': 0.37, 'seeds': 0.25, 'instances': 0.21}
DEFAULT_STEP_SECONDS = 1.0      # stage 1 on cpu-small before anything was measured


def _stage_steps(cfg: PipelineConfig, name: str) -> int:
    if name == 'ground':
        return cfg.masks.ground.steps
    if name == 'seeds':
        return cfg.masks.seeds.slots.steps if cfg.masks.seeds.method == 'slots' else 0
    if name == 'instances':
        return cfg.masks.instances.rounds * cfg.masks.instances.steps_per_round
    section = getattr(cfg, name, None)
    phases = getattr(section, 'phases', None) or ()
    return int(sum(p.steps for p in phases))


def time_left(cfg: PipelineConfig, run_dir: Path, names: list[str], start: int) -> tuple[float, str]:
    """(seconds, basis) estimate for stages names[start:] without a manifest (a stale manifest counts as
    finished: this is an estimate, not the up-to-date check): their steps times the step time measured by
    stage 1 in this run (or DEFAULT_STEP_SECONDS) scaled by RELATIVE_STEP_COST."""
    basis, per_step = 'a cpu-small default of 1 s/step for stage 1', DEFAULT_STEP_SECONDS
    try:
        m = json.loads((run_dir / 'scene' / 'manifest.json').read_text())
        if m.get('training', {}).get('seconds_per_step'):
            per_step = float(m['training']['seconds_per_step'])
            basis = f"stage 1's {per_step:.2f} s/step in this run"
    except (OSError, ValueError):
        pass
    from training.stages import stage_dir

    total = 0.0
    for name in names[start:]:
        if (stage_dir(run_dir, name) / MANIFEST_NAME).is_file():
            continue
        total += _stage_steps(cfg, name) * per_step * RELATIVE_STEP_COST.get(name, 1.0)
    return total, basis


def run_pipeline(cfg: PipelineConfig, run_dir: str | os.PathLike, dist: DistContext | None = None, *,
                 until: str | None = None, restart_from: str | None = None, evaluate: bool = True,
                 device: str = 'cpu') -> dict[str, dict | None]:
    """Every registered stage in order (each resumes or skips by itself), up to and including `until`;
    then, when the whole pipeline ran and `evaluate`, the method's evaluation (training.evaluate_dsa on
    val: labels, DSA, pseudo labels) and stage 1 vs final on the test split (compare_<split>.md/json)."""
    from training.stages import stages_for

    run_dir = Path(run_dir)
    main = dist is None or dist.is_main
    if main:
        lock_run_dir(run_dir)     # held across the stages (run_stage taking it again is a no-op)
    names = everything = stages_for(cfg)     # with objects.masks: learned, the mask stages after stage 1
    if until is not None:
        if until not in names:
            raise StageError(f'--until {until}: this configuration does not run stage {until!r} (it runs '
                             f'{", ".join(names)})')
        names = names[:names.index(until) + 1]
    out = {}
    restarting = False
    t0 = time.monotonic()
    for i, name in enumerate(names):
        restarting = restarting or name == restart_from
        if main:
            left, basis = (0.0, '') if restarting else time_left(cfg, run_dir, names, i)
            print(f'pipeline: stage {i + 1}/{len(names)} {name}'
                  + (f' - about {left / 60:.0f} min of training left (estimate from {basis})' if left else ''),
                  flush=True)
        out[name] = run_stage(name, cfg, run_dir, dist, restart=restarting)
    if evaluate and main and names == everything:
        out['evaluation'] = evaluate_pipeline(cfg, run_dir, device)
    if main:
        print(f'pipeline: done in {(time.monotonic() - t0) / 60:.1f} min; outputs under {run_dir}', flush=True)
    return out


def evaluate_pipeline(cfg: PipelineConfig, run_dir: Path, device: str = 'cpu') -> dict:
    """The method evaluation (val) and stage 1 vs final (test), written into the run directory; a split
    that is not configured or has no ground truth is skipped with a message."""
    from dynadepth_ros.datasets.base import DatasetError
    from training.evaluate import compare_markdown, compare_stages
    from training.evaluate_dsa import evaluate_method, method_markdown

    def fresh(out: Path, *stages: str) -> bool:
        """out exists and is newer than the manifests of the stages it reads (then it is not redone)."""
        try:
            return all(out.stat().st_mtime >= (run_dir / st / MANIFEST_NAME).stat().st_mtime for st in stages)
        except OSError:
            return False

    done = {}
    if cfg.data.split_name('val') and fresh(run_dir / 'dsa' / 'method_eval_val.json', 'objects', 'dsa'):
        print('pipeline: method evaluation on val is up to date (dsa/method_eval_val.md)', flush=True)
        done['method_val'] = str(run_dir / 'dsa' / 'method_eval_val.md')
    elif cfg.data.split_name('val'):
        print('pipeline: evaluating the method on the val split (labels, DSA scales, pseudo labels)', flush=True)
        try:
            print(method_markdown(evaluate_method(run_dir, 'val', progress=cfg.runtime.progress)), end='')
            done['method_val'] = str(run_dir / 'dsa' / 'method_eval_val.md')
        except (DatasetError, ValueError) as exc:
            print(f'pipeline: method evaluation skipped ({exc})', flush=True)
    if cfg.data.split_name('test') and fresh(run_dir / 'compare_test.json', 'scene', 'final'):
        print('pipeline: stage 1 vs final on test is up to date (compare_test.md)', flush=True)
        done['compare_test'] = str(run_dir / 'compare_test.md')
    elif cfg.data.split_name('test'):
        print('pipeline: stage 1 vs final on the test split', flush=True)
        try:
            print(compare_markdown(compare_stages(run_dir, ('scene', 'final'), 'test', device=device)), end='')
            done['compare_test'] = str(run_dir / 'compare_test.md')
        except (DatasetError, ValueError) as exc:
            print(f'pipeline: comparison skipped ({exc})', flush=True)
    return done
