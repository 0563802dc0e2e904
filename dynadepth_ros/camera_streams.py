"""Per-camera state of the depth node and the batch schedule of its worker (plain Python, no rclpy).

One node serves one camera (`cameras` empty: topics `image`, `depth`, … as always) or N cameras (`cameras:
['front', 'left']`: topics `front/image`, `front/depth`, …) with one model and one backend. Each camera is a
`CameraStream`: its own latest-frame slot, pending masks, camera_info, mask pairing, publishers, counters and
latency windows. The worker takes the newest pending frame of every camera at once (`take_batch`) and runs
them through the backend as one batch, so a camera that sends faster than the backend can only replace its
own pending frame (counted as dropped for that camera) and never delays or starves another camera: every
camera with a pending frame is in the next batch. When the batch is capped below the number of cameras
(`max_batch`), the cameras are served round robin from where the previous batch stopped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from dynadepth_ros.latency import RollingWindow

# a ROS name token: what may stand between two slashes of a topic name
_TOKEN = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


def validate_camera_names(names) -> list[str]:
    """The camera names as a list; ValueError naming the problem for an empty, duplicate or non-token name.

    A name may contain '/' between tokens (e.g. 'rig/front'), like a relative ROS namespace."""
    out = [str(n) for n in names]
    seen = set()
    for n in out:
        if not n or not all(_TOKEN.match(t) for t in n.split('/')):
            raise ValueError(f'camera name {n!r} is not a relative ROS namespace (letters, digits, _ and /, not '
                             f'starting with a digit or /)')
        if n in seen:
            raise ValueError(f'camera {n!r} is listed twice in cameras')
        seen.add(n)
    return out


def new_stats() -> dict:
    """A camera's counters (all zero)."""
    return dict(dropped=0, bad_frames=0, bad_masks=0, masks_dropped=0, masks_resized=0, frames_out=0,
                objects_out=0, colored_out=0, camera_info_in=0, camera_info_errors=0, masks_in=0, points_out=0, errors=0)


@dataclass
class CameraStream:
    """One camera of the node. `name` '' is the single-camera node (no topic prefix)."""

    name: str = ''
    slot: tuple | None = None                 # (kind, msg): the latest frame the worker has not taken yet
    masks: list = field(default_factory=list)  # unprocessed mask messages
    camera_info: object | None = None
    camera_info_note: str = 'no camera_info received'
    p_zero_warned: bool = False
    pairer: object | None = None               # mask_sync.MaskPairer while active
    mask_sub: object | None = None
    mask_watch: object | None = None           # mask_sync.MaskWatch while active
    mask_warned: set = field(default_factory=set)
    pubs: dict = field(default_factory=dict)
    stats: dict = field(default_factory=new_stats)
    last_bad: str = ''
    bad_window: int = 0                         # bad_frames at the previous diagnostics message
    errors_window: int = 0                      # stats['errors'] at the previous diagnostics message
    in_rate: RollingWindow = field(default_factory=lambda: RollingWindow(5.0))
    out_rate: RollingWindow = field(default_factory=lambda: RollingWindow(5.0))
    latency: RollingWindow = field(default_factory=lambda: RollingWindow(5.0))
    inference: RollingWindow = field(default_factory=lambda: RollingWindow(5.0))
    overhead: RollingWindow = field(default_factory=lambda: RollingWindow(5.0))   # stamp→publish - inference

    def topic(self, relative: str) -> str:
        """The camera's relative topic name: `relative` under the camera's namespace (unchanged for '')."""
        return f'{self.name}/{relative}' if self.name else relative

    @property
    def label(self) -> str:
        return self.name or 'camera'

    def store_frame(self, kind: str, msg) -> bool:
        """Keep `msg` as the pending frame (latest wins); True when it replaced one the worker had not taken
        (that one is counted as dropped). Call with the node's lock held."""
        dropped = self.slot is not None
        if dropped:
            self.stats['dropped'] += 1
        self.slot = (kind, msg)
        return dropped


def take_batch(streams: list[CameraStream], max_batch: int, start: int = 0) -> tuple[list[tuple], int]:
    """([(stream, kind, msg)] of at most max_batch cameras with a pending frame, next start index).

    Cameras are visited round robin from `start`, so with fewer batch places than waiting cameras the ones
    left out come first next time. The taken slots are emptied. Call with the node's lock held."""
    n = len(streams)
    taken: list[tuple] = []
    if n == 0:
        return taken, 0
    nxt = start % n
    for k in range(n):
        i = (start + k) % n
        s = streams[i]
        if s.slot is None:
            continue
        if len(taken) >= max(1, int(max_batch)):
            break
        kind, msg = s.slot
        s.slot = None
        taken.append((s, kind, msg))
        nxt = (i + 1) % n
    return taken, nxt
