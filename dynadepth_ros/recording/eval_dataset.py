"""Frames of a dataset folder for `dynadepth-eval-bag --dataset`, read with dynadepth_ros.datasets.open_source
(the readers training uses): one FrameInput per sampled frame with GT depth, labels resized to the GT."""
from __future__ import annotations

from collections.abc import Iterator

from dynadepth_ros.camera import resize_nearest
from dynadepth_ros.recording.eval_config import EvalConfig, RunCounts
from dynadepth_ros.recording.evaluation import FrameInput


def iter_dataset_frames(cfg: EvalConfig, source, counts: RunCounts) -> Iterator[FrameInput]:
    n = 0
    for seq in source.sequences():
        for i in seq.sample_indices():
            if cfg.max_frames and n >= cfg.max_frames:
                return
            n += 1
            key = f'{seq.name}#{i}'
            gt = seq.gt_depth(i)
            if gt is None:
                counts.skip('no_ground_truth', f'{key}: the dataset has no GT depth for this frame')
                continue
            labels = seq.instance_mask(i)
            moving = None if cfg.dynamic_from_mask or labels is None else seq.moving_ids(i)
            yield FrameInput(key=key, stamp_s=float(seq.stamp(i)), rgb=seq.rgb(i), gt=gt,
                             labels=None if labels is None else resize_nearest(labels, *gt.shape),
                             moving_ids=moving, K=seq.K(i))


def count_dataset_frames(cfg: EvalConfig, source) -> int:
    n = sum(len(seq.sample_indices()) for seq in source.sequences())
    return min(n, cfg.max_frames) if cfg.max_frames else n
