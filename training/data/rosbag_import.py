"""Import rosbag2 recordings (mcap or sqlite3) into the dataset layout, once, for training.

    import_bags([Path('run1'), Path('run2.mcap')], Path('data/robot'), '/camera/image_raw',
                '/camera/camera_info', mask_topic='/camera/instance_mask', odom_topic='/odom')

writes `<out>/<split>/<bag name>[_NN]/` in the design §6 layout, which the synthetic-layout reader
(dynadepth_ros.datasets.synthetic) then serves:

    calib.json   K from the first camera_info, image size, frame rate from the stamps
    rgb/         camera frames (Image rgb8/bgr8/rgba8/bgra8/mono8 or CompressedImage jpeg/png)
    mask/        instance ids (16-bit PNG) when a mask topic is given; paired to frames by header stamp
    depth/       GT depth (.npy metres, 0 invalid) only when a depth topic is given
    poses.txt    T_world_cam = T_world_base (odometry, interpolated to the frame stamps) · T_base_cam
                 (/tf_static, from the odometry child frame to the camera frame; identity with a
                 warning when the bag lacks it); 12 `nan`s per frame without odometry
    stamps.txt   frame header stamps, seconds
    import.json  where the sequence came from (bag, topics, options)

Frames are ordered by header stamp (receive time if the camera leaves stamps at zero), every n-th
is kept, frames without a matching mask (or depth) are dropped, and the recording is cut into
separate sequences wherever consecutive kept frames are more than 1.5 frame periods apart, so
training triplets never span a dropped stretch. Re-running with the same bag and options does
nothing (an index `<out>/<split>/.import_<name>.json` records what was written).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from dynadepth_ros.atomic_files import write_text_atomic
from dynadepth_ros.datasets.layout import Calib
from dynadepth_ros.image_codec import ImageFormatError
from dynadepth_ros.recording.bag_reader import (BagError, BagReader, camera_info_K, image_msg_depth, image_msg_labels,
                                                image_msg_rgb, odometry_pose, stamp_ns)
from dynadepth_ros.recording.lidar_projection import LidarProjectionError, find_transform
from dynadepth_ros.recording.stamp_pairing import pair_by_stamp
from training.data.pose_interpolation import interpolate_poses

log = logging.getLogger(__name__)

IMPORT_FORMAT = 1
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
LABEL_TYPES = ('sensor_msgs/msg/Image',)
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
ODOM_TYPE = 'nav_msgs/msg/Odometry'
MAX_GAP_PERIODS = 1.5
MIN_SEQUENCE_FRAMES = 3


class RosbagImportError(RuntimeError):
    """A recording that cannot be imported as asked; the message names the bag and what to do."""


@dataclass
class _Topic:
    """Header stamps (ns) of one topic's messages, by ordinal in bag order."""

    stamps: list[int] = field(default_factory=list)
    receive: list[int] = field(default_factory=list)
    frame_id: str = ''


@dataclass
class _Scan:
    image: _Topic
    mask: _Topic | None
    depth: _Topic | None
    K: np.ndarray | None = None
    info_size: tuple[int, int] | None = None
    info_frame: str = ''
    distortion: list[float] = field(default_factory=list)
    k_changes: int = 0
    odom_stamps: list[int] = field(default_factory=list)
    odom_poses: list[np.ndarray] = field(default_factory=list)
    odom_child: str = ''
    odom_frame: str = ''


@dataclass
class _Segment:
    name: str
    image_ordinals: list[int]
    mask_ordinals: list[int] | None
    depth_ordinals: list[int] | None
    stamps_ns: list[int]


# ---- naming and caching ---------------------------------------------------------------------
def bag_sequence_name(bag: Path) -> str:
    """A folder-safe sequence name for a bag: the directory (or file stem); `<seq>/bag` → `<seq>`."""
    bag = Path(bag)
    name = bag.stem if bag.is_file() else bag.name
    if name in ('bag', 'rosbag', '') and bag.parent.name:
        name = bag.parent.name if bag.is_dir() else bag.parent.name + '_' + name
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('._') or 'bag'


