"""Post-processing of predicted instance masks between self-training rounds (numpy; reference §3U 1.3).

The reference, after its Mask R-CNN predicts every frame: keeps masks of at least 0.1 % of the image,
drops masks whose box-minus-mask area is >= 10 % of the mask, merges or deduplicates overlapping masks
(coverage thresholds 0.25 and 0.5) and removes the road. Here:

- size: a mask keeps at least min_area_fraction of the image (after the road is removed);
- compactness: Mask R-CNN's box is its own detection box, a mask inside it that leaves much of it empty
  is a bad mask. Our network has no box, and against a mask's tight box that rule would drop 97 % of the
  generator's objects (their mask fills a median 76 % of it; measured on the cpu-small val split). We keep
  its intent with the seed rule: mask / tight box at least min_fill (0.5 keeps 98 % of the generator's
  objects above 0.5 % of the image);
- overlaps (the mirrored-image pass gives a second set of masks): coverage = |a ∩ b| / min(|a|, |b|);
  from duplicate_coverage on the two are one object and merge into the higher-scoring one (union);
  from overlap_coverage on, the shared pixels stay with the higher-scoring mask; below, the same (the
  masks only touch);
- road: pixels whose ground probability is at least 0.5 leave every mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.masks.seeds import box_area, box_of


@dataclass(frozen=True)
class PostprocessRules:
    min_area_fraction: float = 0.001
    min_fill: float = 0.5
    duplicate_coverage: float = 0.5
    overlap_coverage: float = 0.25


def masks_of(ids: np.ndarray) -> list[np.ndarray]:
    """bool [H,W] masks of an id map's instances, in id order."""
    return [ids == i for i in np.unique(ids[ids > 0]).tolist()]


def coverage(a: np.ndarray, b: np.ndarray) -> float:
    """|a ∩ b| / min(|a|, |b|) of two bool masks (0 when either is empty)."""
    n = min(int(a.sum()), int(b.sum()))
    return float(np.logical_and(a, b).sum() / n) if n else 0.0


def merge_overlaps(masks: list[np.ndarray], scores: list[float], duplicate_coverage: float = 0.5,
                   overlap_coverage: float = 0.25) -> tuple[list[np.ndarray], list[float], dict]:
    """Masks (bool [H,W]) with their overlaps resolved (module docstring), highest score first, and counts
    of what happened ({'merged', 'split'})."""
    order = np.argsort(-np.asarray(scores, np.float64), kind='stable')
    kept: list[np.ndarray] = []
    kept_scores: list[float] = []
    counts = {'merged': 0, 'split': 0}
    for i in order.tolist():
        m = masks[i].copy()
        duplicate = False
        for k, other in enumerate(kept):
            c = coverage(m, other)
            if c >= duplicate_coverage:
                kept[k] = other | m
                duplicate = True
                counts['merged'] += 1
                break
            if c > 0:
                m &= ~other                    # the shared pixels stay with the higher-scoring mask
                counts['split'] += c >= overlap_coverage
        if not duplicate and m.any():
            kept.append(m)
            kept_scores.append(float(scores[i]))
    return kept, kept_scores, counts


def postprocess(masks: list[np.ndarray], scores: list[float], ground: np.ndarray | None,
                rules: PostprocessRules, stats: dict | None = None) -> tuple[np.ndarray, list[float]]:
    """(uint16 [H,W] id map 1..n, scores) of the masks that survive the rules (module docstring).

    masks: bool [H,W] each; scores: one per mask; ground: bool [H,W] road pixels (None: no road removal).
    The id order follows the scores (1 = highest). `stats` (optional) counts the masks dropped per rule."""
    def count(key, n=1):
        if stats is not None:
            stats[key] = stats.get(key, 0) + n

    if not masks:
        return np.zeros(ground.shape if ground is not None else (1, 1), np.uint16), []
    h, w = masks[0].shape
    min_area = max(1, math.ceil(rules.min_area_fraction * h * w))
    if ground is not None:
        road = ground.astype(bool)
        pairs = [(m & ~road, s) for m, s in zip(masks, scores)]
        count('road', sum(1 for m, _ in pairs if not m.any()))
        pairs = [(m, s) for m, s in pairs if m.any()]
        masks, scores = [m for m, _ in pairs], [s for _, s in pairs]
    merged, merged_scores, counts = merge_overlaps(masks, scores, rules.duplicate_coverage, rules.overlap_coverage)
    count('merged', counts['merged'])
    out = np.zeros((h, w), np.uint16)
    out_scores: list[float] = []
    for m, s in zip(merged, merged_scores):
        area = int(m.sum())
        if area < min_area:
            count('small')
            continue
        if area / box_area(box_of(m)) < rules.min_fill:
            count('sparse')
            continue
        out_scores.append(s)
        out[m & (out == 0)] = len(out_scores)
        count('kept')
    return out, out_scores


def add_missed_seeds(ids: np.ndarray, seeds: np.ndarray | None, found: float = 0.5) -> tuple[np.ndarray, int]:
    """(uint16 ids, number added): the network's instance ids with every seed of the frame (uint16 [H,W], 0 =
    none) that the network missed added as an instance of its own, on the pixels no network mask holds. A seed
    counts as found when at least `found` of its pixels lie in network masks. Seeds are objects the motion
    showed, which a network trained for minutes on them does not always find again (masks.instances.keep_seeds)."""
    out = np.asarray(ids).astype(np.uint16).copy()
    if seeds is None or not np.any(seeds):
        return out, 0
    taken = out > 0
    nxt = int(out.max()) + 1
    added = 0
    for s in np.unique(seeds[seeds > 0]).tolist():
        m = seeds == s
        if (taken & m).sum() >= found * m.sum():
            continue
        free = m & ~taken
        out[free] = nxt
        taken |= free
        nxt += 1
        added += 1
    return out, added
