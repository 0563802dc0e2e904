"""Pairing two message streams by header stamp, one-to-one, within a tolerance.

Stamps are integer nanoseconds. Each message is used at most once; among candidate pairs the
closest in time are taken first (ties: earlier stamps first), so exact matches are never stolen
by a neighbour. What cannot be paired is reported, not dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Pairing:
    """Result of pair_by_stamp: indices into the two input sequences."""

    pairs: list[tuple[int, int]] = field(default_factory=list)   # (index in a, index in b), sorted by a
    unmatched_a: list[int] = field(default_factory=list)
    unmatched_b: list[int] = field(default_factory=list)
    offsets_ns: list[int] = field(default_factory=list)          # stamp_b - stamp_a per pair

    def summary(self) -> dict:
        off = np.abs(np.asarray(self.offsets_ns, dtype=np.float64))
        return {'pairs': len(self.pairs), 'unmatched_a': len(self.unmatched_a), 'unmatched_b': len(self.unmatched_b),
                'max_offset_ms': float(off.max() / 1e6) if off.size else None}


def pair_by_stamp(stamps_a, stamps_b, tolerance_ns: int) -> Pairing:
    """Pair stamps of a with stamps of b where |a - b| <= tolerance_ns, one-to-one, nearest first.

    stamps_a, stamps_b: int64 sequences in nanoseconds (any order; duplicates allowed).
    """
    a = np.asarray(stamps_a, dtype=np.int64).reshape(-1)
    b = np.asarray(stamps_b, dtype=np.int64).reshape(-1)
    if tolerance_ns < 0:
        raise ValueError(f'pairing tolerance must be >= 0 ns, got {tolerance_ns}')
    order_b = np.argsort(b, kind='stable')
    b_sorted = b[order_b]
    cands: list[tuple[int, int, int, int]] = []   # (|dt|, stamp a, ia, ib)
    if b.size:
        lo = np.searchsorted(b_sorted, a - tolerance_ns, side='left')
        hi = np.searchsorted(b_sorted, a + tolerance_ns, side='right')
        for ia in range(a.size):
            for k in range(lo[ia], hi[ia]):
                ib = int(order_b[k])
                cands.append((abs(int(b[ib]) - int(a[ia])), int(a[ia]), ia, ib))
    cands.sort()
    used_a = np.zeros(a.size, dtype=bool)
    used_b = np.zeros(b.size, dtype=bool)
    pairs = []
    for _dt, _sa, ia, ib in cands:
        if used_a[ia] or used_b[ib]:
            continue
        used_a[ia] = used_b[ib] = True
        pairs.append((ia, ib))
    pairs.sort()
    return Pairing(pairs=pairs, unmatched_a=[int(i) for i in np.flatnonzero(~used_a)],
                   unmatched_b=[int(i) for i in np.flatnonzero(~used_b)],
                   offsets_ns=[int(b[ib]) - int(a[ia]) for ia, ib in pairs])


def nearest_index(stamps, t_ns: int, tolerance_ns: int | None = None) -> int | None:
    """Index of the stamp nearest to t_ns (many-to-one lookups such as camera_info), or None if
    the sequence is empty or the nearest is farther than tolerance_ns."""
    s = np.asarray(stamps, dtype=np.int64).reshape(-1)
    if s.size == 0:
        return None
    i = int(np.argmin(np.abs(s - np.int64(t_ns))))
    if tolerance_ns is not None and abs(int(s[i]) - int(t_ns)) > tolerance_ns:
        return None
    return i
