"""Reader of the design §6 folder layout (synthetic data and imported rosbag recordings).

    <root>/<split>/<sequence>/calib.json, poses.txt, rgb/, [depth/], [mask/], [instances/], [stamps.txt]

depth/, mask/ and instances/ are optional (a recording imported from a rosbag has no GT depth and
maybe no masks); the matching accessors then return None. Two additions to the layout that
imported recordings use and outside tools may ignore: a poses.txt line of 12 `nan`s means "pose
unknown for this frame" (pose() returns None), and stamps.txt holds one time stamp (seconds) per
frame; without it frame i is stamped i / fps.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dynadepth_ros.datasets.base import DatasetError, FrameSequence, FrameSource
from dynadepth_ros.datasets.layout import SPLITS, Sequence


class SyntheticSequence(FrameSequence):
    """One sequence directory of the design §6 layout."""

    def __init__(self, path: str | os.PathLike):
        try:
            self._seq = Sequence(path)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise DatasetError(f'cannot read sequence {path}: {exc}') from None
        self.path = self._seq.path
        self.name = self._seq.name
        self._poses_ok = np.all(np.isfinite(self._seq.poses.reshape(len(self._seq), -1)), axis=1)
        self._has_depth = (self.path / 'depth').is_dir()
        self._has_mask = (self.path / 'mask').is_dir()
        self._has_instances = (self.path / 'instances').is_dir()
        self._stamps = None
        stamps_file = self.path / 'stamps.txt'
        if stamps_file.is_file():
            stamps = np.loadtxt(stamps_file, dtype=np.float64, ndmin=1)
            if stamps.shape != (len(self._seq),):
                raise DatasetError(f'{stamps_file}: {stamps.size} stamps for {len(self._seq)} frames; '
                                   f'the sequence is damaged, re-create it')
            self._stamps = stamps

    @property
    def calib(self):
        return self._seq.calib

    def __len__(self) -> int:
        return len(self._seq)

    def rgb(self, i: int) -> np.ndarray:
        return self._seq.rgb(self.check_index(i))

    def K(self, i: int) -> np.ndarray:
        self.check_index(i)
        return np.array(self._seq.calib.K, dtype=np.float64)

    def pose(self, i: int) -> np.ndarray | None:
        i = self.check_index(i)
        return np.array(self._seq.poses[i]) if self._poses_ok[i] else None

    def gt_depth(self, i: int) -> np.ndarray | None:
        i = self.check_index(i)
        if not self._has_depth:
            return None
        d = np.asarray(self._seq.depth(i), dtype=np.float32)
        d = np.where(np.isfinite(d) & (d > 0), d, np.float32(0.0))
        return d

    def instance_mask(self, i: int) -> np.ndarray | None:
        i = self.check_index(i)
        if not self._has_mask:
            return None
        return self._seq.mask(i).astype(np.int32)

    def moving_ids(self, i: int) -> set[int] | None:
        i = self.check_index(i)
        if not self._has_instances:
            return None
        return {inst.id for inst in self._seq.instances(i) if inst.moving}

    def instances(self, i: int) -> list | None:
        """layout.Instance list of frame i (class, moving flag, velocity, box), or None."""
        i = self.check_index(i)
        return self._seq.instances(i) if self._has_instances else None

    def stamp(self, i: int) -> float:
        i = self.check_index(i)
        if self._stamps is not None:
            return float(self._stamps[i])
        return i / float(self._seq.calib.fps or 10.0)


class SyntheticSource(FrameSource):
    """All complete sequences of `<root>/<split>/` (hidden `.name.partial` folders are ignored)."""

    layout = 'synthetic'

    def __init__(self, root: str | os.PathLike, split: str):
        self.root = Path(root)
        self.split = split
        if split not in SPLITS:
            raise DatasetError(f'synthetic-layout split must be one of {SPLITS}, got {split!r}')
        d = self.root / split
        if not d.is_dir():
            raise DatasetError(f'{d} does not exist; expected the layout <root>/<split>/<sequence>/ '
                               f'(generate it with dynadepth-synth, or import bags with '
                               f'`python -m training import-bag`)')
        dirs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith('.'))
        if not dirs:
            raise DatasetError(f'{d} holds no sequences')
        self._sequences = [SyntheticSequence(p) for p in dirs]

    def sequences(self) -> list[SyntheticSequence]:
        return list(self._sequences)

