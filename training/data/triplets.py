"""Torch dataset of frame triplets (t-gap, t, t+gap) from any FrameSource, in the batch format the
stage models consume.

One sample (a dict of tensors; the default DataLoader collate stacks them into a batch):

    frames         float32 [3,3,H,W]  frames t-gap, t, t+gap, RGB in [0,1], colour-augmented
                                      identically across the triplet (network input)
    frames_raw     float32 [3,3,H,W]  the same frames without colour augmentation (loss targets)
    K, inv_K       float32 [3,3]      intrinsics of frame t at H x W (and the inverse)
    odom_distance  float32 [2]        metres travelled t-gap→t and t→t+gap from poses; NaN when unknown
    odom_pose      float32 [2,4,4]    T_ref→src from the poses: maps points in frame t's camera into the
                                      cameras of frames t-gap and t+gap (metres); NaN when unknown
                                      (mirrored, M·T·M with M = diag(-1,1,1,1), when the sample is flipped)
    mask           int64 [H,W]        instance ids of frame t, 0 = none (all 0 without masks)
    gt_depth       float32 [1,H,W]    metres, 0 = invalid (all 0 without ground truth); never a loss input
    moving         bool [H,W]         pixels of instances flagged as moving (False when unknown)
    index          int64 []           sample index in this dataset
    sequence_index int64 []           index into dataset.sequences
    frame_index    int64 []           index of frame t inside its sequence
    <layer name>   extra per-frame layers (below), resized and flipped with the frame

Extra layers (stage outputs such as scene depth, residual flow, object masks, pseudo labels) come
from `layers(split, sequence, frame) -> {name: Layer}` given to the dataset, or per call through
`load(index, extra={name: Layer})`. A Layer is an array whose last two axes are [H,W] (any leading
axes, e.g. [3,H,W] for a mask triplet or [2,H,W] for a flow) and a kind that says how it is
resized and flipped, all in `transform_layer`, the one place that does it:

    mask    ids / bools: exact nearest neighbour; flipped along the width
    depth   metres, 0 = invalid: exact nearest neighbour (no mixing across depth edges); flipped
    value   any other continuous map: bilinear (area when shrinking); flipped
    flow    [...,2,H,W] pixel displacement (x, y): bilinear, x scaled by the width ratio and y by
            the height ratio; flipped along the width AND x negated

Images are resized with area interpolation when shrinking and bilinear when enlarging; masks and
GT depth with exact nearest-neighbour; K is scaled with dynadepth_ros.camera.scale_intrinsics.
Augmentation (flip, colour jitter) is drawn from an RNG seeded by (seed, epoch, index), so a
sample is reproducible whatever the worker or process that loads it; call set_epoch(e) each epoch.
Triplets never cross sequence boundaries.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dynadepth_ros.camera import resize_nearest, scale_intrinsics
from dynadepth_ros.datasets.base import FrameSequence, FrameSource
from training.data.augment import (NO_AUGMENTATION, AugmentConfig, AugmentParams, flip_intrinsics, flip_width,
                                   jitter_colour, sample_params)


def resize_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h,w,3] → uint8 [height,width,3]: area interpolation when shrinking, bilinear otherwise."""
    h, w = rgb.shape[:2]
    if (h, w) == (height, width):
        return rgb
    interp = cv2.INTER_AREA if height <= h and width <= w else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interp)


LAYER_KINDS = ('mask', 'depth', 'value', 'flow')


@dataclass(frozen=True)
class Layer:
    """An extra per-frame map of a sample: `array` [..., H, W] and its `kind` (module docstring)."""

    array: np.ndarray
    kind: str

    def __post_init__(self):
        if self.kind not in LAYER_KINDS:
            raise ValueError(f'layer kind must be one of {LAYER_KINDS}, got {self.kind!r}')
        if np.ndim(self.array) < 2:
            raise ValueError(f'a layer needs at least 2 axes [H,W], got shape {np.shape(self.array)}')
        if self.kind == 'flow' and (np.ndim(self.array) < 3 or np.shape(self.array)[-3] != 2):
            raise ValueError(f'a flow layer is [...,2,H,W], got shape {np.shape(self.array)}')


def _resize_planes(a: np.ndarray, height: int, width: int, fn) -> np.ndarray:
    lead = a.shape[:-2]
    planes = a.reshape((-1,) + a.shape[-2:])
    out = np.stack([fn(p) for p in planes]) if len(planes) else np.zeros((0, height, width), a.dtype)
    return out.reshape(lead + (height, width))


