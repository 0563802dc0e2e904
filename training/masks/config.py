"""The `masks:` section of a training config: the three stages that learn instance masks when the data
has none (`objects.masks: learned`). Each stage has its own subsection; what they mean is in the stage
modules (training/stages/mask_ground.py, mask_seeds.py, mask_instances.py).

    masks:
      ground:    {angle_deg, step_px, width, smoothness_weight, crop_weight, crop_from, steps, lr, loop}
      seeds:     {method: cluster | slots, flow_threshold_px, contrast_factor, ..., slots: {...}}
      instances: {width, rounds, steps_per_round, score_threshold: [first, last], ...}
"""
from __future__ import annotations

from dataclasses import dataclass, field

from training.loop import LoopConfig

MASK_SOURCES = ('topic', 'learned')


@dataclass
class GroundStageConfig:
    """masks.ground: the ground segmentation network (reference §3U 1.2).

    Noisy target: stage-1 depth back-projected, normals from neighbours step_px away (reference 11 px at
    512 px width), ground where the normal is within angle_deg (reference 10°) of the camera's vertical.
    Network: RGB + disparity / its maximum → ground probability (training/networks/ground_net.py).
    Loss: BCE with the noisy target + smoothness_weight x edge-aware smoothness; from the share crop_from
    of the steps on, crop_weight x the reference's self-supervision (the bottom third of the image, seen
    enlarged, is supervised by the noisy target; the enlarged middle and bottom thirds, detached and
    thresholded, supervise the full image's lower two thirds, which carries the ground into the distance).
    """

    angle_deg: float = 10.0
    step_px: int = 6
    width: int = 16
    smoothness_weight: float = 2.0
    crop_weight: float = 0.5
    crop_from: float = 0.35
    predict_splits: list[str] = field(default_factory=lambda: ['train', 'val'])
    steps: int = 600
    lr: float = 1e-3
    lr_decay_at: list[int] = field(default_factory=lambda: [300, 500])
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(batch_size=8))
    infer_batch_size: int = 16

    def __post_init__(self):
        if not 0 < self.angle_deg < 90:
            raise ValueError(f'masks.ground.angle_deg must be in (0, 90), got {self.angle_deg}')
        if self.step_px < 1:
            raise ValueError(f'masks.ground.step_px must be >= 1, got {self.step_px}')
        if not 0 <= self.crop_from <= 1:
            raise ValueError(f'masks.ground.crop_from must be in [0, 1], got {self.crop_from}')


@dataclass
class SlotsConfig:
    """masks.seeds.slots: the reference's slot attention on residual flow + depth (§3U 1.1), smaller.

    The input (flow colour-coded, zero where the flow is below the dynamic threshold, and the reference's
    depth transform) is the network input downsampled by `downsample`; its height and width must divide
    by 8 (the decoder broadcasts the slots at 1/8 of it). `mask_threshold`: a pixel belongs to a slot
    whose mask reaches it (reference 0.25)."""

    slots: int = 5
    slot_dim: int = 64
    iterations: int = 3
    channels: int = 32
    downsample: int = 2
    mask_threshold: float = 0.25
    depth_weight: float = 0.2
    background_weight: float = 0.005
    background_from: float = 0.125      # the reference's epoch 5 of 40
    steps: int = 1000
    lr: float = 4e-4
    lr_decay_at: list[int] = field(default_factory=lambda: [500, 800])
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(batch_size=8))
    infer_batch_size: int = 16


