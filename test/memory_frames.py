"""Frame sources held in memory, for the training-data tests (the dataset reader interface without files)."""
from dynadepth_ros.datasets.base import FrameSequence, FrameSource


class MemorySequence(FrameSequence):
    """Frames held in memory (tests only)."""

    def __init__(self, name, rgbs, K, poses=None, masks=None, depths=None, moving=None):
        self.name, self._rgb, self._K = name, rgbs, K
        self._poses, self._masks, self._depths, self._moving = poses, masks, depths, moving

    def __len__(self):
        return len(self._rgb)

    def rgb(self, i):
        return self._rgb[i]

    def K(self, i):
        return self._K.copy()

    def pose(self, i):
        return None if self._poses is None else self._poses[i]

    def gt_depth(self, i):
        return None if self._depths is None else self._depths[i]

    def instance_mask(self, i):
        return None if self._masks is None else self._masks[i]

    def moving_ids(self, i):
        return self._moving

    def stamp(self, i):
        return i / 10.0


class MemorySource(FrameSource):
    def __init__(self, seqs):
        self._seqs = seqs

    def sequences(self):
        return list(self._seqs)
