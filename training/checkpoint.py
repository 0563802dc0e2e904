"""Training checkpoints: written atomically, read back with clear errors, RNG states included.

A checkpoint (`torch.save` dict) holds everything the loop needs to continue exactly where it
stopped: model and optimiser state, phase index and step inside the phase, the global step, the
sampler position (epoch, batches consumed in it), every rank's RNG states (python, numpy, torch,
CUDA) and the config hash it was made with.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from dynadepth_ros.atomic_files import atomic_path

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or belongs to another configuration."""


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """torch.save to a temp file in the same directory, fsync, then rename over `path`. When the disk is
    full: DiskFullError naming `path`, which keeps its previous content (the temp file is removed)."""
    with atomic_path(path, fsync=True) as tmp, open(tmp, 'xb') as f:
        torch.save(obj, f)


def load(path: str | os.PathLike, map_location='cpu') -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist; train the stage first')
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f'checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); delete it to '
                              f'restart training from scratch') from exc
    if not isinstance(ckpt, dict) or ckpt.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(f'{path} is not a dynadepth training checkpoint (format {CHECKPOINT_FORMAT})')
    return ckpt


def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch CPU, CUDA when available)."""
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
