"""`build_dataset(cfg, split, augment)`: the TripletDataset of one configured split."""
from __future__ import annotations

from dynadepth_ros.datasets import open_source
from dynadepth_ros.datasets.base import FrameSource
from training.data.config import DataConfig
from training.data.prepare import prepare_data
from training.data.triplets import TripletDataset


def open_split(cfg: DataConfig, split: str) -> FrameSource:
    """The numpy FrameSource of split 'train' | 'val' | 'test' (data prepared on first use)."""
    spec = cfg.split_name(split)
    if spec is None:
        raise ValueError(f'data.{split}_split is not set, so there is no {split} split')
    root = prepare_data(cfg)
    options = {}
    if cfg.source == 'kitti':
        options = {'sides': cfg.kitti.sides, 'gt': cfg.kitti.gt}
    return open_source(cfg.source, root, spec, **options)


def build_dataset(cfg: DataConfig, split: str, augment: bool, seed: int = 0) -> TripletDataset:
    """TripletDataset of `split` at cfg.height x cfg.width; `augment` applies cfg.augment (training only)."""
    return TripletDataset(open_split(cfg, split), cfg.height, cfg.width, frame_gap=cfg.frame_gap, split=split,
                          augment=cfg.augment if augment else None, seed=seed)
