"""Pass 1 of a bag evaluation: read only the header stamps (from the CDR bytes) of the image, ground-truth,
mask, camera_info and prediction topics and pair them one-to-one by stamp (nearest first, within --slop)
into a BagPlan: which message of each topic makes each frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynadepth_ros.recording.bag_reader import BagError, BagReader, cdr_header_stamp_ns
from dynadepth_ros.recording.eval_config import EvalConfig, EvalError, RunCounts
from dynadepth_ros.recording.stamp_pairing import nearest_index, pair_by_stamp


def stamps_by_topic(bag: BagReader, topics, counts: RunCounts) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{topic: (header stamps ns int64 [N], receive times ns int64 [N])} in one pass over the bag.

    A message whose header cannot be read gets a unique far-negative stamp, so it pairs with nothing.
    """
    topics = sorted({t for t in topics if t})
    stamps: dict = {t: [] for t in topics}
    recv: dict = {t: [] for t in topics}
    bad = 0
    for topic, _ty, t_ns, raw in bag.raw_messages(topics):
        try:
            st = cdr_header_stamp_ns(raw)
        except ValueError as exc:
            counts.skip('corrupt_header', f'{topic}: {exc}')
            bad += 1
            st = -(10 ** 18) - bad * 10 ** 12
        stamps[topic].append(st)
        recv[topic].append(t_ns)
    return {t: (np.asarray(stamps[t], dtype=np.int64), np.asarray(recv[t], dtype=np.int64)) for t in topics}


@dataclass
class BagPlan:
    frames: list            # list of dicts: {'image': i, 'gt': j, 'mask': k|None, 'info': m|None, 'pred': p|None}
    image_stamps: np.ndarray
    latency_ms: list


def plan_bag(cfg: EvalConfig, bag: BagReader, pred_bag: BagReader | None, counts: RunCounts) -> BagPlan:
    gt_topic = cfg.gt_lidar_topic or cfg.gt_depth_topic
    wanted = [cfg.image_topic, gt_topic, cfg.mask_topic, cfg.camera_info_topic]
    if pred_bag is not None and pred_bag is bag:
        wanted.append(cfg.prediction_topic)
    try:
        bag.require([t for t in wanted if t])
    except BagError as exc:
        hint = ''
        if cfg.mask_topic and cfg.mask_topic not in bag.topics:
            hint += "\n(no instance masks? pass --mask-topic '' to evaluate all pixels only)"
        if cfg.camera_info_topic and cfg.camera_info_topic not in bag.topics and not cfg.gt_lidar_topic:
            hint += "\n(no camera_info? pass --camera-info-topic '' to run without intrinsics)"
        raise BagError(f'{exc}{hint}') from None
    if pred_bag is not None and pred_bag is not bag:
        pred_bag.require([cfg.prediction_topic])
    if cfg.gt_lidar_topic and not cfg.camera_info_topic:
        raise EvalError('lidar ground truth needs camera_info (K and image size); set --camera-info-topic')
    for t, (_ty, n) in bag.topics.items():
        if t in wanted:
            counts.messages[t] = n

    tol = int(round(cfg.slop * 1e9))
    st = stamps_by_topic(bag, wanted, counts)
    pst_bag = st if pred_bag is bag else (
        stamps_by_topic(pred_bag, [cfg.prediction_topic, cfg.image_topic if cfg.image_topic in pred_bag.topics
                                    else ''], counts) if cfg.prediction_topic else {})
    img_st = st[cfg.image_topic][0]
    gt_pairs = pair_by_stamp(img_st, st[gt_topic][0], tol)
    counts.unmatched['image_without_gt'] = len(gt_pairs.unmatched_a)
    counts.unmatched['gt_without_image'] = len(gt_pairs.unmatched_b)
    frames = [{'image': ia, 'gt': ib} for ia, ib in gt_pairs.pairs]

    def attach(name: str, stamps: np.ndarray, unmatched_key: str) -> None:
        by_image = dict(pair_by_stamp(img_st, stamps, tol).pairs)
        keep = []
        for f in frames:
            j = by_image.get(f['image'])
            if j is None:
                counts.unmatched[unmatched_key] = counts.unmatched.get(unmatched_key, 0) + 1
                if name == 'pred':      # nothing to evaluate without a prediction
                    continue
            f[name] = j
            keep.append(f)
        frames[:] = keep

    if cfg.mask_topic:
        attach('mask', st[cfg.mask_topic][0], 'image_without_mask')
    latency: list = []
    if cfg.prediction_topic:
        pst, precv = pst_bag[cfg.prediction_topic]
        counts.messages[f'prediction:{cfg.prediction_topic}'] = int(pst.size)
        attach('pred', pst, 'image_without_prediction')
        if cfg.image_topic in pst_bag:
            # a recording that also holds the (replayed) images: image → depth latency from receive times
            ist, irecv = pst_bag[cfg.image_topic]
            latency = [float(precv[j] - irecv[i]) / 1e6 for i, j in pair_by_stamp(ist, pst, 0).pairs]
    if cfg.camera_info_topic:
        info_st = st[cfg.camera_info_topic][0]
        for f in frames:
            f['info'] = nearest_index(info_st, int(img_st[f['image']]))
    counts.pairs = len(frames)
    if cfg.max_frames and len(frames) > cfg.max_frames:
        frames = frames[:cfg.max_frames]
    counts.planned = len(frames)
    return BagPlan(frames=frames, image_stamps=img_st, latency_ms=latency)