def _unique_names(bags: list[Path]) -> list[str]:
    names, seen = [], {}
    for b in bags:
        base = bag_sequence_name(b)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f'{base}_{seen[base]}')
    return names


def _bag_files(bag: Path) -> list[Path]:
    return sorted(p for p in bag.iterdir() if p.is_file()) if bag.is_dir() else [bag]


def _signature(bag: Path, options: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({'format': IMPORT_FORMAT, 'bag': str(bag.resolve()), **options}, sort_keys=True).encode())
    for p in _bag_files(bag):
        st = p.stat()
        h.update(f'{p.name}:{st.st_size}:{st.st_mtime_ns};'.encode())
    return h.hexdigest()[:16]


_WINDOW = re.compile(r'^(?P<start>\d+(?:\.\d*)?)?-(?P<end>\d+(?:\.\d*)?)?$')


def parse_bag_entry(entry: str) -> tuple[Path, tuple[float | None, float | None] | None]:
    """`run1/bag` → (path, None): the whole recording; `run1/bag@12.5-60` → (path, (12.5, 60.0)): the frames
    from 12.5 s up to (not including) 60 s after its first camera frame; `@-60` and `@12.5-` leave one end open.
    A suffix that is not such a window is part of the path."""
    text = str(entry)
    head, sep, tail = text.rpartition('@')
    m = _WINDOW.match(tail) if sep else None
    if not m or not (m['start'] or m['end']):
        return Path(text), None
    start = float(m['start']) if m['start'] else None
    end = float(m['end']) if m['end'] else None
    if start is not None and end is not None and end <= start:
        raise ValueError(f'{entry}: the window ends ({end:g} s) before it starts ({start:g} s)')
    return Path(head), (start, end)


def format_window(window: tuple[float | None, float | None]) -> str:
    """(12.5, 60.0) → '12.5-60' (the form parse_bag_entry reads after '@')."""
    def num(v):
        return '' if v is None else f'{v:.4f}'.rstrip('0').rstrip('.')
    return f'{num(window[0])}-{num(window[1])}'


def bag_entry(path: str | Path, window: tuple[float | None, float | None] | None = None) -> str:
    """The config entry of a recording or of a stretch of it (inverse of parse_bag_entry)."""
    return str(path) if window is None else f'{path}@{format_window(window)}'


# ---- pass 1: stamps, calibration, odometry --------------------------------------------------
def _check_types(reader: BagReader, topics: dict[str, tuple[str, tuple[str, ...]]]) -> None:
    have = reader.topics
    for role, (topic, allowed) in topics.items():
        msgtype = have[topic][0]
        if msgtype not in allowed:
            raise RosbagImportError(f'bag {reader.path}: {role} topic {topic} carries {msgtype}; expected '
                                    f'{" or ".join(allowed)}')
        if have[topic][1] == 0:
            raise RosbagImportError(f'bag {reader.path}: {role} topic {topic} has no messages')


