"""`dynadepth-eval-bag`: depth metrics of a model (or of recorded depth) on a rosbag2 recording or a dataset folder.

    dynadepth-eval-bag BAG --out DIR [--model PATH] [--backend auto]
    dynadepth-eval-bag BAG --gt-lidar-topic /lidar/points --out DIR            # GT from projected lidar
    dynadepth-eval-bag BAG --prediction-bag REC --prediction-topic /depth --out DIR   # evaluate recorded depth
    dynadepth-eval-bag --dataset DIR --layout synthetic --split test --out DIR

Bag flow: pass 1 reads only header stamps (from the CDR bytes) of the image, ground-truth, mask,
camera_info and prediction topics and pairs them one-to-one by stamp (nearest first, within
--slop); pass 2 decodes just the paired messages, runs the inference core the node uses
(dynadepth_ros.inference.DepthEstimator) and feeds dynadepth_ros.metrics. Dataset folders are
read with dynadepth_ros.datasets.open_source, the readers training uses.

Per frame the metrics are computed for all / static / dynamic pixels (dynamic = any instance in
the mask, or only instances flagged as moving when flags are given), median-scaled (one ratio per
frame from all valid pixels) and metric, within (min_depth, max_depth), and per GT-distance bin.
Results go to --out via dynadepth_ros.eval_report; a partial report is written if the run stops
early (error, corrupt bag, Ctrl-C) so what was done is never lost.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dynadepth_ros import __version__
from dynadepth_ros.bag_reader import (BagError, BagReader, MessageDecodeError, camera_info_K, cdr_header_stamp_ns,
                                      image_msg_depth, image_msg_labels, image_msg_rgb)
from dynadepth_ros.camera import scale_intrinsics
from dynadepth_ros.image_codec import ImageFormatError
from dynadepth_ros.lidar_projection import LidarProjectionError, find_transform, lidar_depth_image
from dynadepth_ros.metrics import MODES, MetricAccumulator, eigen_metrics, evaluate_frame, valid_mask
from dynadepth_ros.stamp_pairing import nearest_index, pair_by_stamp

REGIONS = ('all', 'static', 'dynamic')
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
    min_depth: float = 1e-3
    max_depth: float = 80.0
    bin_size: float = 10.0
    slop: float = 0.02                                         # seconds
    max_frames: int = 0                                        # 0 = all
    samples: int = 4
    progress: bool = True

    @property
    def gt_kind(self) -> str:
        return 'lidar' if self.gt_lidar_topic else 'depth'


# ---- per-frame inputs ----------------------------------------------------------------------
@dataclass
class FrameInput:
    """One frame to evaluate. Arrays: rgb uint8 [H,W,3]; gt float32 [h,w] m (NaN/0 invalid);
    labels int32 [h,w] or None; moving_ids set or None; K float64 [3,3] or None; pred float32 or None."""

    key: str
    stamp_s: float
    rgb: np.ndarray | None
    gt: np.ndarray
    labels: np.ndarray | None = None
    moving_ids: set | None = None
    K: np.ndarray | None = None
    pred: np.ndarray | None = None


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


def dynamic_region(labels: np.ndarray, moving_ids: set | None) -> np.ndarray:
    """bool [H,W]: pixels of any instance (moving_ids None) or of the instances in moving_ids."""
    if moving_ids is None:
        return labels > 0
    if not moving_ids:
        return np.zeros(labels.shape, dtype=bool)
    return np.isin(labels, np.fromiter(moving_ids, dtype=np.int64))


def fit_to(array: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """array resized to shape (h, w): bilinear for depth, nearest for labels; unchanged if it fits."""
    if array.shape[:2] == tuple(shape):
        return array
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    src = array if array.dtype != np.int32 or not nearest else array.astype(np.float32)
    out = cv2.resize(src, (shape[1], shape[0]), interpolation=interp)
    return out.astype(array.dtype) if nearest else out


# ---- bag reading ---------------------------------------------------------------------------
class _NeededMessages:
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


def _stamps_by_topic(bag: BagReader, topics, counts: RunCounts) -> dict[str, tuple[np.ndarray, np.ndarray]]:
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
class _Plan:
    frames: list            # list of dicts: {'image': i, 'gt': j, 'mask': k|None, 'info': m|None, 'pred': p|None}
    image_stamps: np.ndarray
    latency_ms: list


def _plan_bag(cfg: EvalConfig, bag: BagReader, pred_bag: BagReader | None, counts: RunCounts) -> _Plan:
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
    st = _stamps_by_topic(bag, wanted, counts)
    pst_bag = st if pred_bag is bag else (
        _stamps_by_topic(pred_bag, [cfg.prediction_topic, cfg.image_topic if cfg.image_topic in pred_bag.topics
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
    return _Plan(frames=frames, image_stamps=img_st, latency_ms=latency)


class _MovingFlags:
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


def _iter_bag_frames(cfg: EvalConfig, bag: BagReader, pred_bag: BagReader | None, plan: _Plan,
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
    main = _NeededMessages(bag, needs)
    preds = main if pred_bag is bag or pred_bag is None else _NeededMessages(pred_bag, pred_needs)
    flags = (_MovingFlags(cfg.moving_ids_from, plan.image_stamps, int(round(cfg.slop * 1e9)))
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
        try:
            rgb = image_msg_rgb(img_msg)
        except ImageFormatError as exc:
            counts.skip('image_encoding', f'{key}: {exc}')
            continue
        K = None
        if info_msg is not None:
            try:
                K = camera_info_K(info_msg)
            except ValueError as exc:
                counts.skip('camera_info_invalid', f'{key}: {exc}')
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
            try:
                gt = lidar_depth_image(gt_msg, T_cache[(cam_frame, lidar_frame)], camera_info_K(info_msg), h, w)
            except LidarProjectionError as exc:
                counts.skip('lidar_cloud', f'{key}: {exc}')
                continue
        else:
            try:
                gt = image_msg_depth(gt_msg)
            except ImageFormatError as exc:
                counts.skip('gt_encoding', f'{key}: {exc}')
                continue
        labels = None
        if mask_msg is not None:
            try:
                labels = fit_to(image_msg_labels(mask_msg), gt.shape, nearest=True)
            except ImageFormatError as exc:
                counts.skip('mask_encoding', f'{key}: {exc}')
                continue
        pred = None
        if pred_msg is not None:
            try:
                pred = image_msg_depth(pred_msg)
            except ImageFormatError as exc:
                counts.skip('prediction_encoding', f'{key}: {exc}')
                continue
        moving = flags.ids(f['image']) if flags is not None and not cfg.dynamic_from_mask else None
        yield FrameInput(key=key, stamp_s=stamp, rgb=rgb, gt=gt, labels=labels, moving_ids=moving, K=K, pred=pred)


# ---- dataset folders -----------------------------------------------------------------------
def _iter_dataset_frames(cfg: EvalConfig, source, counts: RunCounts) -> Iterator[FrameInput]:
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
                             labels=None if labels is None else fit_to(labels, gt.shape, nearest=True),
                             moving_ids=moving, K=seq.K(i))


def _count_dataset_frames(cfg: EvalConfig, source) -> int:
    n = sum(len(seq.sample_indices()) for seq in source.sequences())
    return min(n, cfg.max_frames) if cfg.max_frames else n


# ---- the evaluation ------------------------------------------------------------------------
def distance_bins(min_depth: float, max_depth: float, bin_size: float) -> list[tuple[float, float]]:
    """[(lo, hi)] GT-distance bins of bin_size metres covering (min_depth, max_depth)."""
    edges = list(np.arange(0.0, max_depth, bin_size)) + [max_depth]
    return [(float(lo), float(hi)) for lo, hi in zip(edges[:-1], edges[1:]) if hi > min_depth]


class Evaluation:
    """Accumulates per-frame results (metrics, distance bins, time series, sample strips)."""

    def __init__(self, cfg: EvalConfig, sample_at: set[int]):
        self.cfg = cfg
        self.acc = MetricAccumulator()
        self.bin_acc = MetricAccumulator()
        self.bins = distance_bins(cfg.min_depth, cfg.max_depth, cfg.bin_size)
        self.series: list[dict] = []
        self.samples: list[dict] = []
        self.sample_at = sample_at
        self.has_regions = False
        self.dynamic_definition = None
        self.infer_s = 0.0

    def add(self, frame: FrameInput, index: int, counts: RunCounts) -> None:
        gt, pred = frame.gt, frame.pred
        if pred.shape != gt.shape:
            pred = fit_to(pred, gt.shape)
        regions = {}
        if frame.labels is not None:
            dyn = dynamic_region(frame.labels, frame.moving_ids)
            regions = {'static': ~dyn, 'dynamic': dyn}
            self.has_regions = True
        main = evaluate_frame(gt, pred, regions, min_depth=self.cfg.min_depth, max_depth=self.cfg.max_depth)
        if main['valid_pixels']['all'] == 0:
            counts.skip('no_valid_gt', f'{frame.key}: no pixel with GT in ({self.cfg.min_depth:g}, '
                                       f'{self.cfg.max_depth:g}) m and a finite prediction')
            return
        self.acc.add(main)
        self.bin_acc.add(self._binned(gt, pred, regions, main['scale']))
        counts.evaluated += 1
        row = {'key': frame.key, 'stamp': frame.stamp_s, 'scale': main['scale'],
               'valid_pixels': main['valid_pixels']['all']}
        for m in MODES:
            for r in REGIONS:
                v = main[m].get(r)
                row[f'{m}.{r}.abs_rel'] = None if v is None else v['abs_rel']
        self.series.append(row)
        if index in self.sample_at and frame.rgb is not None:
            self.samples.append({'key': frame.key, 'rgb': frame.rgb, 'pred': pred, 'gt': gt, 'scale': main['scale']})

    def _binned(self, gt: np.ndarray, pred: np.ndarray, regions: dict, scale: float) -> dict:
        """evaluate_frame-shaped result for the regions '<lo>-<hi>|<all|static|dynamic>' (GT-distance bins).

        Same protocol as metrics.evaluate_frame (valid pixels, the frame's one median ratio, clamping to
        the depth range, eigen_metrics), computed on the valid pixels sorted by bin so each bin is one slice.
        """
        lo_d, hi_d = self.cfg.min_depth, self.cfg.max_depth
        valid = valid_mask(gt, pred, lo_d, hi_d)
        g = gt[valid].astype(np.float64)
        p = pred[valid].astype(np.float64)
        reg = {name: mask[valid] for name, mask in regions.items()}
        edges = np.array([hi for _lo, hi in self.bins])
        which = np.searchsorted(edges, g, side='right')          # bin k holds lo_k <= g < hi_k
        order = np.argsort(which, kind='stable')
        g, p, which = g[order], p[order], which[order]
        reg = {name: m[order] for name, m in reg.items()}
        bounds = np.searchsorted(which, np.arange(len(self.bins) + 1), side='left')
        out: dict = {'scale': float('nan'), 'valid_pixels': {}, **{m: {} for m in MODES}}
        for k, (lo, hi) in enumerate(self.bins):
            sl = slice(bounds[k], bounds[k + 1])
            for name in ('all', *reg):
                sel = np.ones(sl.stop - sl.start, bool) if name == 'all' else reg[name][sl]
                key = f'{lo:g}-{hi:g}|{name}'
                gk, pk = g[sl][sel], p[sl][sel]
                out['valid_pixels'][key] = int(gk.size)
                for mode, factor in (('median_scaled', scale), ('metric', 1.0)):
                    out[mode][key] = (eigen_metrics(gk, np.clip(pk * factor, lo_d, hi_d)) if gk.size else None)
        return out

    def by_distance(self) -> dict:
        s = self.bin_acc.summary()
        out: dict = {'bins': [[lo, hi] for lo, hi in self.bins]}
        for m in MODES:
            out[m] = {}
            for r in REGIONS:
                rows = []
                for lo, hi in self.bins:
                    v = s[m].get(f'{lo:g}-{hi:g}|{r}')
                    rows.append(None if v is None else v)
                out[m][r] = rows
        return out

    def metrics(self) -> dict:
        s = self.acc.summary()
        return {m: {r: s[m].get(r) for r in REGIONS} for m in MODES}, s['scale']


def _make_estimator(cfg: EvalConfig):
    try:
        from dynadepth_ros.inference import BackendError, DepthEstimator, default_model_path
    except ImportError as exc:
        raise EvalError(f'the inference core is not available ({exc}); reinstall dynadepth_ros') from None
    try:
        path = cfg.model or default_model_path()
        est = DepthEstimator(model_path=path, backend=cfg.backend, precision=cfg.precision)
    except (BackendError, ValueError, FileNotFoundError) as exc:
        raise EvalError(f'cannot load model {cfg.model or "(bundled)"}: {exc}') from None
    return est, str(path)


def run(cfg: EvalConfig) -> dict:
    """Evaluate and write the report into cfg.out; returns the report dict. Partial report on failure."""
    from dynadepth_ros import eval_report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = RunCounts()
    report: dict = {
        'tool': 'dynadepth-eval-bag', 'version': __version__,
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'status': 'running', 'settings': asdict(cfg),
    }
    evaluation = Evaluation(cfg, set())
    t_start = t_loop = time.perf_counter()
    latency: list = []
    bags: list[BagReader] = []
    status, error, exc_to_raise = 'complete', None, None
    try:
        estimator = None
        CameraInfoError = ValueError
        if not cfg.prediction_topic:
            from dynadepth_ros.inference import CameraInfoError
            estimator, model_path = _make_estimator(cfg)
            report['model'] = {'path': model_path, 'backend': estimator.backend_name,
                               'metadata': _metadata_dict(estimator.metadata)}
        else:
            report['model'] = {'prediction_topic': cfg.prediction_topic,
                               'prediction_bag': cfg.prediction_bag or cfg.bag}
        if cfg.dataset:
            from dynadepth_ros.datasets import DatasetError, open_source
            try:
                source = open_source(cfg.layout, cfg.dataset, cfg.split)
            except (DatasetError, FileNotFoundError, ValueError) as exc:
                raise EvalError(f'cannot read dataset {cfg.dataset} ({cfg.layout}, split {cfg.split}): {exc}') from None
            total = _count_dataset_frames(cfg, source)
            counts.planned = counts.pairs = total
            frames = _iter_dataset_frames(cfg, source, counts)
            report['source'] = {'dataset': cfg.dataset, 'layout': cfg.layout, 'split': cfg.split}
            evaluation.dynamic_definition = ('any instance in the mask' if cfg.dynamic_from_mask
                                             else 'instances flagged moving by the dataset (any instance where no flags)')
        else:
            bag = BagReader(cfg.bag).open()
            bags.append(bag)
            pred_bag = bag
            if cfg.prediction_bag and Path(cfg.prediction_bag).resolve() != Path(cfg.bag).resolve():
                pred_bag = BagReader(cfg.prediction_bag).open()
                bags.append(pred_bag)
            plan = _plan_bag(cfg, bag, pred_bag if cfg.prediction_topic else None, counts)
            latency = plan.latency_ms
            total = len(plan.frames)
            frames = _iter_bag_frames(cfg, bag, pred_bag, plan, counts)
            report['source'] = {'bag': str(cfg.bag), 'gt': cfg.gt_kind,
                                'topics': {'image': cfg.image_topic, 'camera_info': cfg.camera_info_topic,
                                           'mask': cfg.mask_topic, 'gt': cfg.gt_lidar_topic or cfg.gt_depth_topic}}
            evaluation.dynamic_definition = (
                f'instances flagged moving in {cfg.moving_ids_from}' if cfg.moving_ids_from and not cfg.dynamic_from_mask
                else 'any instance in the mask')
            if total == 0:
                raise EvalError(f'no frame of {cfg.image_topic} could be paired with its ground truth within '
                                f'--slop {cfg.slop:g} s ({counts.unmatched}); check the topics and the tolerance')
        if total:
            evaluation.sample_at = set(np.linspace(0, total - 1, min(cfg.samples, total)).round().astype(int).tolist())
        from tqdm import tqdm
        bar = tqdm(total=total, unit='frame', desc='eval', disable=not cfg.progress, dynamic_ncols=True)
        t_loop = time.perf_counter()
        for index, frame in enumerate(frames):
            if frame.pred is None:
                t0 = time.perf_counter()
                size = None if frame.gt.shape == frame.rgb.shape[:2] else frame.gt.shape
                try:
                    frame.pred = estimator.infer(frame.rgb, K=frame.K, output_size=size)
                except CameraInfoError as exc:
                    counts.skip('camera_info_invalid', f'{frame.key}: {exc}')
                    bar.update(1)
                    continue
                evaluation.infer_s += time.perf_counter() - t0
            evaluation.add(frame, index, counts)
            bar.update(1)
            bar.set_postfix(fps=f'{bar.n / max(time.perf_counter() - t_loop, 1e-9):.1f}')
        bar.close()
    except KeyboardInterrupt as exc:
        status, error, exc_to_raise = 'interrupted', 'interrupted by the user (Ctrl-C)', exc
    except (BagError, EvalError, LidarProjectionError) as exc:
        status, error, exc_to_raise = 'error', str(exc), exc
    except Exception as exc:  # write what was done, then let the traceback through
        status, error, exc_to_raise = 'error', f'{type(exc).__name__}: {exc}', exc
    finally:
        for b in bags:
            b.close()
    if status == 'complete' and counts.evaluated == 0:
        error = (f'no frame could be evaluated (planned {counts.planned}, skipped {counts.skipped}); '
                 f'see counts.skip_examples in report.json')
        status, exc_to_raise = 'error', EvalError(error)
    elapsed = time.perf_counter() - t_start
    loop_s = time.perf_counter() - t_loop
    metrics, scale = evaluation.metrics()
    if not evaluation.has_regions:
        for m in MODES:
            metrics[m]['static'] = metrics[m]['dynamic'] = None
    report.update({
        'status': status, 'error': error, 'metrics': metrics, 'scale': scale,
        'by_distance': evaluation.by_distance(),
        'dynamic_definition': evaluation.dynamic_definition if evaluation.has_regions else 'no instance masks',
        'counts': {**asdict(counts)},
        'timing': {'seconds': elapsed, 'loop_seconds': loop_s,
                   'frames_per_s': counts.evaluated / loop_s if loop_s > 0 else None,
                   'inference_ms_mean': 1e3 * evaluation.infer_s / counts.evaluated if counts.evaluated and
                   evaluation.infer_s else None},
        'latency_ms': eval_report.distribution(latency) if latency else None,
        'frames': evaluation.series,
    })
    eval_report.write_report(out, report, evaluation.samples)
    if exc_to_raise is not None:
        raise exc_to_raise
    return report


def _metadata_dict(meta) -> dict | None:
    if meta is None:
        return None
    try:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(meta).items()}
    except TypeError:
        return {'repr': repr(meta)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='dynadepth-eval-bag', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description='Depth metrics (Eigen set; all / static / dynamic pixels; median-scaled and metric; by '
                    'distance) of a depth model on a rosbag2 recording (mcap or sqlite3) or a dataset folder. '
                    'Writes report.json, report.md and PNG plots into --out.')
    p.add_argument('bag', nargs='?', help='rosbag2 directory or .mcap/.db3 file (omit with --dataset)')
    p.add_argument('--out', required=True, help='output directory for the report')
    src = p.add_argument_group('dataset folder instead of a bag')
    src.add_argument('--dataset', help='dataset root folder')
    src.add_argument('--layout', default='synthetic', choices=('synthetic', 'kitti', 'cityscapes'))
    src.add_argument('--split', default='test', help='split name or split file (see training docs)')
    model = p.add_argument_group('model')
    model.add_argument('--model', help='ONNX model (default: the bundled model)')
    model.add_argument('--backend', default='auto', choices=('auto', 'tensorrt', 'onnxruntime'))
    model.add_argument('--precision', default='fp32', choices=('fp32', 'fp16'))
    model.add_argument('--prediction-topic', default='',
                       help='evaluate this recorded depth topic (32FC1/16UC1) instead of running a model')
    model.add_argument('--prediction-bag', help='bag holding --prediction-topic (default: BAG), e.g. a '
                                                'dynadepth-replay recording of the live node')
    topics = p.add_argument_group('topics (defaults: the synthetic bag)')
    topics.add_argument('--image-topic', default=DEFAULT_TOPICS['image'])
    topics.add_argument('--camera-info-topic', default=DEFAULT_TOPICS['camera_info'], help="'' for none")
    topics.add_argument('--mask-topic', default=DEFAULT_TOPICS['mask'],
                        help="instance-id image topic; '' to evaluate all pixels only")
    gt = topics.add_mutually_exclusive_group()
    gt.add_argument('--gt-depth-topic', default=DEFAULT_TOPICS['gt_depth'], help='GT depth image topic')
    gt.add_argument('--gt-lidar-topic', default='', help='PointCloud2 topic projected into the camera as GT '
                                                         '(extrinsics from --tf-static-topic)')
    topics.add_argument('--tf-static-topic', default='/tf_static')
    dyn = p.add_argument_group('dynamic region').add_mutually_exclusive_group()
    dyn.add_argument('--moving-ids-from', metavar='DIR',
                     help='sequence folder (dataset layout) whose instances/*.json moving flags define dynamic')
    dyn.add_argument('--dynamic-from-mask', action='store_true',
                     help='dynamic = every instance in the mask (the default for bags)')
    ev = p.add_argument_group('evaluation')
    ev.add_argument('--max-depth', type=float, default=80.0, help='depth cap, metres')
    ev.add_argument('--min-depth', type=float, default=1e-3, help='metres')
    ev.add_argument('--bin-size', type=float, default=10.0, help='distance-bin width, metres')
    ev.add_argument('--slop', type=float, default=0.02, help='stamp pairing tolerance, seconds')
    ev.add_argument('--max-frames', type=int, default=0, help='stop after this many frames (0 = all)')
    ev.add_argument('--samples', type=int, default=4, help='sample strips in samples.png')
    ev.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    if bool(args.bag) == bool(args.dataset):
        raise EvalError('give either a BAG or --dataset DIR (not both)')
    if args.max_depth <= args.min_depth or args.min_depth < 0:
        raise EvalError(f'--min-depth {args.min_depth} / --max-depth {args.max_depth}: need 0 <= min < max')
    if args.bin_size <= 0 or args.slop < 0 or args.max_frames < 0:
        raise EvalError('--bin-size must be > 0, --slop and --max-frames >= 0')
    if args.dataset and (args.prediction_topic or args.gt_lidar_topic):
        raise EvalError('--prediction-topic and --gt-lidar-topic apply to bags, not to --dataset')
    if args.prediction_bag and not args.prediction_topic:
        raise EvalError('--prediction-bag needs --prediction-topic (the recorded depth topic, e.g. /depth)')
    return EvalConfig(
        out=args.out, bag=args.bag, dataset=args.dataset, layout=args.layout, split=args.split,
        image_topic=args.image_topic, camera_info_topic=args.camera_info_topic, mask_topic=args.mask_topic,
        gt_depth_topic=args.gt_depth_topic, gt_lidar_topic=args.gt_lidar_topic, tf_static_topic=args.tf_static_topic,
        prediction_bag=args.prediction_bag, prediction_topic=args.prediction_topic, model=args.model,
        backend=args.backend, precision=args.precision, moving_ids_from=args.moving_ids_from,
        dynamic_from_mask=args.dynamic_from_mask, min_depth=args.min_depth, max_depth=args.max_depth,
        bin_size=args.bin_size, slop=args.slop, max_frames=args.max_frames, samples=args.samples,
        progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except EvalError as exc:
        print(f'dynadepth-eval-bag: error: {exc}', file=sys.stderr)
        return 2
    from dynadepth_ros.eval_report import format_summary
    try:
        report = run(cfg)
    except KeyboardInterrupt:
        print(f'dynadepth-eval-bag: interrupted; partial report in {cfg.out}', file=sys.stderr)
        return 130
    except (BagError, EvalError, LidarProjectionError) as exc:
        print(f'dynadepth-eval-bag: error: {exc}\n(report of what was done: {cfg.out}/report.json)', file=sys.stderr)
        return 1
    print(format_summary(report))
    print(f'report: {Path(cfg.out) / "report.md"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
