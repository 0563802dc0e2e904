"""Approximate-time pairing of depth frames with instance masks, without ever delaying depth (plain Python).

The node publishes depth as soon as it is computed; per-object output needs the mask with the same (or
nearly the same) header stamp, which a segmentation node usually publishes *later*. So pairing runs beside
the depth path: computed depth frames wait here (up to `queue_size` frames or `max_wait` seconds of
arrival time) for their mask, and masks wait (up to `queue_size`) for their depth frame.

Decision rule for a waiting depth frame with stamp t (per-topic stamps are assumed to increase):
  * a mask with stamp exactly t → pair now;
  * once a mask with stamp >= t has arrived, no closer mask can still come: pair with the nearer of the
    last mask before t and the first mask at/after t, if within `slop`, else give up (no mask);
  * when the frame is pushed out of the queue or waited `max_wait`: pair with the best mask within `slop`
    received so far, else give up.
A mask may serve several depth frames (masks slower than depth); each depth frame pairs at most once.

Stamps that jump backwards (a looped bag, a restarted driver, a sim-time reset): when a depth or mask stamp is
older than the newest of its own stream by more than `jump_tolerance` seconds, the old timeline is dropped —
waiting depth frames newer than the jump target are decided now (best mask within slop, else unpaired), newer
masks are discarded — and pairing starts again from the new stamps. Without this an old-timeline mask would
sit after every new frame (so each is "decided" without a mask) and a new mask inserted at the front of a
full queue would be evicted at once. `on_time_jump(stream, stamp_ns, newest_ns)` is called once per jump.

MaskWatch notices masks that never pair, from counters sampled periodically (the node's /diagnostics timer):
masks published on the graph but none received while depth is produced, or masks received but no depth frame
paired with one; either for `timeout_s`.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class PairingStats:
    paired: int = 0
    unpaired: int = 0            # depth frames that got no mask within slop
    masks_received: int = 0
    last_offset_ns: int | None = None
    time_jumps: int = 0          # backwards stamp jumps that restarted pairing
    last_unpaired_offset_ns: int | None = None   # nearest queued mask stamp minus the stamp of the last unpaired frame


@dataclass(order=True)
class _Entry:
    stamp_ns: int
    seq: int
    item: Any = field(compare=False)
    arrived: float = field(compare=False, default=0.0)


class MaskPairer:
    """Pairs depth frames with masks by stamp; see the module docstring for the rule."""

    def __init__(self, queue_size: int = 10, slop_s: float = 0.05, max_wait_s: float = 1.0,
                 jump_tolerance_s: float = 1.0,
                 on_time_jump: Callable[[str, int, int], None] | None = None):
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        if slop_s < 0:
            raise ValueError(f'slop must be >= 0 s, got {slop_s}')
        self.queue_size = int(queue_size)
        self.slop_ns = int(round(slop_s * 1e9))
        self.max_wait_s = float(max_wait_s)
        self.jump_tolerance_ns = int(round(jump_tolerance_s * 1e9))
        self.on_time_jump = on_time_jump
        self._newest: dict[str, int | None] = {'depth': None, 'mask': None}
        self._depth: list[_Entry] = []
        self._masks: list[_Entry] = []
        self._seq = 0
        self.stats = PairingStats()

    def _entry(self, stamp_ns: int, item: Any, now: float | None) -> _Entry:
        self._seq += 1
        return _Entry(int(stamp_ns), self._seq, item, time.monotonic() if now is None else now)

    def add_depth(self, stamp_ns: int, item: Any, now: float | None = None) -> list[tuple[Any, Any]]:
        """Queue a computed depth frame; returns the (depth item, mask item) pairs now decided."""
        out = self._restart_if_jumped('depth', int(stamp_ns))
        bisect.insort(self._depth, self._entry(stamp_ns, item, now))
        return out + self._settle(now)

    def add_mask(self, stamp_ns: int, item: Any, now: float | None = None) -> list[tuple[Any, Any]]:
        """Queue a mask; returns the (depth item, mask item) pairs now decided."""
        self.stats.masks_received += 1
        out = self._restart_if_jumped('mask', int(stamp_ns))
        bisect.insort(self._masks, self._entry(stamp_ns, item, now))
        if len(self._masks) > self.queue_size:
            del self._masks[0]
        return out + self._settle(now)

    def poll(self, now: float | None = None) -> list[tuple[Any, Any]]:
        """Decide frames that waited max_wait (call periodically)."""
        return self._settle(now)

    def _restart_if_jumped(self, stream: str, stamp_ns: int) -> list[tuple[Any, Any]]:
        """Drop the old timeline when `stream` jumped back past jump_tolerance; the pairs that decides."""
        newest = self._newest[stream]
        if newest is None or stamp_ns >= newest - self.jump_tolerance_ns:
            self._newest[stream] = stamp_ns if newest is None else max(newest, stamp_ns)
            return []
        limit = stamp_ns + self.jump_tolerance_ns
        out, keep = [], []
        for d in self._depth:
            if d.stamp_ns <= limit:
                keep.append(d)
                continue
            self._record(d, self._best(d.stamp_ns)[0], out)   # its mask can only come from the old timeline
        self._depth = keep
        self._masks = [m for m in self._masks if m.stamp_ns <= limit]
        self._newest = {'depth': stamp_ns, 'mask': stamp_ns}     # both streams continue on the new timeline
        self.stats.time_jumps += 1
        if self.on_time_jump is not None:
            self.on_time_jump(stream, stamp_ns, newest)
        return out

    def _best(self, t: int) -> tuple[_Entry | None, bool]:
        """(nearest mask within slop or None, whether a mask at/after t exists)."""
        stamps = [m.stamp_ns for m in self._masks]
        i = bisect.bisect_left(stamps, t)
        after = self._masks[i] if i < len(self._masks) else None
        before = self._masks[i - 1] if i > 0 else None
        cands = [m for m in (before, after) if m is not None and abs(m.stamp_ns - t) <= self.slop_ns]
        best = min(cands, key=lambda m: (abs(m.stamp_ns - t), m.stamp_ns)) if cands else None
        return best, after is not None

    def _record(self, d: _Entry, best: _Entry | None, out: list) -> None:
        """Count a depth frame that is settled, and append (depth, mask) to `out` when it has a mask."""
        if best is None:
            self.stats.unpaired += 1
            near = min(self._masks, key=lambda m: abs(m.stamp_ns - d.stamp_ns), default=None)
            self.stats.last_unpaired_offset_ns = None if near is None else near.stamp_ns - d.stamp_ns
        else:
            self.stats.paired += 1
            self.stats.last_offset_ns = best.stamp_ns - d.stamp_ns
            out.append((d.item, best.item))

    def _settle(self, now: float | None) -> list[tuple[Any, Any]]:
        now = time.monotonic() if now is None else now
        out = []
        keep = []
        n_over = max(0, len(self._depth) - self.queue_size)
        for k, d in enumerate(self._depth):
            best, decided = self._best(d.stamp_ns)
            exact = best is not None and best.stamp_ns == d.stamp_ns
            final = k < n_over or now - d.arrived >= self.max_wait_s
            if exact or decided or final:
                self._record(d, best, out)
            else:
                keep.append(d)
        self._depth = keep
        return out

    def clear(self) -> None:
        self._depth.clear()
        self._masks.clear()
        self._newest = {'depth': None, 'mask': None}


NO_MASKS = 'no_masks'
UNPAIRED = 'unpaired'


class MaskWatch:
    """Notices instance masks that never pair with depth (plain Python; times in seconds, monotonic).

    Feed it counters with update() (e.g. once a second); it returns (kind, message) while a problem lasts:
      * NO_MASKS: the mask topic has publishers and depth frames are being produced, but no mask arrived for
        timeout_s (since start, since the publishers appeared, or since the last mask);
      * UNPAIRED: masks keep arriving, but since the first of them after the last successful pairing at least
        `min_frames` depth frames were decided and none paired, for timeout_s.
    """

    def __init__(self, timeout_s: float = 5.0, min_frames: int = 2):
        self.timeout_s = float(timeout_s)
        self.min_frames = int(min_frames)
        self._start: float | None = None
        self._pub_since: float | None = None      # when the mask topic last went from 0 to >0 publishers
        self._masks = 0
        self._mask_at: float | None = None         # last time the mask count grew
        self._frames = 0
        self._depth_at: float | None = None        # last time the depth frame count grew
        self._paired = 0
        self._unpaired = 0
        self._since_pair: float | None = None      # first mask after the last pairing (None: none yet)
        self._unpaired_base = 0                    # unpaired count at _since_pair

    def update(self, now: float, *, publishers: int, masks_received: int, frames_out: int, paired: int,
               unpaired: int, slop_s: float, max_wait_s: float,
               last_offset_ns: int | None = None, topic: str = 'instance_mask') -> tuple[str, str] | None:
        if self._start is None:
            self._start = now
        if publishers > 0 and self._pub_since is None:
            self._pub_since = now
        elif publishers == 0:
            self._pub_since = None
        if masks_received != self._masks:
            self._masks, self._mask_at = masks_received, now
            if self._since_pair is None:
                self._since_pair, self._unpaired_base = now, unpaired
        if frames_out != self._frames:
            self._frames, self._depth_at = frames_out, now
        if paired != self._paired:
            self._paired, self._since_pair = paired, None
        self._unpaired = unpaired
        t = self.timeout_s
        depth_recent = self._depth_at is not None and now - self._depth_at <= t
        if self._pub_since is not None and depth_recent:
            quiet = now - max(self._start, self._pub_since, self._mask_at if self._mask_at is not None else -1e18)
            if quiet >= t:
                never = 'no instance mask received' if self._mask_at is None else 'no instance mask received for ' \
                    f'{quiet:.0f} s'
                return NO_MASKS, (
                    f'{publishers} publisher(s) on {topic} but {never} while depth is produced; likely cause: the '
                    f'DDS transport (masks larger than ~1 MB, or a mask published right after an image by the same '
                    f'process, are dropped between processes with default FastDDS settings: give the publisher the '
                    f'FastDDS profile, docs/node.md "FastDDS transports") or a QoS mismatch (logged as an error); no '
                    f'objects are published')
        masks_recent = self._mask_at is not None and now - self._mask_at <= t
        if masks_recent and self._since_pair is not None and now - self._since_pair >= t:
            lost = unpaired - self._unpaired_base
            if lost >= self.min_frames:
                near = '' if last_offset_ns is None else f'; the nearest mask was {last_offset_ns / 1e9:+.3f} s from ' \
                    f'the depth frame\'s stamp'
                return UNPAIRED, (
                    f'instance masks arrive but none of the last {lost} depth frames paired with one; likely cause: '
                    f'mask stamps not matching the image stamps (mask_slop {slop_s:g} s{near}: the segmenter must '
                    f'copy the camera image header into its mask), or masks arriving more than mask_max_wait '
                    f'({max_wait_s:g} s) after the depth; no objects are published')
        return None
