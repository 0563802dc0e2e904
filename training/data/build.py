"""`build_dataset(cfg, split, augment)`: the TripletDataset of one configured split.

`masks`: None reads the data's own instance masks; a folder (a run's `masks/instances`, see
training.stages.outputs.learned_masks_root) reads the learned ones instead (training/data/learned_masks.py).
Stages 2-3 pass what learned_masks_root(cfg, run_dir) says: the one switch between the two.
"""
from __future__ import annotations

from pathlib import Path

from dynadepth_ros.datasets import open_source
from dynadepth_ros.datasets.base import FrameSource
from training.data.config import DataConfig
from training.data.prepare import prepare_data
from training.data.triplets import TripletDataset


def open_split(cfg: DataConfig, split: str, masks: str | Path | None = None) -> FrameSource:
    """The numpy FrameSource of split 'train' | 'val' | 'test' (data prepared on first use); with `masks`, its
    instance masks are the learned ones under masks/<split>/."""
    spec = cfg.split_name(split)
    if spec is None:
        raise ValueError(f'data.{split}_split is not set, so there is no {split} split')
    root = prepare_data(cfg)
    options = {}
    if cfg.source == 'kitti':
        options = {'sides': cfg.kitti.sides, 'gt': cfg.kitti.gt}
    source = open_source(cfg.source, root, spec, **options)
    if masks is not None:
        from training.data.learned_masks import LearnedMaskSource
        source = LearnedMaskSource(source, Path(masks) / split)
    return source


def build_dataset(cfg: DataConfig, split: str, augment: bool, seed: int = 0,
                  masks: str | Path | None = None) -> TripletDataset:
    """TripletDataset of `split` at cfg.height x cfg.width; `augment` applies cfg.augment (training only);
    `masks`: see open_split."""
    return TripletDataset(open_split(cfg, split, masks), cfg.height, cfg.width, frame_gap=cfg.frame_gap, split=split,
                          augment=cfg.augment if augment else None, seed=seed)
