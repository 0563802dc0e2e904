"""Frame readers for the dataset layouts training and evaluation share (numpy only, never torch).

    from dynadepth_ros.datasets import open_source
    source = open_source('synthetic', 'data/synthetic', 'test')     # or 'kitti' / 'cityscapes'
    for seq in source.sequences():
        rgb, K, gt = seq.rgb(0), seq.K(0), seq.gt_depth(0)

Layouts: `synthetic` (design §6 folders, also rosbag imports), `kitti` (KITTI raw, monodepth2
layout), `cityscapes` (the reference's preprocessed triplets). See base.py for the interface.
"""
from __future__ import annotations

import os

from dynadepth_ros.datasets.base import DatasetError, FrameSequence, FrameSource
from dynadepth_ros.datasets.cityscapes import CityscapesSource
from dynadepth_ros.datasets.kitti import KittiSource
from dynadepth_ros.datasets.synthetic import SyntheticSource

LAYOUTS = ('synthetic', 'kitti', 'cityscapes')


def open_source(layout: str, root: str | os.PathLike, split: str | None, **options) -> FrameSource:
    """The FrameSource of one split of a dataset folder.

    layout: synthetic | kitti | cityscapes (`rosbag` is accepted as synthetic: imports use that layout).
    split: synthetic: train | val | test; kitti / cityscapes: a split-file path, a name found under
    <root>/splits/, or None / 'all' for every frame. options go to the source (kitti: sides='l',
    gt='auto'|'improved'|'velodyne'|'none').
    """
    if layout in ('synthetic', 'rosbag'):
        return SyntheticSource(root, split, **options)
    if layout == 'kitti':
        return KittiSource(root, split, **options)
    if layout == 'cityscapes':
        return CityscapesSource(root, split, **options)
    raise DatasetError(f'unknown dataset layout {layout!r}; use one of {LAYOUTS}')


__all__ = ['LAYOUTS', 'CityscapesSource', 'DatasetError', 'FrameSequence', 'FrameSource', 'KittiSource',
           'SyntheticSource', 'open_source']
