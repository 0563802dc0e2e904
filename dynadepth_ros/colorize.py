"""Depth → colour image for people (RViz, rqt_image_view): inverse-depth turbo colour map, NaN black."""
from __future__ import annotations

import cv2
import numpy as np


def colorize_depth(depth: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """uint8 [H,W,3] BGR from depth float32 [H,W] metres (NaN = invalid → black).

    Colours follow inverse depth between 1/max_depth (far, dark blue) and 1/min_depth (near, red), which
    spends the colour range on the near field where it matters; values outside are clipped.
    """
    if not 0 < min_depth < max_depth:
        raise ValueError(f'colour range {min_depth}..{max_depth} m must satisfy 0 < min < max')
    lo, hi = 1.0 / max_depth, 1.0 / min_depth
    with np.errstate(divide='ignore', invalid='ignore'):
        inv = 1.0 / depth.astype(np.float32)
    valid = np.isfinite(inv)
    norm = np.clip((inv - lo) / (hi - lo), 0.0, 1.0)
    u8 = np.where(valid, norm * 255.0 + 0.5, 0).astype(np.uint8)
    bgr = cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)
    bgr[~valid] = 0
    return bgr
