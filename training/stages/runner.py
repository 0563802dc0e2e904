"""The one stage life cycle every stage of the pipeline goes through (design §5).

A stage module (registered in `training.stages.STAGES`) declares what it is and does:

    NAME, REQUIRES                          its name and the stages whose outputs it reads
    hash_parts(cfg) -> (train, outputs)     the settings its weights depend on (data, model, loop,
                                            phases, ...) and the further settings its outputs
                                            depend on (prediction splits, export, ...); plain dicts
    execute(ctx: StageContext) -> dict      train (through training.loop, which resumes after a
                                            kill), write its outputs, return the manifest body
                                            (files, training, predictions, ...) on rank 0

`run_stage` does the rest, once for all stages: the run directory's lock (one process per run dir),
--restart, the data (generated / imported on first use) and its fingerprint, the stage's hashes —
with the config hashes of the upstream manifests folded in, so a retrained stage 1 makes stage 2 out
of date —, the up-to-date check (nothing is done when the manifest matches), the checkpoint check
(a checkpoint of other settings is refused with the fix), the copy of the resolved configuration,
and the manifest, written atomically last (a stage without a manifest has not finished).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from dynadepth_ros.atomic_files import write_json_atomic, write_text_atomic
from training import checkpoint as ckpt_io
from training.artifacts import (MANIFEST_FORMAT, MANIFEST_NAME, data_fingerprint, environment_versions,
                                hash_object, manifest_problems, now_iso, read_manifest)
from training.checkpoint import CheckpointError
from training.config import PipelineConfig, dump_yaml, to_dict
from training.data import prepare_data
from training.distributed import DistContext


class StageError(RuntimeError):
    """A stage cannot run as asked (e.g. a stage it needs has not finished); the message says what to do."""


LOCK_NAME = '.lock'
_LOCKS: dict[Path, int] = {}     # run dir (resolved) → descriptor of its lock file, open for the process lifetime


def lock_run_dir(run_dir: str | os.PathLike) -> None:
    """Take `run_dir` for this process: an exclusive flock on <run_dir>/.lock (holding this pid), kept
    until the process ends; the kernel releases it when the process exits or is killed. Taking it again
    in the same process is a no-op (the pipeline runs its stages in one process). Another process
    holding it: StageError naming the run dir and that process's pid, at once (no waiting)."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _LOCKS:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise StageError(f'{run_dir} is in use by another training process (pid {holder}); wait for it to '
                         f'finish or stop it, or use another --run-dir') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
    _LOCKS[key] = fd


def _lock_holder(fd: int) -> str:
    """The pid the lock holder wrote into the lock file ('unknown' if it has not yet)."""
    for _ in range(20):                       # the holder writes its pid right after taking the lock
        pid = os.pread(fd, 32, 0).decode(errors='replace').strip()
        if pid:
            return pid
        time.sleep(0.01)
    return 'unknown'


@dataclass(frozen=True)
class StageHashes:
    train: str     # what the weights depend on (settings, data fingerprint, upstream stages)
    config: str    # everything the stage's outputs depend on (train + output settings)


@dataclass
class StageContext:
    """What a stage's `execute` gets from the runner."""

    name: str
    cfg: PipelineConfig
    run_dir: Path
    stage_dir: Path
    dist: DistContext
    data_root: Path
    fingerprint: dict
    hashes: StageHashes
    upstream: dict[str, dict] = field(default_factory=dict)   # stage name → its manifest

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            print(f'{self.name}: {msg}', flush=True)

    def upstream_dir(self, name: str) -> Path:
        return self.run_dir / name


def data_settings(cfg: PipelineConfig) -> dict:
    """The data settings a stage's results depend on (where the data live does not matter, what they hold does)."""
    data = to_dict(cfg.data)
    data.pop('root', None)
    return data