def _scan(reader: BagReader, image_topic, camera_info_topic, mask_topic, odom_topic, depth_topic) -> _Scan:
    scan = _Scan(image=_Topic(), mask=_Topic() if mask_topic else None, depth=_Topic() if depth_topic else None)
    by_topic = {image_topic: scan.image}
    if mask_topic:
        by_topic[mask_topic] = scan.mask
    if depth_topic:
        by_topic[depth_topic] = scan.depth
    topics = [t for t in (image_topic, camera_info_topic, mask_topic, odom_topic, depth_topic) if t]
    for topic, t_ns, msg in reader.messages(topics):
        if topic in by_topic:
            rec = by_topic[topic]
            rec.stamps.append(stamp_ns(msg))
            rec.receive.append(t_ns)
            rec.frame_id = rec.frame_id or msg.header.frame_id.lstrip('/')
        if topic == camera_info_topic:
            if scan.K is None:
                try:
                    scan.K = camera_info_K(msg)
                except ValueError as exc:
                    raise RosbagImportError(f'bag {reader.path}: {camera_info_topic}: {exc}') from None
                scan.info_size = (int(msg.height), int(msg.width))
                scan.info_frame = msg.header.frame_id.lstrip('/')
                scan.distortion = [float(v) for v in np.asarray(msg.d).reshape(-1)]
            elif not np.allclose(np.asarray(msg.k, dtype=np.float64).reshape(3, 3), scan.K):
                scan.k_changes += 1
        if odom_topic and topic == odom_topic:
            scan.odom_stamps.append(stamp_ns(msg))
            scan.odom_poses.append(odometry_pose(msg))
            scan.odom_child = scan.odom_child or msg.child_frame_id.lstrip('/')
            scan.odom_frame = scan.odom_frame or msg.header.frame_id.lstrip('/')
    if scan.K is None:
        raise RosbagImportError(f'bag {reader.path}: no camera_info message on {camera_info_topic}')
    return scan


def _use_receive_time_if_unstamped(scan: _Scan, bag: Path) -> None:
    if scan.image.stamps and not any(scan.image.stamps):
        log.warning('bag %s: camera images have zero header stamps; using bag receive times instead', bag)
        for rec in (scan.image, scan.mask, scan.depth):
            if rec is not None:
                rec.stamps = list(rec.receive)
        if scan.odom_stamps and not any(scan.odom_stamps):
            raise RosbagImportError(f'bag {bag}: odometry has zero header stamps too; cannot align it to frames')


def _pair(kept: list[int], stamps: np.ndarray, other: _Topic, tol_ns: int, what: str, bag: Path) -> dict[int, int]:
    """{image ordinal: other ordinal} for kept images that have a message of `other` within tol_ns."""
    pairing = pair_by_stamp(stamps[kept], np.asarray(other.stamps, np.int64), tol_ns)
    if pairing.unmatched_a:
        log.warning('bag %s: %d of %d frames have no %s within %.1f ms of their stamp; they are left out',
                    bag, len(pairing.unmatched_a), len(kept), what, tol_ns / 1e6)
    return {kept[ia]: ib for ia, ib in pairing.pairs}


