"""Per-instance depth from a depth image and an instance label image (plain numpy).

For each instance id (> 0) with at least `min_pixels` pixels of finite depth inside its mask:
  distance  = median z (metres) of those pixels — robust to a mask that bleeds onto the background;
  near      = `near_percentile` (default 10th) percentile of z — the close side of the object;
  position  = 3-D point in the camera optical frame (x right, y down, z forward): the median of the
              back-projected x and y of the object's inlier pixels (|z - distance| <= inlier_band * distance,
              which drops background the mask bleeds onto; a mask split evenly between two depths has no
              pixel in that band, then the pixels nearest the median are used), and z = distance; needs K,
              else None;
  size      = robust width/height (metres): 10th–90th percentile spread of the inliers' x and y; needs K.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ObjectDepth:
    instance_id: int
    pixels: int                                      # mask pixels with finite depth
    mask_pixels: int                                 # all mask pixels
    distance: float                                  # median z, metres
    near: float                                      # near-percentile z, metres
    position: tuple[float, float, float] | None      # camera optical frame, metres (None without K)
    size: tuple[float, float] | None                 # (width, height) metres (None without K)

    @property
    def range(self) -> float | None:
        """Euclidean distance from the camera centre to `position`, metres."""
        return None if self.position is None else float(np.linalg.norm(self.position))


def instance_depths(depth: np.ndarray, labels: np.ndarray, K: np.ndarray | None = None, *, min_pixels: int = 20,
                    near_percentile: float = 10.0, inlier_band: float = 0.15) -> list[ObjectDepth]:
    """ObjectDepth per instance, sorted by id.

    depth: float32 [H,W] metres, NaN = invalid; labels: integer [H,W], 0 = background, same size as depth;
    K: float64 [3,3] intrinsics of the depth image, or None (no positions/sizes).
    """
    depth = np.asarray(depth)
    labels = np.asarray(labels)
    if depth.shape != labels.shape:
        raise ValueError(f'depth {depth.shape} and labels {labels.shape} must have the same size; '
                         f'resize the mask (nearest neighbour) first')
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'labels must be an integer id image, got {labels.dtype}')
    fg = labels > 0
    if not np.any(fg):
        return []
    mask_ids, mask_counts = np.unique(labels[fg], return_counts=True)
    valid = fg & np.isfinite(depth)
    vv, uu = np.nonzero(valid)
    ids = labels[vv, uu]
    z = depth[vv, uu].astype(np.float64)
    order = np.argsort(ids, kind='stable')
    ids, z, uu, vv = ids[order], z[order], uu[order], vv[order]
    uniq, starts = np.unique(ids, return_index=True)
    ends = np.append(starts[1:], ids.size)
    total = dict(zip(mask_ids.tolist(), mask_counts.tolist()))
    out = []
    for iid, s, e in zip(uniq.tolist(), starts.tolist(), ends.tolist()):
        n = e - s
        if n < min_pixels:
            continue
        zs = z[s:e]
        dist = float(np.median(zs))
        near = float(np.percentile(zs, near_percentile))
        pos = size = None
        if K is not None:
            off = np.abs(zs - dist)
            inl = off <= inlier_band * dist
            if not inl.any():        # split evenly between two depths, none near the median: the nearest pixels
                inl = off <= off.min()
            zi = zs[inl]
            x = (uu[s:e][inl] - K[0, 2]) / K[0, 0] * zi
            y = (vv[s:e][inl] - K[1, 2]) / K[1, 1] * zi
            pos = (float(np.median(x)), float(np.median(y)), dist)
            xl, xh = np.percentile(x, [10, 90])
            yl, yh = np.percentile(y, [10, 90])
            size = (float(xh - xl), float(yh - yl))
        out.append(ObjectDepth(int(iid), n, int(total[iid]), dist, near, pos, size))
    return out