def stage_hashes(module, cfg: PipelineConfig, fingerprint: dict, upstream: dict[str, dict]) -> StageHashes:
    train_part, output_part = module.hash_parts(cfg)
    train_part = dict(train_part, data_fingerprint=fingerprint['hash'])
    if upstream:
        train_part['upstream'] = {name: m.get('config_hash') for name, m in sorted(upstream.items())}
    train_hash = hash_object(train_part)
    return StageHashes(train=train_hash, config=hash_object(dict(output_part, train=train_hash)))


def upstream_manifests(spec, run_dir: Path) -> dict[str, dict]:
    """The manifests of the stages `spec` requires; StageError naming the command when one is missing."""
    out = {}
    for req in spec.requires:
        m = read_manifest(run_dir / req)
        if m is None:
            raise StageError(f'stage {spec.name!r} needs the outputs of stage {req!r}, which has not finished in '
                             f'{run_dir}: run `python -m training {req} --run-dir {run_dir} ...` (with the same '
                             f'--preset/--config) first, or `python -m training run` for the whole pipeline')
        out[req] = m
    return out


def stage_status(name: str, cfg: PipelineConfig, run_dir: str | os.PathLike) -> list[str]:
    """Why stage `name` is not up to date in run_dir (empty: it is). Reads; never trains."""
    from training.stages import get_stage

    spec = get_stage(name)
    run_dir = Path(run_dir)
    try:
        upstream = upstream_manifests(spec, run_dir)
    except StageError as exc:
        return [str(exc)]
    root = prepare_data(cfg.data)
    fingerprint = data_fingerprint(root)
    hashes = stage_hashes(spec.load(), cfg, fingerprint, upstream)
    return manifest_problems(run_dir / name, read_manifest(run_dir / name), hashes.config, fingerprint)


def run_stage(name: str, cfg: PipelineConfig, run_dir: str | os.PathLike, dist: DistContext | None = None, *,
              restart: bool = False) -> dict | None:
    """Run stage `name` of the pipeline in `run_dir/<name>/` (or resume it, or skip it when up to date).

    Returns the manifest on rank 0 (None on other ranks, which only take part in training).
    """
    from training.stages import get_stage

    spec = get_stage(name)
    dist = dist or DistContext()
    run_dir = Path(run_dir)
    if dist.is_main:
        lock_run_dir(run_dir)     # before anything is read or written: one process per run dir
    module = spec.load()
    stage_dir = run_dir / name

    def log(msg):
        if dist.is_main:
            print(f'{name}: {msg}', flush=True)

    upstream = upstream_manifests(spec, run_dir) if dist.is_main else None
    upstream = dist.broadcast_object(upstream)
    if restart and dist.is_main and stage_dir.exists():
        log(f'--restart: removing {stage_dir}')
        shutil.rmtree(stage_dir)
    dist.barrier()

    root = prepare_data(cfg.data)   # generates synthetic data on first use (file-locked across ranks)
    if dist.is_main:
        log(f'fingerprinting data under {root}')
    fingerprint = dist.broadcast_object(data_fingerprint(root) if dist.is_main else None)
    hashes = stage_hashes(module, cfg, fingerprint, upstream)

    problems = None
    if dist.is_main:
        problems = manifest_problems(stage_dir, read_manifest(stage_dir), hashes.config, fingerprint)
    problems = dist.broadcast_object(problems)
    if not problems:
        log(f'up to date (config {hashes.config}, data {fingerprint["hash"]}); nothing to do. Outputs: {stage_dir}')
        return read_manifest(stage_dir) if dist.is_main else None
    if dist.is_main and (stage_dir / MANIFEST_NAME).exists():
        log('outputs are stale: ' + '; '.join(problems))

    ckpt_path = stage_dir / 'checkpoints' / 'last.pt'
    if dist.is_main and upstream and stage_dir.exists() and _upstream_changed(stage_dir, upstream):
        # everything here was derived from other upstream results: nothing of it can be reused
        log(f'an upstream stage changed since these outputs were made ({sorted(upstream)}); starting this stage over')
        shutil.rmtree(stage_dir)
    if dist.is_main and ckpt_path.is_file():
        saved = ckpt_io.load(ckpt_path)
        if saved.get('config_hash') != hashes.train:
            raise CheckpointError(
                f'{ckpt_path} belongs to another training configuration or data (checkpoint '
                f'{saved.get("config_hash")}, now {hashes.train}). Run with --restart to train from scratch in '
                f'{stage_dir}, or choose another --run-dir.')
    dist.barrier()
    if dist.is_main:
        # an old manifest must not survive a run that changes the outputs under it
        (stage_dir / MANIFEST_NAME).unlink(missing_ok=True)
        write_text_atomic(stage_dir / 'config.yaml', dump_yaml(cfg))
        write_json_atomic(stage_dir / 'upstream.json', {n: m.get('config_hash') for n, m in upstream.items()})

    ctx = StageContext(name=name, cfg=cfg, run_dir=run_dir, stage_dir=stage_dir, dist=dist, data_root=Path(root),
                       fingerprint=fingerprint, hashes=hashes, upstream=upstream)
    t0 = time.perf_counter()
    body = module.execute(ctx)
    if not dist.is_main:
        return None
    body = dict(body or {})
    data_extra = body.pop('data', {})
    manifest = {
        'format': MANIFEST_FORMAT, 'stage': name, 'created': now_iso(),
        'config_hash': hashes.config, 'train_hash': hashes.train,
        'upstream': {n: m.get('config_hash') for n, m in upstream.items()},
        'data': {'source': cfg.data.source, 'root': str(Path(root).resolve()), 'fingerprint': fingerprint,
                 'height': cfg.data.height, 'width': cfg.data.width, 'frame_gap': cfg.data.frame_gap,
                 **data_extra},
        'wall_seconds_this_run': round(time.perf_counter() - t0, 1),
        **body,
        'versions': environment_versions(),
    }
    write_json_atomic(stage_dir / MANIFEST_NAME, manifest)
    log(f'done: {stage_dir / MANIFEST_NAME}')
    return manifest


