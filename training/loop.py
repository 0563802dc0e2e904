"""The one training loop every stage uses.

A stage supplies its model (an nn.Module whose trainable parts are named child modules), its
datasets, its phases (name, steps, which child modules to optimise, learning rate and decay) and
a loss function `loss_fn(model, batch, phase) -> (loss, logs: {name: float}, previews: {name:
tensor})`. The loop does the rest:

- a fresh Adam per phase over the phase's trainable sub-modules (the others are frozen), the
  learning rate multiplied by `lr_decay` at the listed steps, gradient clipping per sub-module;
- DistributedDataParallel when launched with torchrun (DistributedSampler; only rank 0 writes);
- a checkpoint every N steps and at every phase end, written atomically, holding model,
  optimiser, phase, step, sampler position and every rank's RNG states, so a killed run
  continues exactly where its last checkpoint left off when the same command is run again;
- a tqdm progress bar, a CSV metrics log (`metrics.csv`, one row per log interval with the
  averaged losses, plus `split=val` rows), PNG previews (`previews/step_XXXXXX.png`) and a plot
  of the log (`metrics.png`);
- optional validation every K steps (`val_fn`), logged only. Model selection is label-free:
  the stage's result is the LAST checkpoint, never one chosen with ground truth.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from dynadepth_ros.atomic_files import DiskFullError, atomic_path
from training import checkpoint as ckpt_io
from training.checkpoint import CheckpointError
from training.distributed import DistContext
from training.previews import plot_metrics, save_preview


@dataclass
class LoopConfig:
    """Shared training-loop settings (every stage has one).

    batch_size is per process (with torchrun the effective batch is batch_size x world size).
    grad_clip: max gradient norm, applied to each trained sub-module separately (0 disables).
    checkpoint_every / log_every / preview_every / val_every: in optimiser steps (0 disables
    previews and validation). val_batches: batches of the val split per validation.
    """

    batch_size: int = 8
    grad_clip: float = 10.0
    checkpoint_every: int = 250
    log_every: int = 20
    preview_every: int = 250
    val_every: int = 500
    val_batches: int = 4
    seed: int = 0


LossFn = Callable[[nn.Module, dict, str], tuple]
ValFn = Callable[[nn.Module, dict, str], dict]
CHECKPOINT_NAME = 'last.pt'


@dataclass(frozen=True)
class Phase:
    """One block of the schedule. `trainable`: names of the model's child modules to optimise."""

    name: str
    steps: int
    trainable: tuple[str, ...]
    lr: float
    lr_decay_at: tuple[int, ...] = ()
    lr_decay: float = 0.5

    def lr_at(self, step_in_phase: int) -> float:
        return self.lr * self.lr_decay ** sum(1 for s in self.lr_decay_at if step_in_phase >= s)


@dataclass
class TrainState:
    """Where the run is: phase index, steps done in that phase, total steps, sampler position."""

    phase_index: int = 0
    phase_step: int = 0
    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


@dataclass
class TrainResult:
    checkpoint: Path
    global_step: int
    resumed_from: int | None
    trained_steps: int
    seconds_per_step: float | None          # median wall time of one optimiser step in this run
    phase_seconds_per_step: dict = field(default_factory=dict)   # phase name → median step time in this run
    step_times: list = field(default_factory=list, repr=False)


class SkipSampler(Sampler):
    """The indices of `base` after the first `skip` (resume mid-epoch without replaying batches)."""

    def __init__(self, base: Sampler, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self):
        for i, idx in enumerate(self.base):
            if i >= self.skip:
                yield idx

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


