"""Train / val / test by time, never by shuffled frames.

Recordings are ordered by their first camera stamp. With three or more, whole recordings go to a split: the
latest ones to test until they hold `test_fraction` of the frames (at least one recording; one more only while
the split stays under twice the fraction), the ones before them to val likewise, the rest to train. With one or two recordings they are laid end to end and cut at
1 - val - test and 1 - test of the frames; a cut inside a recording makes stretches of it (`bag@START-END`,
seconds after its first frame) and leaves `guard` frames out on each side of the cut, so no two neighbouring
frames (and no triplet) straddle two splits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.data.rosbag_import import bag_entry
from training.recordings import RecordingError
from training.recordings.checks import MIN_FRAMES, RecordingFacts

SPLITS = ('train', 'val', 'test')


@dataclass
class Piece:
    """A recording or a stretch of it in one split: frames [first, stop) of the recording."""

    facts: RecordingFacts
    first: int
    stop: int
    window: tuple[float | None, float | None] | None = None

    @property
    def frames(self) -> int:
        return self.stop - self.first

    @property
    def entry(self) -> str:
        return bag_entry(self.facts.path, self.window)

    def describe(self) -> str:
        t = self.facts.relative_s()
        span = f'{t[self.first]:.1f}-{t[self.stop - 1]:.1f} s' if self.window else 'whole recording'
        return f'{self.facts.path} ({span}, {self.frames} frames)'


@dataclass
class TimeSplit:
    pieces: dict[str, list[Piece]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    mode: str = 'recordings'     # recordings | stretches
    guard: int = 0

    def entries(self) -> dict[str, list[str]]:
        return {s: [p.entry for p in self.pieces[s]] for s in SPLITS}

    def frames(self, split: str) -> int:
        return sum(p.frames for p in self.pieces[split])

    def lines(self) -> list[str]:
        out = []
        for s in SPLITS:
            out.append(f'{s}: {self.frames(s)} frames from ' + '; '.join(p.describe() for p in self.pieces[s]))
        if self.mode == 'stretches':
            out.append(f'(cut by time inside a recording; {self.guard} frame(s) left out at each cut so no triplet '
                       f'spans two splits)')
        return out

    def as_dict(self) -> dict:
        return {'mode': self.mode, 'guard_frames': self.guard,
                **{s: [{'entry': p.entry, 'frames': p.frames} for p in self.pieces[s]] for s in SPLITS}}


def _window(facts: RecordingFacts, first: int, stop: int) -> tuple[float | None, float | None] | None:
    """Seconds [start, end) that hold exactly frames [first, stop): mid-way between neighbouring stamps."""
    if first == 0 and stop == facts.frames:
        return None
    t = facts.relative_s()
    start = None if first == 0 else round(float(t[first - 1] + t[first]) / 2, 4)
    end = None if stop == facts.frames else round(float(t[stop - 1] + t[stop]) / 2, 4)
    return start, end


def split_by_time(recordings: list[RecordingFacts], val_fraction: float = 0.1, test_fraction: float = 0.1,
                  frame_gap: int = 1) -> TimeSplit:
    """The split of `recordings` (see the module docstring); RecordingError when they are too short to split."""
    recs = sorted(recordings, key=lambda r: r.start_ns)
    need = 2 * frame_gap + 1          # one triplet
    total = sum(r.frames for r in recs)
    if len(recs) >= 3:
        out = TimeSplit(mode='recordings')
        rest = list(recs)
        for split, frac in (('test', test_fraction), ('val', val_fraction)):
            taken = 0
            keep = 2 if split == 'test' else 1          # recordings the splits still to fill need
            while len(rest) > keep and (taken == 0 or (taken < frac * total
                                                       and taken + rest[-1].frames <= 2 * frac * total)):
                r = rest.pop()
                out.pieces[split].insert(0, Piece(r, 0, r.frames))
                taken += r.frames
        out.pieces['train'] = [Piece(r, 0, r.frames) for r in rest]
    else:
        guard = frame_gap
        out = TimeSplit(mode='stretches', guard=guard)
        cuts = [round(total * (1 - val_fraction - test_fraction)), round(total * (1 - test_fraction))]
        # frame index on the timeline → (recording, frame); each split's frames, guards left out at inner cuts
        bounds = [(0, cuts[0]), (cuts[0], cuts[1]), (cuts[1], total)]
        offsets = np.cumsum([0] + [r.frames for r in recs])
        for split, (a, b) in zip(SPLITS, bounds):
            for k, r in enumerate(recs):
                lo, hi = max(a, offsets[k]) - offsets[k], min(b, offsets[k + 1]) - offsets[k]
                if hi <= lo:
                    continue
                if lo > 0:                  # a cut inside this recording: leave `guard` frames out after it
                    lo += guard
                if hi - lo > 0:
                    out.pieces[split].append(Piece(r, int(lo), int(hi), None))
        for split in SPLITS:
            out.pieces[split] = [p for p in out.pieces[split] if p.frames >= MIN_FRAMES]
            for p in out.pieces[split]:
                p.window = _window(p.facts, p.first, p.stop)
    short = [s for s in SPLITS if not out.pieces[s] or max(p.frames for p in out.pieces[s]) < need]
    if short:
        lengths = ', '.join(f'{r.path}: {r.frames}' for r in recs)
        raise RecordingError(f'too few frames to split by time ({total} frames: {lengths}); train, val and test each '
                             f'need a stretch of at least {need} frames, plus {frame_gap} frame(s) left out at each '
                             f'cut: record longer (about {max(10, 3 * (need + frame_gap)) * 3} frames or more) or '
                             f'add recordings')
    return out
