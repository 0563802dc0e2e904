"""The recordings a run would train on, read once before anything is written, and refused in one line when they
cannot be used: too few frames for a triplet, header stamps that go backwards, a camera_info that does not
describe the image, frames that cannot be decoded, or a camera that never moves.

`inspect_recording(path, choice)` returns what the time split needs (the camera stamps) and what the report says
(frames, rate, duration, distance travelled).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dynadepth_ros.image_codec import ImageFormatError
from dynadepth_ros.recording.bag_reader import (BagError, BagReader, camera_info_K, camera_info_size,
                                                cdr_header_stamp_ns, image_msg_rgb, odometry_pose)
from training.recordings import RecordingError
from training.recordings.survey import TopicChoice

MIN_FRAMES = 3                 # one triplet (t-1, t, t+1)
MIN_TRAVEL_M = 0.2             # odometry: less than this over the whole recording ...
MIN_TURN_DEG = 2.0             # ... and less rotation than this = the camera does not move
MIN_IMAGE_MOTION_PX = 0.25     # without odometry: 90th percentile of the optical flow between frames, px at <= 320 wide
MOTION_PAIRS = 6               # frame pairs the image-motion check looks at


@dataclass
class RecordingFacts:
    """One recording as the time split and the report see it."""

    path: Path
    stamps_ns: np.ndarray                 # int64 [N] camera stamps, sorted, duplicates removed
    size: tuple[int, int]                 # (height, width) of the camera frames
    travel_m: float | None = None         # odometry path length (None without odometry)
    image_motion_px: float | None = None  # without odometry: the image-motion measure
    notes: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return int(self.stamps_ns.size)

    @property
    def start_ns(self) -> int:
        return int(self.stamps_ns[0])

    @property
    def duration_s(self) -> float:
        return float(self.stamps_ns[-1] - self.stamps_ns[0]) * 1e-9

    @property
    def period_s(self) -> float:
        return float(np.median(np.diff(self.stamps_ns))) * 1e-9 if self.frames > 1 else 0.0

    def relative_s(self) -> np.ndarray:
        """float64 [N] seconds after the first frame (the times `path@START-END` windows use)."""
        return (self.stamps_ns - self.stamps_ns[0]) * 1e-9

    def summary(self) -> dict:
        return {'path': str(self.path), 'frames': self.frames, 'duration_s': round(self.duration_s, 3),
                'fps': round(1.0 / self.period_s, 2) if self.period_s > 0 else None,
                'size': list(self.size), 'travel_m': None if self.travel_m is None else round(self.travel_m, 2),
                'image_motion_px': None if self.image_motion_px is None else round(self.image_motion_px, 3)}


def _backwards(stamps: list[int]) -> tuple[int, int] | None:
    """(count, index of the first) of stamps earlier than the one before them, in recorded order."""
    a = np.asarray(stamps, dtype=np.int64)
    back = np.flatnonzero(np.diff(a) < 0)
    return (int(back.size), int(back[0]) + 1) if back.size else None


def _image_motion(frames: list[np.ndarray]) -> float:
    """Median over consecutive pairs of the 90th percentile optical-flow magnitude (px, frames <= 320 wide)."""
    grey = []
    for rgb in frames:
        g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if g.shape[1] > 320:
            g = cv2.resize(g, (320, max(8, round(g.shape[0] * 320 / g.shape[1]))), interpolation=cv2.INTER_AREA)
        grey.append(g)
    values = []
    for a, b in zip(grey[0::2], grey[1::2]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0)
        values.append(float(np.percentile(np.linalg.norm(flow, axis=2), 90)))
    return float(np.median(values)) if values else 0.0


def inspect_recording(path: str | Path, choice: TopicChoice) -> RecordingFacts:
    """Read one recording's camera stamps, first camera_info and frame, odometry (or a few frame pairs) and
    refuse it in one line (RecordingError) when it cannot be trained on."""
    path = Path(path)
    stamps, receive = [], []
    try:
        with BagReader(path) as reader:
            for _topic, _type, t_ns, raw in reader.raw_messages([choice.image]):
                try:
                    stamps.append(cdr_header_stamp_ns(raw))
                except ValueError as exc:
                    raise RecordingError(f'{path}: a message on {choice.image} has no readable header ({exc}); '
                                         f'the recording is damaged: re-record it') from None
                receive.append(t_ns)
            if len(stamps) < MIN_FRAMES:
                raise RecordingError(f'{path}: only {len(stamps)} camera frame(s) on {choice.image}; a training '
                                     f'triplet needs {MIN_FRAMES} consecutive frames: record longer')
            if not any(stamps):
                stamps = list(receive)      # the importer does the same for an unstamped camera
            back = _backwards(stamps)
            if back:
                n, i = back
                raise RecordingError(
                    f'{path}: header stamps on {choice.image} go backwards {n} time(s) (first at message {i}: '
                    f'{(stamps[i] - stamps[0]) * 1e-9:.3f} s after the first frame, following '
                    f'{(stamps[i - 1] - stamps[0]) * 1e-9:.3f} s): the camera clock jumped or the driver reorders '
                    f'frames; fix the stamps, or cut the recording at the jump and pass the parts as separate bags')
            unique = np.unique(np.asarray(stamps, dtype=np.int64))
            if unique.size < MIN_FRAMES:
                raise RecordingError(f'{path}: only {unique.size} distinct camera stamps on {choice.image}; a '
                                     f'training triplet needs {MIN_FRAMES}: record longer or fix the stamps')
            # camera_info and the first frame agree
            info = next((m for _t, _n, m in reader.messages([choice.camera_info])), None)
            if info is None:
                raise RecordingError(f'{path}: no message on {choice.camera_info}: record the camera_info with the '
                                     f'image')
            try:
                camera_info_K(info)
                ih, iw = camera_info_size(info)
            except ValueError as exc:
                raise RecordingError(f'{path}: {choice.camera_info}: {exc} Run camera_calibration and record the '
                                     f'calibrated camera_info') from None
            n = len(stamps)
            picks = sorted({int(round(k)) for k in np.linspace(0, n - 2, min(MOTION_PAIRS, n - 1))})
            wanted = {p for k in picks for p in (k, k + 1)} if not choice.odom else {0}
            frames: dict[int, np.ndarray] = {}
            for k, (_t, _n, msg) in enumerate(reader.messages([choice.image])):
                if k in wanted:
                    try:
                        frames[k] = image_msg_rgb(msg)
                    except ImageFormatError as exc:
                        raise RecordingError(f'{path}: {choice.image}: {exc}; record rgb8/bgr8/mono8 Image or '
                                             f'jpeg/png CompressedImage frames') from None
                if k >= max(wanted):
                    break
            size = frames[0].shape[:2]
            if (ih, iw) != size:
                raise RecordingError(f'{path}: {choice.camera_info} describes a {iw}x{ih} image but {choice.image} '
                                     f'frames are {size[1]}x{size[0]}: pair the image with its own camera_info '
                                     f'(--camera-info-topic)')
            facts = RecordingFacts(path, unique, size)
            if choice.odom:
                positions, rotations = [], []
                for _t, _n, msg in reader.messages([choice.odom]):
                    T = odometry_pose(msg)
                    positions.append(T[:3, 3])
                    rotations.append(T[:3, :3])
                if len(positions) < 2:
                    raise RecordingError(f'{path}: {len(positions)} odometry message(s) on {choice.odom}; pose '
                                         f'supervision needs odometry through the recording (or pass --no-odom)')
                p = np.asarray(positions)
                facts.travel_m = float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum())
                R = rotations[0].T @ np.asarray(rotations)
                cos = np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1)
                turn = float(np.degrees(np.arccos(cos)).max())
                if facts.travel_m < MIN_TRAVEL_M and turn < MIN_TURN_DEG:
                    raise RecordingError(
                        f'{path}: no camera motion: the odometry on {choice.odom} travels {facts.travel_m:.2f} m and '
                        f'turns {turn:.1f} deg in {facts.duration_s:.1f} s; self-supervised depth learns from the '
                        f'camera moving through the scene: record while driving')
            else:
                facts.image_motion_px = _image_motion([frames[k] for p in picks for k in (p, p + 1)])
                if facts.image_motion_px < MIN_IMAGE_MOTION_PX:
                    raise RecordingError(
                        f'{path}: no camera motion: consecutive frames of {choice.image} move '
                        f'{facts.image_motion_px:.2f} px (90th percentile of the optical flow, under '
                        f'{MIN_IMAGE_MOTION_PX} px); self-supervised depth learns from the camera moving through '
                        f'the scene: record while driving')
    except BagError as exc:
        raise RecordingError(str(exc).replace('\n', ' ')) from None
    return facts