def _upstream_changed(stage_dir: Path, upstream: dict[str, dict]) -> bool:
    import json

    try:
        old = json.loads((stage_dir / 'upstream.json').read_text())
    except (OSError, ValueError):
        return False
    return old != {n: m.get('config_hash') for n, m in upstream.items()}


# Wall time per optimiser step of each stage relative to stage 1's (measured on cpu-small, 2 CPU cores:
# 1.0 / 0.79 / 0.64 / 1.55, each including the stage's inference passes), for the time-left estimate.
RELATIVE_STEP_COST = {'scene': 1.0, 'objects': 0.8, 'dsa': 0.65, 'final': 1.55}
DEFAULT_STEP_SECONDS = 1.0      # stage 1 on cpu-small before anything was measured


def _stage_steps(cfg: PipelineConfig, name: str) -> int:
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
    total = 0.0
    for name in names[start:]:
        if (run_dir / name / MANIFEST_NAME).is_file():
            continue
        total += _stage_steps(cfg, name) * per_step * RELATIVE_STEP_COST.get(name, 1.0)
    return total, basis


def run_pipeline(cfg: PipelineConfig, run_dir: str | os.PathLike, dist: DistContext | None = None, *,
                 until: str | None = None, restart_from: str | None = None, evaluate: bool = True,
                 device: str = 'cpu') -> dict[str, dict | None]:
    """Every registered stage in order (each resumes or skips by itself), up to and including `until`;
    then, when the whole pipeline ran and `evaluate`, the method's evaluation (training.evaluate_dsa on
    val: labels, DSA, pseudo labels) and stage 1 vs final on the test split (compare_<split>.md/json)."""
    from training.stages import STAGES

    run_dir = Path(run_dir)
    main = dist is None or dist.is_main
    if main:
        lock_run_dir(run_dir)     # held across the stages (run_stage taking it again is a no-op)
    names = list(STAGES)
    if until is not None:
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
    if evaluate and main and names == list(STAGES):
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
