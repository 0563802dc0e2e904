"""Depth (and other per-pixel values) → colour images for people, one implementation for the whole project:
the node's depth/colored topic (RViz, rqt_image_view), the demo and model-comparison strips, the evaluation
report's sample strips and the training previews.

    colorize_depth(depth, min_depth, max_depth, scale='inverse', colormap='turbo')   # near bright, far dark
    colorize(values, lo, hi, colormap='jet')                                        # lo → start, hi → end

Invalid pixels (NaN, ±inf, and depth <= 0) are black. Values outside the range are clipped to its ends.
The colour-map index is the position in the range rounded to the nearest of 256 steps. Output is uint8
[H,W,3] in BGR order (ROS bgr8, cv2.imwrite) unless rgb=True.
"""
from __future__ import annotations

import cv2
import numpy as np

COLORMAPS = {'turbo': cv2.COLORMAP_TURBO, 'magma': cv2.COLORMAP_MAGMA, 'inferno': cv2.COLORMAP_INFERNO,
             'jet': cv2.COLORMAP_JET}
DEPTH_SCALES = ('inverse', 'log', 'linear')


def _apply(position: np.ndarray, valid: np.ndarray, colormap: str, rgb: bool) -> np.ndarray:
    """uint8 [H,W,3] from colour-map positions in [0, 1] (clipped); black where not valid."""
    if colormap not in COLORMAPS:
        raise ValueError(f'unknown colour map {colormap!r}; use one of {sorted(COLORMAPS)}')
    with np.errstate(invalid='ignore'):
        pos = np.clip(np.where(valid, position, 0.0), 0.0, 1.0)
    img = cv2.applyColorMap((pos * 255.0 + 0.5).astype(np.uint8), COLORMAPS[colormap])
    img[~valid] = 0
    return np.ascontiguousarray(img[..., ::-1]) if rgb else img


def colorize(values: np.ndarray, lo: float, hi: float, colormap: str = 'turbo', *,
             valid: np.ndarray | None = None, rgb: bool = False) -> np.ndarray:
    """uint8 [H,W,3] of float values [H,W]: lo at the start of the colour map, hi at its end (linear).

    valid: bool [H,W] of the pixels to colour (default: the finite ones); the others are black.
    """
    v = np.asarray(values, np.float32)
    ok = np.isfinite(v) if valid is None else (np.asarray(valid, bool) & np.isfinite(v))
    return _apply((v - lo) / max(hi - lo, 1e-9), ok, colormap, rgb)


def colorize_depth(depth: np.ndarray, min_depth: float, max_depth: float, *, scale: str = 'inverse',
                   colormap: str = 'turbo', darkest: float = 0.0, rgb: bool = False) -> np.ndarray:
    """uint8 [H,W,3] from depth float [H,W] metres (NaN, inf and <= 0 invalid → black).

    scale: how depth between min_depth and max_depth runs along the colour map:
        'inverse'  1/depth: near (min_depth) at the end of the map, far at its start; spends the colours on the
                   near field where they matter (the node's depth/colored);
        'log'      log depth, near at the end; every doubling of distance gets the same share of colours;
        'linear'   depth, min_depth at the start of the map, max_depth at its end (min_depth may be 0).
    darkest: colour-map position of the far end for 'inverse' and 'log' (e.g. 0.18 keeps distant depth apart
        from the black of invalid pixels on magma).
    """
    if scale not in DEPTH_SCALES:
        raise ValueError(f'unknown depth scale {scale!r}; use one of {DEPTH_SCALES}')
    lowest = 0.0 if scale == 'linear' else np.nextafter(0.0, 1.0)
    if not lowest <= min_depth < max_depth:
        raise ValueError(f'colour range {min_depth}..{max_depth} m must satisfy 0 {"<=" if lowest == 0 else "<"} '
                         f'min < max')
    d = np.asarray(depth, np.float32)
    with np.errstate(invalid='ignore'):
        valid = np.isfinite(d) & (d > 0)
    with np.errstate(divide='ignore', invalid='ignore'):
        if scale == 'inverse':
            near = (1.0 / d - 1.0 / max_depth) / (1.0 / min_depth - 1.0 / max_depth)
        elif scale == 'log':
            near = 1.0 - np.log(d / min_depth) / np.log(max_depth / min_depth)
        else:
            return _apply((d - min_depth) / (max_depth - min_depth), valid, colormap, rgb)
    return _apply(darkest + (1.0 - darkest) * np.clip(near, 0.0, 1.0), valid, colormap, rgb)