class _LossModule(nn.Module):
    """Routes the loss through forward() so DistributedDataParallel can synchronise gradients."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict, phase: str):
        return self.loss_fn(self.model, batch, phase)


class CsvLog:
    """Append-only CSV of metric rows; the header grows when a new metric appears."""

    FIXED = ('step', 'phase', 'split', 'epoch', 'lr')

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.header: list[str] = list(self.FIXED)
        if self.path.is_file():
            with self.path.open(newline='') as f:
                head = next(csv.reader(f), None)
            if head:
                self.header = head

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open(newline='') as f:
            out = []
            for r in csv.DictReader(f):
                try:
                    int(r['step'])
                except (TypeError, ValueError, KeyError):
                    continue  # a line cut by a kill
                out.append(r)
            return out

    def _rewrite(self, rows: list[dict]) -> None:
        with atomic_path(self.path) as tmp, tmp.open('w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=self.header, extrasaction='ignore')
            w.writeheader()
            w.writerows(rows)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step`: a killed run may have logged past the checkpoint the next run
        resumes from (step 0, no checkpoint: the log starts over), so the file stays one history."""
        if step <= 0:
            self.path.unlink(missing_ok=True)
            self.header = list(self.FIXED)
        elif self.path.is_file():
            self._rewrite([r for r in self.rows() if int(r['step']) <= step])

    def append(self, row: dict) -> None:
        new = [k for k in row if k not in self.header]
        if new or not self.path.is_file():
            old = self.rows()
            self.header += new
            self._rewrite(old)
        try:
            with self.path.open('a', newline='') as f:
                csv.DictWriter(f, fieldnames=self.header, extrasaction='ignore').writerow(
                    {k: _fmt(v) for k, v in row.items()})
        except OSError as exc:
            if DiskFullError.find(exc) is not None:
                raise DiskFullError(self.path) from exc
            raise


def _fmt(v):
    return f'{v:.6g}' if isinstance(v, float) else v