@dataclass
class SeedsStageConfig:
    """masks.seeds: moving regions grouped into objects, then the reference's seed rules (§3U 1.3).

    Moving pixels (motion): `network` — stage 1's residual flow magnitude (Σ|flow_prev| + Σ|flow_next|)/2 at
    least flow_threshold_px and at least contrast_factor x the frame's median magnitude (the reference's cue) —
    or `optical` — the flow OpenCV's DIS measures between the frames against the flow of a static world at
    stage 1's depth and pose: log(observed / rigid) at most -optical_log_ratio (the object moved less than a
    static one would: traffic that travels with the camera) or at least optical_log_ratio_towards (it moved
    more: oncoming traffic, whose observed flow is the sum of both speeds, so the log ratio is about ln 2 = 0.69
    for a car as fast as the camera, less after stage 1 has pulled it nearer; 0, the default, = optical_log_ratio:
    0.4 finds more oncoming cars but the final network trained on them was not better, docs/training.md), where
    the rigid flow is at least optical_min_rigid_px (training.masks.seeds.flow_disagreement); not ground either way.
    method: cluster (connected
    components of the moving pixels, cut where the stage-1 depth jumps by more than depth_edge in log depth
    or the flow changes by more than flow_edge of its magnitude) | slots (slot attention, SlotsConfig).
    Seed rules per group: area above min_area_fraction of the image (reference 0.1 %), box below
    max_box_fraction of the image (50 %), mask / box above min_fill (0.5), box touching the ground
    (require_ground_contact; ground within contact_px rows below it); the seed is the box's moving
    non-ground pixels, closed with a close_px x close_px kernel (5).

    floating_log_ratio > 0 adds to the moving pixels (either motion) the objects stage 1 put at least
    e^floating_log_ratio times farther than the ground where they stand, within floating_rows rows of their
    contact (training.masks.seeds.floating_pixels): a vehicle that travels at the camera's speed, which shows no
    flow and which the optical cue cannot decide near the focus of expansion; 0 = off (the default).
    """

    method: str = 'cluster'
    motion: str = 'optical'
    optical_log_ratio: float = 1.0
    optical_log_ratio_towards: float = field(default=0.0, metadata={'hashed': 'unless_default'})
    optical_min_rigid_px: float = 1.0
    floating_log_ratio: float = field(default=0.0, metadata={'hashed': 'unless_default'})
    floating_rows: int = field(default=4, metadata={'hashed': 'unless_default'})
    flow_threshold_px: float = 0.3
    contrast_factor: float = 3.0
    depth_edge: float = 0.15
    flow_edge: float = 0.5
    min_area_fraction: float = 0.001
    max_box_fraction: float = 0.5
    min_fill: float = 0.5
    require_ground_contact: bool = True
    contact_px: int = 3
    close_px: int = 5
    splits: list[str] = field(default_factory=lambda: ['train', 'val'])
    slots: SlotsConfig = field(default_factory=SlotsConfig)

    def __post_init__(self):
        if self.method not in ('cluster', 'slots'):
            raise ValueError(f"masks.seeds.method must be 'cluster' or 'slots', got {self.method!r}")
        if self.motion not in ('network', 'optical'):
            raise ValueError(f"masks.seeds.motion must be 'network' or 'optical', got {self.motion!r}")
        if self.method == 'slots' and self.motion != 'network':
            raise ValueError("masks.seeds.method slots groups stage 1's residual flow: set masks.seeds.motion: network")
        if self.optical_log_ratio_towards < 0:
            raise ValueError(f'masks.seeds.optical_log_ratio_towards must be >= 0 (0 = optical_log_ratio), got '
                             f'{self.optical_log_ratio_towards}')
        if self.optical_log_ratio <= 0 or self.optical_min_rigid_px < 0:
            raise ValueError(f'masks.seeds.optical_log_ratio must be > 0 and optical_min_rigid_px >= 0, got '
                             f'{self.optical_log_ratio}, {self.optical_min_rigid_px}')
        if not self.floating_log_ratio >= 0 or self.floating_rows < 1:
            raise ValueError(f'masks.seeds.floating_log_ratio must be >= 0 (0 = off) and floating_rows >= 1, got '
                             f'{self.floating_log_ratio}, {self.floating_rows}')
        for name in ('min_area_fraction', 'max_box_fraction', 'min_fill'):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f'masks.seeds.{name} must be in [0, 1], got {getattr(self, name)}')
        if 'train' not in self.splits:
            raise ValueError(f'masks.seeds.splits must include train, got {self.splits}')