def transform_layer(layer: Layer, height: int, width: int, flip: bool) -> np.ndarray:
    """Resize `layer` to height x width and mirror it (when `flip`) the way its kind requires."""
    a = np.asarray(layer.array)
    h, w = a.shape[-2:]
    if (h, w) != (height, width):
        if layer.kind in ('mask', 'depth'):
            dtype = a.dtype
            work = a.astype(np.uint8) if dtype == bool else a
            a = _resize_planes(work, height, width, lambda p: resize_nearest(p, height, width)).astype(dtype)
        else:
            interp = cv2.INTER_AREA if height <= h and width <= w else cv2.INTER_LINEAR
            a = _resize_planes(a.astype(np.float32), height, width,
                               lambda p: cv2.resize(p, (width, height), interpolation=interp))
            if layer.kind == 'flow':
                a = a.copy()
                a[..., 0, :, :] *= width / w
                a[..., 1, :, :] *= height / h
    if flip:
        a = flip_width(a, a.ndim - 1)
        if layer.kind == 'flow':
            a = a.copy()
            a[..., 0, :, :] = -a[..., 0, :, :]
    return np.ascontiguousarray(a)


MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0]).astype(np.float32)


def _ref_to_src(T_ref: np.ndarray | None, T_src: np.ndarray | None) -> np.ndarray:
    """float32 [4,4]: inv(T_world_src) @ T_world_ref (reference camera → source camera); NaN when a
    pose is unknown."""
    if T_ref is None or T_src is None:
        return np.full((4, 4), np.nan, np.float32)
    return (np.linalg.inv(np.asarray(T_src, np.float64)) @ np.asarray(T_ref, np.float64)).astype(np.float32)