def _plan(scan: _Scan, every_nth: int, name: str, pair_tolerance_s: float | None, bag: Path,
          window: tuple[float | None, float | None] | None = None) -> list[_Segment]:
    stamps = np.asarray(scan.image.stamps, dtype=np.int64)
    order = np.argsort(stamps, kind='stable')
    unique: list[int] = []
    for o in order:
        if unique and stamps[o] == stamps[unique[-1]]:
            continue
        unique.append(int(o))
    if len(unique) < len(order):
        log.warning('bag %s: %d camera frames repeat an earlier stamp; they are left out', bag,
                    len(order) - len(unique))
    if len(unique) < MIN_SEQUENCE_FRAMES:
        raise RosbagImportError(f'bag {bag}: only {len(unique)} camera frames; at least {MIN_SEQUENCE_FRAMES} '
                                f'are needed for one training triplet')
    raw_period = float(np.median(np.diff(stamps[unique])))
    if window is not None:  # seconds after the recording's first camera frame, [start, end)
        rel = (stamps[unique] - stamps[unique[0]]) * 1e-9
        start, end = window
        inside = (rel >= (start if start is not None else -np.inf)) & (rel < (end if end is not None else np.inf))
        unique = [o for o, ok in zip(unique, inside) if ok]
        if len(unique) < MIN_SEQUENCE_FRAMES:
            raise RosbagImportError(f'bag {bag}: only {len(unique)} camera frames between {format_window(window)} '
                                    f's after its first frame; at least {MIN_SEQUENCE_FRAMES} are needed for one '
                                    f'training triplet')
    tol_ns = int(pair_tolerance_s * 1e9) if pair_tolerance_s is not None else max(int(0.25 * raw_period), 1_000_000)
    masks = _pair(unique, stamps, scan.mask, tol_ns, 'instance mask', bag) if scan.mask is not None else None
    depths = _pair(unique, stamps, scan.depth, tol_ns, 'depth image', bag) if scan.depth is not None else None
    usable = [o for o in unique if (masks is None or o in masks) and (depths is None or o in depths)]
    # cut at gaps (dropped or unpaired frames), then keep every n-th frame of each evenly spaced run
    runs: list[list[int]] = []
    current: list[int] = []
    for o in usable:
        if current and stamps[o] - stamps[current[-1]] > MAX_GAP_PERIODS * raw_period:
            runs.append(current)
            current = []
        current.append(o)
    if current:
        runs.append(current)
    runs = [r[::every_nth] for r in runs]
    short = [r for r in runs if len(r) < MIN_SEQUENCE_FRAMES]
    runs = [r for r in runs if len(r) >= MIN_SEQUENCE_FRAMES]
    if len(runs) > 1 or short:
        log.warning('bag %s: frame gaps longer than %.1f periods cut the recording into %d sequences%s', bag,
                    MAX_GAP_PERIODS, len(runs), f' ({len(short)} pieces under {MIN_SEQUENCE_FRAMES} frames '
                    f'(after every_nth={every_nth}) dropped)' if short else '')
    if not runs:
        raise RosbagImportError(f'bag {bag}: no stretch of {MIN_SEQUENCE_FRAMES} evenly spaced frames remains after '
                                f'mask/depth pairing and every_nth={every_nth}; nothing to train on')
    segments = []
    for k, run in enumerate(runs):
        segments.append(_Segment(name=name if len(runs) == 1 else f'{name}_{k:02d}', image_ordinals=run,
                                 mask_ordinals=[masks[o] for o in run] if masks is not None else None,
                                 depth_ordinals=[depths[o] for o in run] if depths is not None else None,
                                 stamps_ns=[int(stamps[o]) for o in run]))
    return segments


def _camera_extrinsic(reader: BagReader, scan: _Scan, tf_topic: str) -> np.ndarray:
    """T_base_cam from /tf_static (base = odometry child frame, cam = camera frame); identity if unknown."""
    cam = scan.info_frame or scan.image.frame_id
    base = scan.odom_child
    if not base:
        log.warning('bag %s: odometry has no child_frame_id; assuming the camera frame moves like the odometry '
                    'frame (identity extrinsic)', reader.path)
        return np.eye(4)
    try:
        return find_transform(reader.static_transforms(tf_topic), base, cam)
    except LidarProjectionError as exc:
        log.warning('bag %s: %s. Using an identity %s→%s extrinsic: distances travelled stay right but camera '
                    'rotation is wrong; record %s to fix it', reader.path, exc, base, cam or '?', tf_topic)
        return np.eye(4)


def _poses(reader: BagReader, scan: _Scan, segment: _Segment, T_base_cam: np.ndarray | None) -> np.ndarray:
    """float64 [N,4,4] T_world_cam per frame, NaN where unknown."""
    n = len(segment.stamps_ns)
    out = np.full((n, 4, 4), np.nan)
    if T_base_cam is None or not scan.odom_stamps:
        return out
    origin = min(scan.odom_stamps)  # seconds relative to it keep ns precision in float64
    t = (np.asarray(scan.odom_stamps, dtype=np.int64) - origin) * 1e-9
    query = (np.asarray(segment.stamps_ns, dtype=np.int64) - origin) * 1e-9
    period = float(np.median(np.diff(np.sort(t)))) if t.size > 1 else 0.0
    poses = interpolate_poses(t, np.asarray(scan.odom_poses), query, tolerance_s=0.5 * period)
    missing = 0
    for i, T in enumerate(poses):
        if T is None:
            missing += 1
        else:
            out[i] = T @ T_base_cam
    if missing:
        log.warning('bag %s: %d of %d frames of %s lie outside the odometry time range; their poses are unknown',
                    reader.path, missing, n, segment.name)
    return out


