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

The runner is infrastructure: it imports no stage module (they import it) and nothing of the method's
evaluation; the whole pipeline with its evaluation is training.pipeline, above it.
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
        from training.stages import stage_dir
        return stage_dir(self.run_dir, name)


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


def upstream_manifests(spec, run_dir: Path, cfg: PipelineConfig | None = None) -> dict[str, dict]:
    """The manifests of the stages `spec` requires; StageError naming the command when one is missing."""
    from training.stages import stage_dir

    out = {}
    for req in (spec.requires_for(cfg) if cfg is not None else spec.requires):
        m = read_manifest(stage_dir(run_dir, req))
        if m is None:
            raise StageError(f'stage {spec.name!r} needs the outputs of stage {req!r}, which has not finished in '
                             f'{run_dir}: run `python -m training {req} --run-dir {run_dir} ...` (with the same '
                             f'--preset/--config) first, or `python -m training run` for the whole pipeline')
        out[req] = m
    return out


def stage_status(name: str, cfg: PipelineConfig, run_dir: str | os.PathLike) -> list[str]:
    """Why stage `name` is not up to date in run_dir (empty: it is). Reads; never trains."""
    from training.stages import get_stage, stage_dir

    spec = get_stage(name)
    run_dir = Path(run_dir)
    try:
        check_enabled(spec, cfg)
        upstream = upstream_manifests(spec, run_dir, cfg)
    except StageError as exc:
        return [str(exc)]
    root = prepare_data(cfg.data)
    fingerprint = data_fingerprint(root)
    hashes = stage_hashes(spec.load(), cfg, fingerprint, upstream)
    where = stage_dir(run_dir, name)
    return manifest_problems(where, read_manifest(where), hashes.config, fingerprint)


def check_enabled(spec, cfg: PipelineConfig) -> None:
    """StageError when `spec` is a learned-mask stage and cfg reads the data's masks, or the optional
    distill stage and distill.decoder is not set."""
    from training.stages import learned_masks

    if spec.optional and not cfg.distill.decoder:
        raise StageError(f'stage {spec.name!r} runs only with distill.decoder set (`--set distill.decoder=relu_zero`: '
                         f'the final network distilled into a network that quantizes to INT8 without float islands)')
    if spec.learned_masks_only and not learned_masks(cfg):
        raise StageError(f'stage {spec.name!r} learns instance masks for data without them; this configuration '
                         f'reads the data\'s masks (objects.masks: {cfg.objects.masks}). Set objects.masks=learned '
                         f'(`--set objects.masks=learned`) to learn them instead')


def run_stage(name: str, cfg: PipelineConfig, run_dir: str | os.PathLike, dist: DistContext | None = None, *,
              restart: bool = False) -> dict | None:
    """Run stage `name` of the pipeline in `run_dir/<name>/` (or resume it, or skip it when up to date).

    Returns the manifest on rank 0 (None on other ranks, which only take part in training).
    """
    from training.stages import get_stage
    from training.stages import stage_dir as stage_path

    spec = get_stage(name)
    check_enabled(spec, cfg)
    dist = dist or DistContext()
    run_dir = Path(run_dir)
    if dist.is_main:
        lock_run_dir(run_dir)     # before anything is read or written: one process per run dir
    module = spec.load()
    stage_dir = stage_path(run_dir, name)

    def log(msg):
        if dist.is_main:
            print(f'{name}: {msg}', flush=True)

    upstream = upstream_manifests(spec, run_dir, cfg) if dist.is_main else None
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


def keep_outputs_of(marker: Path, source: dict, outputs: list[Path]) -> None:
    """Resumable outputs of a stage: `marker` records the `source` (settings, weights) they were written from. When
    it records another source (or none, or cannot be read), the `outputs` folders are deleted, so that no file of
    other settings survives; then `source` is recorded."""
    try:
        same = json.loads(marker.read_text()) == source
    except (OSError, ValueError):
        same = False
    if not same:
        for d in outputs:
            shutil.rmtree(d, ignore_errors=True)
    write_json_atomic(marker, source)


def _upstream_changed(stage_dir: Path, upstream: dict[str, dict]) -> bool:
    try:
        old = json.loads((stage_dir / 'upstream.json').read_text())
    except (OSError, ValueError):
        return False
    return old != {n: m.get('config_hash') for n, m in upstream.items()}