class TripletDataset(Dataset):
    """Triplets (t-gap, t, t+gap) of every sequence of `source`, resized to height x width.

    source: a dynadepth_ros.datasets FrameSource. split: a label (logs, error messages).
    augment: AugmentConfig, or None for no augmentation (validation / test / prediction).
    seed: base of the per-sample augmentation RNG.
    """

    def __init__(self, source: FrameSource, height: int, width: int, frame_gap: int = 1, split: str = 'train',
                 augment: AugmentConfig | None = None, seed: int = 0, layers=None):
        if frame_gap < 1:
            raise ValueError(f'frame_gap must be >= 1, got {frame_gap}')
        self.source = source
        self.height, self.width = int(height), int(width)
        self.frame_gap = int(frame_gap)
        self.split = split
        self.augment = augment
        self.seed = int(seed)
        self.layers = layers   # None or callable(split, sequence name, frame) -> {name: Layer}
        self.epoch = 0
        self.sequences: list[FrameSequence] = source.sequences()
        self.samples: list[tuple[int, int]] = []
        for si, seq in enumerate(self.sequences):
            n = len(seq)
            self.samples.extend((si, t) for t in seq.sample_indices()
                                if t - self.frame_gap >= 0 and t + self.frame_gap < n)
        if not self.samples:
            lengths = [len(s) for s in self.sequences]
            raise ValueError(f'{split} split of {source!r} yields no triplets with frame_gap {frame_gap}: '
                             f'sequence lengths {lengths[:10]}{"..." if len(lengths) > 10 else ""}; every '
                             f'sequence needs at least {2 * frame_gap + 1} frames')

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of this epoch (call before iterating; workers copy it at start)."""
        self.epoch = int(epoch)

    def sample_location(self, index: int) -> tuple[str, int]:
        """(sequence name, frame index of t) of sample `index`: where to write per-frame outputs."""
        si, t = self.samples[index]
        return self.sequences[si].name, t

    def augment_params(self, index: int) -> AugmentParams:
        """The augmentation sample `index` gets in the current epoch."""
        if self.augment is None:
            return NO_AUGMENTATION
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return sample_params(self.augment, rng)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.load(index)

    def median_intrinsics(self) -> tuple[float, float, float, float]:
        """Normalised (fx/W, fy/H, cx/W, cy/H), the median over the sequences: the camera a model trained
        on this data expects (sequences may come from different cameras, e.g. the synthetic Look)."""
        first: dict[int, int] = {}
        for si, t in self.samples:
            first.setdefault(si, t)
        rows = []
        for si, t in sorted(first.items()):
            seq = self.sequences[si]
            h0, w0 = seq.rgb(t).shape[:2]
            K = seq.K(t)
            rows.append((K[0, 0] / w0, K[1, 1] / h0, K[0, 2] / w0, K[1, 2] / h0))
        if not rows:
            raise ValueError('no samples: cannot tell the training intrinsics')
        return tuple(float(v) for v in np.median(np.asarray(rows, float), axis=0))

    def load(self, index: int, extra: dict[str, Layer] | None = None) -> dict[str, torch.Tensor]:
        """Sample `index` with the dataset's layers plus `extra` ones (same augmentation as the frames)."""
        if not 0 <= index < len(self.samples):
            raise IndexError(f'sample {index} out of range [0, {len(self.samples)})')
        si, t = self.samples[index]
        seq = self.sequences[si]
        H, W = self.height, self.width
        ids = (t - self.frame_gap, t, t + self.frame_gap)

        native = [seq.rgb(i) for i in ids]
        h0, w0 = native[1].shape[:2]
        for i, img in zip(ids, native):
            if img.shape[:2] != (h0, w0):
                raise ValueError(f'{seq.name}: frame {i} is {img.shape[1]}x{img.shape[0]} but frame {t} is '
                                 f'{w0}x{h0}; a sequence must have one image size')
        rgb = np.stack([resize_rgb(img, H, W) for img in native]).astype(np.float32) / 255.0  # [3,H,W,3]
        K = scale_intrinsics(seq.K(t), W / w0, H / h0)

        poses = [seq.pose(i) for i in ids]
        odom_pose = np.stack([_ref_to_src(poses[1], poses[0]), _ref_to_src(poses[1], poses[2])])
        # the length of T_ref→src's translation is the distance between the two camera centres (NaN stays NaN)
        odom = np.linalg.norm(odom_pose[:, :3, 3], axis=1).astype(np.float32)

        params = self.augment_params(index)
        raw_mask = seq.instance_mask(t)
        mask = np.zeros((H, W), np.int64) if raw_mask is None else \
            transform_layer(Layer(np.asarray(raw_mask, np.int32), 'mask'), H, W, params.flip).astype(np.int64)
        moving_ids = seq.moving_ids(t) if raw_mask is not None else None
        moving = np.isin(mask, sorted(moving_ids)) if moving_ids else np.zeros((H, W), bool)

        raw_depth = seq.gt_depth(t)
        gt = np.zeros((H, W), np.float32) if raw_depth is None else \
            transform_layer(Layer(np.asarray(raw_depth, np.float32), 'depth'), H, W, params.flip)
        gt = np.where(np.isfinite(gt) & (gt > 0), gt, np.float32(0.0)).astype(np.float32)

        if params.flip:
            rgb = flip_width(rgb, 2)
            K = flip_intrinsics(K, W)
            odom_pose = MIRROR_X @ odom_pose @ MIRROR_X   # the motion that explains the mirrored frames
        jittered = jitter_colour(rgb, params.colour) if params.colour is not None else rgb
        layers = dict(self.layers(self.split, seq.name, t)) if self.layers is not None else {}
        layers.update(extra or {})
        reserved = {'frames', 'frames_raw', 'K', 'inv_K', 'odom_distance', 'odom_pose', 'mask', 'gt_depth', 'moving',
                    'index', 'sequence_index', 'frame_index'}
        clash = sorted(reserved & set(layers))
        if clash:
            raise ValueError(f'extra layer name(s) {clash} clash with the sample keys')
        extra_out = {name: torch.from_numpy(transform_layer(layer, H, W, params.flip)) for name, layer in layers.items()}

        def chw(a):
            return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

        return {
            'frames': chw(jittered),
            'frames_raw': chw(rgb),
            'K': torch.from_numpy(K.astype(np.float32)),
            'inv_K': torch.from_numpy(np.linalg.inv(K).astype(np.float32)),
            'odom_distance': torch.from_numpy(odom),
            'odom_pose': torch.from_numpy(np.ascontiguousarray(odom_pose)),
            'mask': torch.from_numpy(mask),
            'gt_depth': torch.from_numpy(gt[None]),
            'moving': torch.from_numpy(moving),
            'index': torch.tensor(index, dtype=torch.int64),
            'sequence_index': torch.tensor(si, dtype=torch.int64),
            'frame_index': torch.tensor(t, dtype=torch.int64),
            **extra_out,
        }