def param_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, values) in state-dict order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class _Batches:
    """Endless batches over epochs, tracking (epoch, batches consumed in it) for checkpoints."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, dist: DistContext, num_workers: int,
                 state: TrainState, collate_fn=None):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.dist, self.num_workers, self.state, self.collate_fn = dist, num_workers, state, collate_fn
        self.sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch == 0:
            raise ValueError(f'the training set has {len(dataset)} samples: fewer than one batch of {batch_size} '
                             f'per process ({dist.world_size} processes); add data or lower the batch size')
        self._it = None

    def _open(self):
        self.sampler.set_epoch(self.state.epoch)
        if hasattr(self.dataset, 'set_epoch'):
            self.dataset.set_epoch(self.state.epoch)
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.state.epoch)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, drop_last=True, generator=g,
                            sampler=SkipSampler(self.sampler, self.state.batch_in_epoch * self.batch_size),
                            num_workers=self.num_workers, collate_fn=self.collate_fn,
                            pin_memory=self.dist.device.type == 'cuda')
        self._it = iter(loader)

    def next(self) -> dict:
        if self.state.batch_in_epoch >= self.per_epoch:
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            self._it = None
        if self._it is None:
            self._open()
        batch = next(self._it)
        self.state.batch_in_epoch += 1
        return batch


def _set_trainable(model: nn.Module, names: tuple[str, ...]) -> list[nn.Parameter]:
    children = dict(model.named_children())
    unknown = [n for n in names if n not in children]
    if unknown:
        raise ValueError(f'phase trains {unknown}, which the model does not have (children: {sorted(children)})')
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for n in names:
        for p in children[n].parameters():
            p.requires_grad_(True)
            params.append(p)
    if not params:
        raise ValueError(f'phase trains {list(names)}, which have no parameters')
    return params


def flush_denormals() -> None:
    """Treat denormal floats (magnitudes under 1.2e-38) as zero on the CPU, for this whole process.

    x86 CPUs compute them in microcode, hundreds of times slower than normal floats. A saturated network makes
    them: a cpu-small stage 1 whose depth had collapsed to max_depth (the sigmoid heads' gradients vanishing; see
    training.stages.scene.CollapseCheck) ran at 2.3-2.4 s/step, the same checkpoint resumed with them flushed at
    1.0 s/step (2026-12-08, 2 cores; backward 73 % of the time). Values that small carry nothing a depth network
    needs; the setting does not touch CUDA. Called by train() and the training CLI."""
    torch.set_flush_denormal(True)


def train(model: nn.Module, loss_fn: LossFn, train_set: Dataset, phases: list[Phase], cfg: LoopConfig,
          out_dir: str | os.PathLike, *, config_hash: str, dist: DistContext | None = None,
          val_set: Dataset | None = None, val_fn: ValFn | None = None, num_workers: int = 0,
          progress: bool = True, collate_fn=None, debug_param_digest: bool = False,
          desc: str = 'train', check_row: Callable[[dict], None] | None = None) -> TrainResult:
    """Train `model` through `phases`, resuming from `out_dir/checkpoints/last.pt` when present.

    `check_row` sees every train row written to metrics.csv (rank 0) and may raise to stop the training (the
    last checkpoint stays as it was; the stage's error names what went wrong).

    Seed the global RNGs (checkpoint.seed_everything(cfg.seed)) BEFORE building the model so its
    initialisation is reproducible. `config_hash` ties the checkpoint to the configuration: a
    checkpoint made with another hash is refused. Returns where the final checkpoint is.
    """
    flush_denormals()
    dist = dist or DistContext()
    out_dir = Path(out_dir)
    ckpt_path = out_dir / 'checkpoints' / CHECKPOINT_NAME
    total = sum(p.steps for p in phases)
    model.to(dist.device)

    state = TrainState()
    saved = None
    if ckpt_path.is_file():
        saved = ckpt_io.load(ckpt_path, map_location='cpu')   # RNG states must stay CPU tensors
        if saved.get('config_hash') != config_hash:
            raise CheckpointError(
                f'{ckpt_path} was written with config {saved.get("config_hash")}, this run has {config_hash}. '
                f'Delete {out_dir} (or use another --run-dir) to train with the new configuration.')
        model.load_state_dict(saved['model'])
        state = TrainState(**saved['state'])
        rngs = saved.get('rng') or []
        if len(rngs) == dist.world_size:
            ckpt_io.set_rng_state(rngs[dist.rank])
        else:
            ckpt_io.seed_everything(cfg.seed + 7919 * dist.rank + state.global_step)
    else:
        ckpt_io.seed_everything(cfg.seed + 7919 * dist.rank)
    resumed_from = state.global_step if saved is not None else None

    log = CsvLog(out_dir / 'metrics.csv') if dist.is_main else None
    if log is not None:
        log.truncate_after(state.global_step)   # 0 without a checkpoint: rows of a run killed before it go
    if dist.is_main and resumed_from is not None and resumed_from >= total:
        print(f'{desc}: training finished earlier ({total} steps); using the weights of {ckpt_path}', flush=True)
    elif dist.is_main and resumed_from:
        print(f'{desc}: resuming from step {resumed_from}/{total} ({ckpt_path})', flush=True)

    batches = _Batches(train_set, cfg.batch_size, cfg.seed, dist, num_workers, state, collate_fn)
    bar = tqdm(total=total, initial=state.global_step, desc=desc, disable=not (progress and dist.is_main),
               dynamic_ncols=True, mininterval=1.0, smoothing=0.1)
    step_times: list[float] = []
    phase_times: dict[str, list[float]] = {}
    trained = 0
    opt = None

    def save_checkpoint():
        rng = dist.gather_objects(ckpt_io.rng_state())
        if dist.is_main:
            ckpt_io.save_atomic({
                'format': ckpt_io.CHECKPOINT_FORMAT, 'config_hash': config_hash,
                'model': model.state_dict(), 'optimizer': opt.state_dict() if opt is not None else None,
                'state': vars(state).copy(), 'rng': rng, 'world_size': dist.world_size,
                'phases': [(p.name, p.steps) for p in phases], 'finished': state.global_step >= total,
            }, ckpt_path)

    try:
        for pi in range(state.phase_index, len(phases)):
            phase = phases[pi]
            state.phase_index = pi
            if state.phase_step >= phase.steps:
                state.phase_step = 0
                continue
            params = _set_trainable(model, phase.trainable)
            opt = torch.optim.Adam(params, lr=phase.lr_at(state.phase_step))
            if saved is not None and saved['state']['phase_index'] == pi and saved.get('optimizer') is not None \
                    and saved['state']['phase_step'] > 0:
                opt.load_state_dict(saved['optimizer'])
            groups = {n: list(getattr(model, n).parameters()) for n in phase.trainable}
            runner = _LossModule(model, loss_fn)
            if dist.distributed:
                runner = DistributedDataParallel(
                    runner, device_ids=[dist.device.index] if dist.device.type == 'cuda' else None)
            model.train()
            sums: dict[str, float] = {}
            n_sum = 0
            while state.phase_step < phase.steps:
                t0 = time.perf_counter()
                batch = to_device(batches.next(), dist.device)
                lr = phase.lr_at(state.phase_step)
                for g in opt.param_groups:
                    g['lr'] = lr
                loss, logs, previews = runner(batch, phase.name)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f'{desc}: loss is {loss.item()} at step {state.global_step} (phase {phase.name}); the last '
                        f'good checkpoint is {ckpt_path}. Lower the learning rate or check the data.')
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    for ps in groups.values():
                        torch.nn.utils.clip_grad_norm_(ps, cfg.grad_clip)
                opt.step()
                state.phase_step += 1
                state.global_step += 1
                trained += 1
                step_times.append(time.perf_counter() - t0)
                phase_times.setdefault(phase.name, []).append(step_times[-1])
                bar.update(1)

                sums['loss'] = sums.get('loss', 0.0) + float(loss.detach())
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_sum += 1
                step = state.global_step
                last_of_phase = state.phase_step == phase.steps
                if dist.is_main and (step % max(1, cfg.log_every) == 0 or last_of_phase):
                    row = {'step': step, 'phase': phase.name, 'split': 'train', 'epoch': state.epoch, 'lr': lr}
                    row.update({k: v / n_sum for k, v in sums.items()})
                    row['sec_per_step'] = statistics.median(step_times[-n_sum:])
                    log.append(row)
                    bar.set_postfix(phase=phase.name, loss=f'{row["loss"]:.4f}')
                    sums, n_sum = {}, 0
                    if check_row is not None:
                        check_row(row)
                if dist.is_main and cfg.preview_every > 0 and (step % cfg.preview_every == 0 or step == total) \
                        and previews:
                    save_preview(out_dir / 'previews' / f'step_{step:06d}.png', previews)
                if dist.is_main and val_fn is not None and val_set is not None and cfg.val_every > 0 \
                        and (step % cfg.val_every == 0 or step == total):
                    row = {'step': step, 'phase': phase.name, 'split': 'val', 'epoch': state.epoch, 'lr': lr}
                    row.update(validate(model, val_fn, val_set, phase.name, cfg, dist, collate_fn))
                    log.append(row)
                if last_of_phase:
                    break
                if step % cfg.checkpoint_every == 0:
                    save_checkpoint()
            # The phase is done: record the position as "start of the next phase".
            state.phase_index, state.phase_step = pi + 1, 0
            save_checkpoint()
            del runner
            saved = None
        if trained == 0 and resumed_from is None:
            save_checkpoint()  # a schedule of 0 steps still leaves its (initial) model
    finally:
        bar.close()
    if dist.distributed:
        # DDP keeps parameters in step; BatchNorm running statistics follow rank 0 only at each
        # forward. Take rank 0's (the ones its checkpoint holds) so every rank ends identical.
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)
    if dist.is_main:
        plot_metrics(out_dir / 'metrics.csv', out_dir / 'metrics.png')
    if debug_param_digest:
        d = out_dir / 'debug'
        d.mkdir(parents=True, exist_ok=True)
        (d / f'param_digest.rank{dist.rank}.txt').write_text(param_digest(model) + '\n')
    dist.barrier()
    return TrainResult(checkpoint=ckpt_path, global_step=state.global_step, resumed_from=resumed_from,
                       trained_steps=trained, step_times=step_times,
                       phase_seconds_per_step={k: statistics.median(v) for k, v in phase_times.items()},
                       seconds_per_step=statistics.median(step_times) if step_times else None)


@torch.no_grad()
def validate(model: nn.Module, val_fn: ValFn, val_set: Dataset, phase: str, cfg: LoopConfig,
             dist: DistContext, collate_fn=None) -> dict[str, float]:
    """Mean of val_fn's metrics over the first cfg.val_batches batches of val_set (fixed order)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate_fn)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for i, batch in enumerate(loader):
        if i >= cfg.val_batches:
            break
        for k, v in val_fn(model, to_device(batch, dist.device), phase).items():
            if v is None or not math.isfinite(float(v)):
                continue
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    model.train(was_training)
    return {k: sums[k] / counts[k] for k in sums}


def load_model_state(model: nn.Module, path: str | os.PathLike, map_location='cpu') -> dict:
    """Load a training checkpoint's weights into `model`; returns the checkpoint dict."""
    ck = ckpt_io.load(path, map_location=map_location)
    model.load_state_dict(ck['model'])
    return ck
