"""Pass 2 of a bag evaluation: stream the bag once, decode just the messages the BagPlan pairs (image,
ground truth as a depth image or projected lidar, instance mask, camera_info, recorded prediction) and yield
one FrameInput per frame; a frame whose messages cannot be decoded is skipped and counted."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dynadepth_ros.camera import resize_nearest, scale_intrinsics
from dynadepth_ros.image_codec import ImageFormatError
from dynadepth_ros.recording.bag_reader import (BagError, BagReader, MessageDecodeError, camera_info_K,
                                                image_msg_depth, image_msg_labels, image_msg_rgb)
from dynadepth_ros.recording.eval_config import EvalConfig, EvalError, RunCounts
from dynadepth_ros.recording.eval_plan import BagPlan
from dynadepth_ros.recording.evaluation import FrameInput
from dynadepth_ros.recording.lidar_projection import LidarProjectionError, find_transform, lidar_depth_image
from dynadepth_ros.recording.stamp_pairing import pair_by_stamp


class NeededMessages:
    """Streams one bag once, keeping only the (topic, index) messages that frames will ask for.

    get(topic, i) advances the bag until that message has been seen; messages needed later stay
    buffered (for the time skew between topics), the rest are dropped at once.
    """

    def __init__(self, bag: BagReader, needs: dict[tuple[str, int], int]):
        self.bag = bag
        self.refs = dict(needs)
        self.buffer: dict[tuple[str, int], tuple[str, bytes]] = {}
        topics = sorted({t for t, _ in needs})
        self.index = dict.fromkeys(topics, 0)
        self.it = bag.raw_messages(topics) if topics else iter(())

    def get(self, topic: str, i: int):
        key = (topic, i)
        while key not in self.buffer:
            try:
                t, msgtype, _t_ns, raw = next(self.it)
            except StopIteration:
                raise BagError(f'bag {self.bag.path}: message {i} of {topic} vanished between the two passes') from None
            k = (t, self.index[t])
            self.index[t] += 1
            if self.refs.get(k, 0) > 0:
                self.buffer[k] = (msgtype, raw)
        msgtype, raw = self.buffer[key]
        self.release(topic, i)
        return self.bag.deserialize(raw, msgtype, topic)

    def release(self, topic: str, i: int) -> None:
        """One use of (topic, i) is done (or abandoned); drop it once nobody needs it."""
        key = (topic, i)
        self.refs[key] = self.refs.get(key, 0) - 1
        if self.refs[key] <= 0:
            self.buffer.pop(key, None)


class MovingFlags:
    """Per-instance motion flags of a dataset sequence, looked up by image stamp (or by order)."""

    def __init__(self, seq_dir: str, image_stamps_ns: np.ndarray, tolerance_ns: int):
        from dynadepth_ros.datasets.base import DatasetError
        from dynadepth_ros.datasets.synthetic import SyntheticSequence

        try:
            self.seq = SyntheticSequence(seq_dir)
        except DatasetError as exc:
            raise EvalError(f'--moving-ids-from {seq_dir}: {exc}') from None
        seq_st = np.array([round(self.seq.stamp(i) * 1e9) for i in range(len(self.seq))], dtype=np.int64)
        pairing = pair_by_stamp(image_stamps_ns, seq_st, tolerance_ns)
        if pairing.pairs:
            self.by_image = dict(pairing.pairs)
            self.mapping = 'stamp'
        elif len(seq_st) == len(image_stamps_ns):
            self.by_image = {i: i for i in range(len(seq_st))}
            self.mapping = 'order'
        else:
            raise EvalError(f'--moving-ids-from {seq_dir}: its {len(seq_st)} frame stamps match none of the '
                            f'{len(image_stamps_ns)} image stamps and the counts differ; is it the sequence '
                            f'this bag was recorded from?')

    def ids(self, image_index: int) -> set | None:
        j = self.by_image.get(image_index)
        return None if j is None else self.seq.moving_ids(j)


def _decoded(counts: RunCounts, reason: str, key: str, errors, decode, *args):
    """decode(*args), or None after counting frame `key` as skipped for `reason` when it raises `errors`."""
    try:
        return decode(*args)
    except errors as exc:
        counts.skip(reason, f'{key}: {exc}')
        return None


def iter_bag_frames(cfg: EvalConfig, bag: BagReader, pred_bag: BagReader | None, plan: BagPlan,
                     counts: RunCounts) -> Iterator[FrameInput]:
    gt_topic = cfg.gt_lidar_topic or cfg.gt_depth_topic
    needs: dict = {}
    pred_needs: dict = {}
    for f in plan.frames:
        for name, topic in (('image', cfg.image_topic), ('gt', gt_topic), ('mask', cfg.mask_topic),
                            ('info', cfg.camera_info_topic), ('pred', cfg.prediction_topic)):
            if f.get(name) is None or not topic:
                continue
            target = pred_needs if name == 'pred' and pred_bag is not bag else needs
            target[(topic, f[name])] = target.get((topic, f[name]), 0) + 1
    main = NeededMessages(bag, needs)
    preds = main if pred_bag is bag or pred_bag is None else NeededMessages(pred_bag, pred_needs)
    flags = (MovingFlags(cfg.moving_ids_from, plan.image_stamps, int(round(cfg.slop * 1e9)))
             if cfg.moving_ids_from else None)
    tf_static = bag.static_transforms(cfg.tf_static_topic) if cfg.gt_lidar_topic else {}
    T_cache: dict = {}

    for f in plan.frames:
        key = f'{cfg.image_topic}#{f["image"]}'
        wanted = [(name, preds if name == 'pred' else main, topic, f[name])
                  for name, topic in (('image', cfg.image_topic), ('gt', gt_topic), ('mask', cfg.mask_topic),
                                      ('info', cfg.camera_info_topic), ('pred', cfg.prediction_topic))
                  if topic and f.get(name) is not None]
        msgs: dict = {}
        try:
            for n, (name, stream, topic, idx) in enumerate(wanted):
                msgs[name] = stream.get(topic, idx)
        except MessageDecodeError as exc:
            for _name, stream, topic, idx in wanted[n + 1:]:
                stream.release(topic, idx)
            counts.skip('corrupt_message', f'{key}: {exc}')
            continue
        img_msg, gt_msg = msgs['image'], msgs['gt']
        mask_msg, info_msg, pred_msg = msgs.get('mask'), msgs.get('info'), msgs.get('pred')
        st = img_msg.header.stamp
        stamp = st.sec + st.nanosec * 1e-9
        rgb = _decoded(counts, 'image_encoding', key, ImageFormatError, image_msg_rgb, img_msg)
        if rgb is None:
            continue
        K = None
        if info_msg is not None:
            K = _decoded(counts, 'camera_info_invalid', key, ValueError, camera_info_K, info_msg)
            if K is None:
                continue
            if info_msg.width and info_msg.height and (info_msg.width, info_msg.height) != (rgb.shape[1], rgb.shape[0]):
                K = scale_intrinsics(K, rgb.shape[1] / info_msg.width, rgb.shape[0] / info_msg.height)
        if cfg.gt_lidar_topic:
            if info_msg is None:
                counts.skip('no_camera_info', f'{key}: lidar projection needs a camera_info message')
                continue
            cam_frame = (info_msg.header.frame_id or img_msg.header.frame_id).lstrip('/')
            lidar_frame = gt_msg.header.frame_id.lstrip('/')
            if (cam_frame, lidar_frame) not in T_cache:
                # a missing extrinsic is fatal: every frame would fail the same way
                T_cache[(cam_frame, lidar_frame)] = find_transform(tf_static, cam_frame, lidar_frame)
            h, w = int(info_msg.height) or rgb.shape[0], int(info_msg.width) or rgb.shape[1]
            gt = _decoded(counts, 'lidar_cloud', key, LidarProjectionError, lidar_depth_image, gt_msg,
                          T_cache[(cam_frame, lidar_frame)], camera_info_K(info_msg), h, w)
        else:
            gt = _decoded(counts, 'gt_encoding', key, ImageFormatError, image_msg_depth, gt_msg)
        if gt is None:
            continue
        labels = pred = None
        if mask_msg is not None:
            labels = _decoded(counts, 'mask_encoding', key, ImageFormatError, image_msg_labels, mask_msg)
            if labels is None:
                continue
            labels = resize_nearest(labels, *gt.shape)
        if pred_msg is not None:
            pred = _decoded(counts, 'prediction_encoding', key, ImageFormatError, image_msg_depth, pred_msg)
            if pred is None:
                continue
        moving = flags.ids(f['image']) if flags is not None and not cfg.dynamic_from_mask else None
        yield FrameInput(key=key, stamp_s=stamp, rgb=rgb, gt=gt, labels=labels, moving_ids=moving, K=K, pred=pred)
