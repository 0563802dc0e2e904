"""The one frame-reader interface every dataset layout implements (numpy only, no torch).

A `FrameSource` is one split of one dataset; it holds `FrameSequence`s. A sequence is a run of
frames from one camera in time order; triplets (t-gap, t, t+gap) are only ever formed inside a
sequence. Frame i of a sequence gives:

    rgb(i)            uint8 [H,W,3] RGB at the native resolution
    K(i)              float64 [3,3] intrinsics in pixels of that native resolution
    pose(i)           float64 [4,4] T_world_cam (camera-to-world, REP 103 optical frame), or None
    gt_depth(i)       float32 [H,W] z-depth in metres, 0 = invalid, or None (no ground truth)
    instance_mask(i)  int32 [H,W] instance ids, 0 = none, or None (no masks)
    moving_ids(i)     set[int] of the ids in the mask that move independently, or None (unknown)
    stamp(i)          float seconds

`sample_indices()` lists the frames that may serve as the target frame t (a split file can name
a subset); the triplet builder still checks that t-gap and t+gap exist.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class DatasetError(ValueError):
    """A dataset folder or split file that cannot be read as asked; the message says what to fix."""


class FrameSequence(ABC):
    """Frames of one camera run, in time order (see the module docstring for shapes and units)."""

    name: str

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def rgb(self, i: int) -> np.ndarray: ...

    @abstractmethod
    def K(self, i: int) -> np.ndarray: ...

    def pose(self, i: int) -> np.ndarray | None:
        return None

    def gt_depth(self, i: int) -> np.ndarray | None:
        return None

    def instance_mask(self, i: int) -> np.ndarray | None:
        return None

    def moving_ids(self, i: int) -> set[int] | None:
        return None

    @abstractmethod
    def stamp(self, i: int) -> float: ...

    def sample_indices(self) -> list[int]:
        """Frames that may be the target frame of a training sample (default: all)."""
        return list(range(len(self)))

    def check_index(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f'{self.name}: frame {i} out of range [0, {len(self)})')
        return i

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.name!r}, {len(self)} frames)'


class FrameSource(ABC):
    """One split of a dataset: an ordered list of sequences."""

    layout: str = '?'

    @abstractmethod
    def sequences(self) -> list[FrameSequence]: ...

    def __len__(self) -> int:
        return sum(len(s) for s in self.sequences())

    def __repr__(self) -> str:
        seqs = self.sequences()
        return f'{type(self).__name__}({len(seqs)} sequences, {sum(len(s) for s in seqs)} frames)'


def find_split_file(root, split: str | None, layout: str):
    """Path of a split/list file, or None for "every frame in the folder".

    `split` may be None / '' / 'all', a path to a text file (absolute, relative to the working
    directory or to `root`), or a name resolved as <root>/splits/<name>_files.txt or
    <root>/splits/<name>.txt (the monodepth2 / reference naming).
    """
    from pathlib import Path

    if split in (None, '', 'all'):
        return None
    root = Path(root)
    tried = []
    for cand in (Path(split), root / split, root / 'splits' / f'{split}_files.txt', root / 'splits' / f'{split}.txt'):
        tried.append(str(cand))
        if cand.is_file():
            return cand
    raise DatasetError(f'{layout} split {split!r} not found; tried: {", ".join(tried)}. Pass a split file '
                       f'path, or "all" to use every frame under {root}')


def read_split_lines(path) -> list[list[str]]:
    """Whitespace-split tokens of each non-empty, non-comment line of a split file."""
    from pathlib import Path

    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith('#'):
            rows.append(line.split())
    if not rows:
        raise DatasetError(f'split file {path} lists no frames')
    return rows
