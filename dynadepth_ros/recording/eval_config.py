"""What one `dynadepth-eval-bag` run is given (EvalConfig, written into report.json as `settings`) and what it
counts about its input (RunCounts); EvalError for a run that cannot start or continue as asked."""
from __future__ import annotations

from dataclasses import dataclass, field

from dynadepth_ros.metrics import MAX_DEPTH, MIN_DEPTH

DEFAULT_TOPICS = {
    'image': '/camera/image_raw',
    'camera_info': '/camera/camera_info',
    'mask': '/camera/instance_mask',
    'gt_depth': '/camera/depth_gt',
}


class EvalError(RuntimeError):
    """The evaluation cannot start or continue as asked; the message says what to change."""


@dataclass
class EvalConfig:
    """Everything one evaluation run depends on (written into report.json as `settings`)."""

    out: str
    bag: str | None = None
    dataset: str | None = None
    layout: str = 'synthetic'
    split: str = 'test'
    image_topic: str = DEFAULT_TOPICS['image']
    camera_info_topic: str = DEFAULT_TOPICS['camera_info']      # '' = none
    mask_topic: str = DEFAULT_TOPICS['mask']                    # '' = none (only `all` is evaluated)
    gt_depth_topic: str = DEFAULT_TOPICS['gt_depth']
    gt_lidar_topic: str = ''                                   # set → GT from lidar instead of gt_depth_topic
    tf_static_topic: str = '/tf_static'
    prediction_bag: str | None = None
    prediction_topic: str = ''                                 # set → evaluate recorded depth, no model
    model: str | None = None
    backend: str = 'auto'
    precision: str = 'fp32'
    moving_ids_from: str | None = None
    dynamic_from_mask: bool = False
    min_depth: float = MIN_DEPTH
    max_depth: float = MAX_DEPTH
    bin_size: float = 10.0
    slop: float = 0.02                                         # seconds
    max_frames: int = 0                                        # 0 = all
    samples: int = 4
    progress: bool = True

    @property
    def gt_kind(self) -> str:
        return 'lidar' if self.gt_lidar_topic else 'depth'


@dataclass
class RunCounts:
    """What happened to the input, for the report."""

    messages: dict = field(default_factory=dict)       # topic → messages in the bag
    pairs: int = 0
    unmatched: dict = field(default_factory=dict)      # reason → count
    planned: int = 0
    evaluated: int = 0
    skipped: dict = field(default_factory=dict)        # reason → count
    skip_examples: list = field(default_factory=list)  # first few skip messages

    def skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.skip_examples) < 10:
            self.skip_examples.append(f'{reason}: {detail}')
