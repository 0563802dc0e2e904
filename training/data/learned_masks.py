"""A FrameSource whose instance masks are the learned ones (design §5 `masks/instances/<split>/<seq>/
<frame:06d>.png`) instead of the data's: how stages 2-3 read learned masks through the one dataset interface.

Everything else (frames, intrinsics, poses, ground truth) comes from the wrapped source. A frame without a
learned mask has none (None, as a source without masks). The learned ids are not stable over time, and
nothing is known about their classes; `moving_ids` says which learned instances the data's own masks call
moving (the learned instance overlaps moving instances of the data on more than half of its pixels) where
the data has masks and moving flags, so evaluations measure the method on the learned masks; it is never
an input of a stage.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dynadepth_ros.camera import resize_nearest
from dynadepth_ros.datasets.base import FrameSequence, FrameSource


class LearnedMaskSequence(FrameSequence):
    def __init__(self, inner: FrameSequence, folder: Path):
        self.inner, self.folder = inner, Path(folder)
        self.name = inner.name

    def __len__(self) -> int:
        return len(self.inner)

    def rgb(self, i: int) -> np.ndarray:
        return self.inner.rgb(i)

    def K(self, i: int) -> np.ndarray:
        return self.inner.K(i)

    def pose(self, i: int):
        return self.inner.pose(i)

    def gt_depth(self, i: int):
        return self.inner.gt_depth(i)

    def stamp(self, i: int) -> float:
        return self.inner.stamp(i)

    def sample_indices(self) -> list[int]:
        return self.inner.sample_indices()

    def instance_mask(self, i: int) -> np.ndarray | None:
        """int32 [h,w] learned ids at the network resolution (the triplet dataset resizes every mask to it)."""
        p = self.folder / f'{int(i):06d}.png'
        if not p.is_file():
            return None
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if m is None:
            raise OSError(f'{p} is not a readable PNG; rerun the instances stage (python -m training instances)')
        return m.astype(np.int32)

    def moving_ids(self, i: int) -> set[int] | None:
        learned = self.instance_mask(i)
        gt, moving = self.inner.instance_mask(i), self.inner.moving_ids(i)
        if learned is None or gt is None or moving is None:
            return None
        gt_moving = np.isin(resize_nearest(np.asarray(gt, np.int32), *learned.shape), sorted(moving))
        out = set()
        for k in np.unique(learned[learned > 0]).tolist():
            m = learned == k
            if gt_moving[m].mean() > 0.5:
                out.add(int(k))
        return out

    def data_instance_mask(self, i: int) -> np.ndarray | None:
        """The data's own mask of frame i (for measurements only)."""
        return self.inner.instance_mask(i)


class LearnedMaskSource(FrameSource):
    """`inner` (one split) with the learned masks under `folder` (= masks/instances/<split>)."""

    def __init__(self, inner: FrameSource, folder: str | Path):
        self.inner, self.folder = inner, Path(folder)
        self.layout = f'{inner.layout}+learned masks'
        self._seqs = [LearnedMaskSequence(s, self.folder / s.name) for s in inner.sequences()]

    def sequences(self) -> list[FrameSequence]:
        return list(self._seqs)
