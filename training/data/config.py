"""Typed data configuration (the `data:` section of a training config).

    data:
      source: synthetic            # synthetic | kitti | cityscapes | rosbag
      root: data/synthetic         # dataset folder (generated / imported here on first use for synthetic / rosbag)
      height: 96                   # network input size; frames are resized to it
      width: 320
      frame_gap: 1                 # triplets (t-gap, t, t+gap)
      train_split: train           # synthetic/rosbag: train|val|test; kitti/cityscapes: split file or name
      val_split: val               # null = no validation split
      test_split: test
      augment: {flip_prob: 0.5, colour_prob: 0.5, brightness: 0.2, contrast: 0.2, saturation: 0.2, hue: 0.1}
      synthetic: {sequences: {train: 8, val: 2, test: 2}, frames: 40, gen_height: 192, gen_width: 640, seed: 0}
      rosbag: {bags: {train: [run1/bag], val: [], test: []}, image_topic: /camera/image_raw, ...}
      kitti: {sides: l, gt: auto}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from training.data.augment import AugmentConfig

SOURCES = ('synthetic', 'kitti', 'cityscapes', 'rosbag')


@dataclass
class SyntheticConfig:
    """Generation parameters of the synthetic data (dynadepth_ros.synth.generate_split).

    sequences: number of sequences per split; frames: frames per sequence; gen_height/gen_width:
    native rendering size (the network size is data.height/width); seed: base seed (the
    generator derives disjoint per-split seeds); noise / lead_car_fraction: passed on when set
    (null = the generator's default).
    """

    sequences: dict[str, int] = field(default_factory=lambda: {'train': 8, 'val': 2, 'test': 2})
    frames: int = 40
    gen_height: int = 192
    gen_width: int = 640
    seed: int = 0
    noise: float | None = None
    lead_car_fraction: float | None = None

    def __post_init__(self):
        bad = sorted(set(self.sequences) - {'train', 'val', 'test'})
        if bad:
            raise ValueError(f'synthetic.sequences has unknown split(s) {bad}; use train, val, test')
        if any(n < 0 for n in self.sequences.values()):
            raise ValueError(f'synthetic.sequences must be >= 0 per split, got {self.sequences}')
        if self.frames < 3:
            raise ValueError(f'synthetic.frames must be >= 3 (one triplet), got {self.frames}')
        if self.gen_height < 8 or self.gen_width < 8:
            raise ValueError(f'synthetic.gen_height/gen_width too small: {self.gen_height}x{self.gen_width}')


@dataclass
class RosbagConfig:
    """Recordings to import (training/data/rosbag_import.py) into `data.root` before training.

    bags: rosbag2 paths per split (directories or .mcap/.db3 files); `path@START-END` is the stretch of a
    recording from START up to END seconds after its first camera frame (either end may be left out), so
    one recording can feed several splits by time. Topics name the camera image
    (Image or CompressedImage), its camera_info, and optionally an instance-mask label image,
    nav_msgs/Odometry (for metric scale) and a GT depth image (for evaluation). every_nth keeps
    every n-th camera frame.
    """

    bags: dict[str, list[str]] = field(default_factory=lambda: {'train': [], 'val': [], 'test': []})
    image_topic: str = '/camera/image_raw'
    camera_info_topic: str = '/camera/camera_info'
    mask_topic: str | None = None
    odom_topic: str | None = None
    depth_topic: str | None = None
    every_nth: int = 1

    def __post_init__(self):
        bad = sorted(set(self.bags) - {'train', 'val', 'test'})
        if bad:
            raise ValueError(f'rosbag.bags has unknown split(s) {bad}; use train, val, test')
        if self.every_nth < 1:
            raise ValueError(f'rosbag.every_nth must be >= 1, got {self.every_nth}')


@dataclass
class KittiConfig:
    """KITTI raw options: camera sides used when no split file names them ('l', 'r' or 'lr'), and
    the GT source: auto (improved GT, else projected velodyne) | improved | velodyne | none."""

    sides: str = 'l'
    gt: Literal['auto', 'improved', 'velodyne', 'none'] = 'auto'

    def __post_init__(self):
        if not self.sides or set(self.sides) - {'l', 'r'}:
            raise ValueError(f"kitti.sides must be 'l', 'r' or 'lr', got {self.sides!r}")


@dataclass
class DataConfig:
    """Where training frames come from and how they are shaped (see the module docstring)."""

    source: Literal['synthetic', 'kitti', 'cityscapes', 'rosbag'] = 'synthetic'
    root: str = 'data/synthetic'
    height: int = 96
    width: int = 320
    frame_gap: int = 1
    train_split: str = 'train'
    val_split: str | None = 'val'
    test_split: str | None = 'test'
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    rosbag: RosbagConfig = field(default_factory=RosbagConfig)
    kitti: KittiConfig = field(default_factory=KittiConfig)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f'data.source must be one of {SOURCES}, got {self.source!r}')
        if self.height < 1 or self.width < 1:
            raise ValueError(f'data.height/width must be positive, got {self.height}x{self.width}')
        if self.frame_gap < 1:
            raise ValueError(f'data.frame_gap must be >= 1, got {self.frame_gap}')
        if self.source == 'cityscapes' and self.frame_gap != 1:
            raise ValueError('data.frame_gap must be 1 for cityscapes: the preprocessed triplets fix the spacing')

    def split_name(self, split: str) -> str | None:
        """The configured split (name or file) for 'train' | 'val' | 'test'; None when disabled."""
        if split not in ('train', 'val', 'test'):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, f'{split}_split') or None