# ---- pass 2: write ---------------------------------------------------------------------------
def _write_segments(reader: BagReader, scan: _Scan, segments: list[_Segment], split_dir: Path, topics: dict,
                    progress: bool) -> tuple[dict[str, Path], tuple[int, int]]:
    """Decode and write every planned frame into `.<name>.partial/` folders; returns (name → partial dir, (H, W))."""
    where: dict[tuple[str, int], tuple[Path, int]] = {}
    partial = {}
    for seg in segments:
        d = split_dir / f'.{seg.name}.partial'
        if d.exists():
            shutil.rmtree(d)
        (d / 'rgb').mkdir(parents=True)
        partial[seg.name] = d
        for j, o in enumerate(seg.image_ordinals):
            where[('image', o)] = (d, j)
        if seg.mask_ordinals is not None:
            (d / 'mask').mkdir()
            for j, o in enumerate(seg.mask_ordinals):
                where[('mask', o)] = (d, j)
        if seg.depth_ordinals is not None:
            (d / 'depth').mkdir()
            for j, o in enumerate(seg.depth_ordinals):
                where[('depth', o)] = (d, j)
    role_of = {topic: role for role, topic in topics.items() if topic}
    counters = {role: -1 for role in role_of.values()}
    size = None
    total = sum(reader.topics[t][1] for t in role_of)
    bar = tqdm(total=total, desc=f'import {reader.path.name}', unit='msg', disable=not progress, leave=False)
    written = 0
    for topic, _t, msg in reader.messages(list(role_of)):
        bar.update(1)
        role = role_of[topic]
        counters[role] += 1
        target = where.get((role, counters[role]))
        if target is None:
            continue
        d, j = target
        try:
            if role == 'image':
                rgb = image_msg_rgb(msg)
                if size is None:
                    size = rgb.shape[:2]
                    ih, iw = scan.info_size
                    if (ih, iw) != (0, 0) and (ih, iw) != size:
                        raise RosbagImportError(f'bag {reader.path}: camera_info describes a {iw}x{ih} image but '
                                                f'{topic} frames are {size[1]}x{size[0]}; record the camera_info '
                                                f'that belongs to this image stream')
                elif rgb.shape[:2] != size:
                    raise RosbagImportError(f'bag {reader.path}: {topic} changes size from {size[1]}x{size[0]} to '
                                            f'{rgb.shape[1]}x{rgb.shape[0]}; import the parts separately')
                cv2.imwrite(str(d / 'rgb' / f'{j:06d}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_PNG_COMPRESSION, 1])
            elif role == 'mask':
                labels = image_msg_labels(msg)
                if labels.min() < 0 or labels.max() > 65535:
                    raise RosbagImportError(f'bag {reader.path}: {topic} has instance ids outside 0..65535 '
                                            f'({labels.min()}..{labels.max()}); the layout stores 16-bit ids')
                cv2.imwrite(str(d / 'mask' / f'{j:06d}.png'), labels.astype(np.uint16),
                            [cv2.IMWRITE_PNG_COMPRESSION, 1])
            else:
                depth = image_msg_depth(msg)
                np.save(d / 'depth' / f'{j:06d}.npy', np.where(np.isfinite(depth), depth, 0.0).astype(np.float32))
        except ImageFormatError as exc:
            raise RosbagImportError(f'bag {reader.path}: {topic}: {exc}') from None
        written += 1
    bar.close()
    if written != len(where):
        raise RosbagImportError(f'bag {reader.path}: wrote {written} of {len(where)} planned messages; the bag '
                                f'changed while importing or is damaged')
    for seg in segments:  # masks and depth must match the image size
        d = partial[seg.name]
        for sub, reader_fn in (('mask', lambda p: cv2.imread(str(p), cv2.IMREAD_UNCHANGED)), ('depth', np.load)):
            if (d / sub).is_dir():
                first = sorted((d / sub).iterdir())[0]
                shape = reader_fn(first).shape[:2]
                if shape != size:
                    raise RosbagImportError(f'bag {reader.path}: {topics[sub]} is {shape[1]}x{shape[0]} but the '
                                            f'camera image is {size[1]}x{size[0]}; masks/depth must be pixel-aligned '
                                            f'with the image')
    return partial, size


# ---- public API -----------------------------------------------------------------------------
def import_bag(bag: Path, out: Path, name: str, image_topic: str, camera_info_topic: str, mask_topic: str | None = None,
               odom_topic: str | None = None, every_nth: int = 1, depth_topic: str | None = None,
               split: str = 'train', tf_topic: str = '/tf_static', pair_tolerance_s: float | None = None,
               progress: bool = True, window: tuple[float | None, float | None] | None = None) -> list[Path]:
    """Import one bag as sequence(s) `<out>/<split>/<name>[_NN]`; returns the sequence directories.
    window: (start, end) seconds after the bag's first camera frame (either None = open): only those frames."""
    bag, out = Path(bag), Path(out)
    if every_nth < 1:
        raise ValueError(f'every_nth must be >= 1, got {every_nth}')
    if split not in ('train', 'val', 'test'):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    split_dir = out / split
    options = {'image_topic': image_topic, 'camera_info_topic': camera_info_topic, 'mask_topic': mask_topic,
               'odom_topic': odom_topic, 'depth_topic': depth_topic, 'every_nth': every_nth, 'tf_topic': tf_topic,
               'pair_tolerance_s': pair_tolerance_s}
    if window is not None:   # only then, so the signatures of whole-bag imports made before stay valid
        options['window'] = list(window)
    if not bag.exists():
        raise BagError(f'bag {bag} does not exist; pass a rosbag2 directory or a .mcap/.db3 file')
    signature = _signature(bag, options)
    index_path = split_dir / f'.import_{name}.json'
    old = json.loads(index_path.read_text()) if index_path.is_file() else None
    if old and old.get('signature') == signature and all((split_dir / s).is_dir() for s in old['sequences']):
        log.info('bag %s already imported as %s; skipping', bag, ', '.join(old['sequences']))
        return [split_dir / s for s in old['sequences']]
    split_dir.mkdir(parents=True, exist_ok=True)
    with BagReader(bag) as reader:
        reader.require([t for t in (image_topic, camera_info_topic, mask_topic, odom_topic, depth_topic) if t])
        checks = {'camera image': (image_topic, IMAGE_TYPES), 'camera_info': (camera_info_topic, (CAMERA_INFO_TYPE,))}
        if mask_topic:
            checks['instance mask'] = (mask_topic, LABEL_TYPES)
        if depth_topic:
            checks['depth'] = (depth_topic, LABEL_TYPES)
        if odom_topic:
            checks['odometry'] = (odom_topic, (ODOM_TYPE,))
        _check_types(reader, checks)
        scan = _scan(reader, image_topic, camera_info_topic, mask_topic, odom_topic, depth_topic)
        _use_receive_time_if_unstamped(scan, bag)
        if scan.k_changes:
            log.warning('bag %s: camera_info K changes in %d messages; using the first', bag, scan.k_changes)
        if any(abs(v) > 1e-6 for v in scan.distortion):
            log.warning('bag %s: camera_info has distortion %s; frames are used as recorded (the model assumes a '
                        'pinhole camera), record the rectified image (image_rect) for best results', bag,
                        [round(v, 4) for v in scan.distortion[:5]])
        if odom_topic:
            T_base_cam = _camera_extrinsic(reader, scan, tf_topic)
        else:
            T_base_cam = None
            log.warning('bag %s: no odometry topic given; poses are unknown, so training on it cannot learn '
                        'metric scale', bag)
        segments = _plan(scan, every_nth, name, pair_tolerance_s, bag, window)
        try:
            partial, (h, w) = _write_segments(reader, scan, segments, split_dir,
                                              {'image': image_topic, 'mask': mask_topic, 'depth': depth_topic},
                                              progress)
        except BaseException:
            for seg in segments:
                shutil.rmtree(split_dir / f'.{seg.name}.partial', ignore_errors=True)
            raise
        for seg in segments:
            d = partial[seg.name]
            stamps = np.asarray(seg.stamps_ns, dtype=np.float64) * 1e-9
            fps = 1.0 / float(np.median(np.diff(stamps)))
            write_text_atomic(d / 'calib.json', json.dumps(Calib(K=scan.K, height=h, width=w, fps=fps).to_json(),
                                                            indent=1))
            poses = _poses(reader, scan, seg, T_base_cam)
            lines = [' '.join('nan' if not np.isfinite(v) else f'{v:.9g}' for v in P[:3, :4].reshape(-1))
                     for P in poses]
            (d / 'poses.txt').write_text('\n'.join(lines) + '\n')
            (d / 'stamps.txt').write_text('\n'.join(f'{t:.9f}' for t in stamps) + '\n')
            record = {'format': IMPORT_FORMAT, 'bag': str(bag.resolve()), 'signature': signature, **options,
                      'frames': len(seg.stamps_ns), 'base_frame': scan.odom_child, 'camera_frame':
                      scan.info_frame or scan.image.frame_id}
            (d / 'import.json').write_text(json.dumps(record, indent=1))
    # publish: drop what an earlier import of this bag left, then rename the complete folders into place
    if old:
        for s in old.get('sequences', []):
            if (split_dir / s).is_dir():
                shutil.rmtree(split_dir / s)
    final = []
    for seg in segments:
        dst = split_dir / seg.name
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(partial[seg.name], dst)
        final.append(dst)
    write_text_atomic(index_path, json.dumps({'signature': signature, 'bag': str(bag.resolve()),
                                               'sequences': [s.name for s in segments]}, indent=1))
    log.info('imported %s: %s (%d frames)', bag, ', '.join(s.name for s in segments),
             sum(len(s.stamps_ns) for s in segments))
    return final


def import_bags(bags: list[Path], out: Path, image_topic: str, camera_info_topic: str, mask_topic: str | None = None,
                odom_topic: str | None = None, every_nth: int = 1, *, depth_topic: str | None = None,
                split: str = 'train', tf_topic: str = '/tf_static', pair_tolerance_s: float | None = None,
                progress: bool = True, windows: list | None = None) -> list[Path]:
    """Import rosbag2 recordings into `<out>/<split>/` (cached: unchanged bags are skipped).

    bags: rosbag2 directories or .mcap/.db3 files. image_topic: Image or CompressedImage.
    camera_info_topic: its CameraInfo. mask_topic: optional instance-id Image (0 = none).
    odom_topic: optional nav_msgs/Odometry (gives poses, hence metric scale). depth_topic:
    optional GT depth Image (32FC1 m or 16UC1 mm). every_nth: keep every n-th camera frame.
    pair_tolerance_s: mask/depth ↔ image stamp tolerance (default a quarter frame period).
    windows: per bag None (all of it) or (start, end) seconds after its first camera frame (parse_bag_entry).
    Returns the sequence directories written (or found already imported).
    """
    bags = [Path(b) for b in bags]
    if not bags:
        raise ValueError('import_bags needs at least one bag')
    windows = list(windows) if windows is not None else [None] * len(bags)
    if len(windows) != len(bags):
        raise ValueError(f'{len(windows)} windows for {len(bags)} bags')
    out_paths = []
    for bag, name, window in zip(bags, _unique_names(bags), windows):
        out_paths.extend(import_bag(bag, Path(out), name, image_topic, camera_info_topic, mask_topic, odom_topic,
                                    every_nth, depth_topic, split, tf_topic, pair_tolerance_s, progress,
                                    window=window))
    return out_paths