@dataclass
class InstancesStageConfig:
    """masks.instances: the instance segmentation network, self-trained on the seeds (§3U 1.3).

    Network (training/networks/instance_net.py): RGB + normalised stage-1 disparity + ground probability →
    foreground, object-centre heat map and each pixel's offset to its object's centre; decoded by
    dynadepth_ros.instance_masks. rounds x steps_per_round: after each round the network predicts every
    training frame with a score threshold growing linearly from score_threshold[0] to [1] (the reference
    grows its Mask R-CNN's class score from 0.5 to 0.7; our score is the peak of a centre heat map, which
    Panoptic-DeepLab thresholds at 0.1 and which a from-scratch network trained for minutes keeps low: on the
    generator's own moving masks, 300 steps on cpu-small left every val peak below 0.19: 0.1 → 0.2), the masks are post-processed (training/masks/postprocess.py: at least min_area_fraction of
    the image, mask / box at least min_fill, overlaps of coverage >= duplicate_coverage merged, road pixels
    removed) and replace the targets of the next round. The last round's predictions, with the mirrored
    image added (flip_tta), are the learned masks of predict_splits. keep_seeds (a departure from the
    reference): in the targets of every round and in the learned masks, a frame's seeds that the network does
    not find again (less than half of the seed inside its masks) join them as instances of their own; at the
    cpu-small budget the network alone kept 0.027 of the moving objects over 2 % of the image on val where its
    seeds held 0.318 (2026-12-07, docs/training.md).
    """

    width: int = 16
    rounds: int = 4
    steps_per_round: int = 300
    lr: float = 1e-3
    score_threshold: list[float] = field(default_factory=lambda: [0.1, 0.2])
    foreground_threshold: float = 0.5
    centre_kernel: int = 5
    min_area_fraction: float = 0.001
    min_fill: float = 0.5
    duplicate_coverage: float = 0.5
    overlap_coverage: float = 0.25
    flip_tta: bool = True
    keep_seeds: bool = True         # seeds the network does not find again join its masks (targets and output)
    centre_weight: float = 0.02     # the focal loss, summed over pixels per centre, is ~10x the BCE: at weight 1 it
    offset_weight: float = 0.1      # takes the shared layers and the foreground stays at the constant predictor's
                                    # BCE (one batch overfitted 60 steps: 0.30; at 0.02 it reaches 0.10 and the
                                    # centres still learn, focal 3.5 against 2.9)
    predict_splits: list[str] = field(default_factory=lambda: ['train', 'val', 'test'])
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(batch_size=8))
    infer_batch_size: int = 16

    def __post_init__(self):
        if self.rounds < 1 or self.steps_per_round < 0:
            raise ValueError(f'masks.instances needs rounds >= 1 and steps_per_round >= 0, got {self.rounds}, '
                             f'{self.steps_per_round}')
        if len(self.score_threshold) != 2 or not all(0 <= s <= 1 for s in self.score_threshold):
            raise ValueError(f'masks.instances.score_threshold is [first round, last round] in [0, 1], got '
                             f'{self.score_threshold}')
        if self.centre_kernel < 1 or self.centre_kernel % 2 == 0:
            raise ValueError(f'masks.instances.centre_kernel must be odd and >= 1, got {self.centre_kernel}')
        if 'train' not in self.predict_splits:
            raise ValueError(f'masks.instances.predict_splits must include train, got {self.predict_splits}')

    def threshold_of_round(self, r: int) -> float:
        lo, hi = self.score_threshold
        return lo if self.rounds == 1 else lo + (hi - lo) * r / (self.rounds - 1)


@dataclass
class MasksConfig:
    ground: GroundStageConfig = field(default_factory=GroundStageConfig)
    seeds: SeedsStageConfig = field(default_factory=SeedsStageConfig)
    instances: InstancesStageConfig = field(default_factory=InstancesStageConfig)
