"""How the demo and the model comparison draw their figures: depth in one colour style (so a demo preview and
a comparison strip can be read side by side) and a caption on each panel.

    depth_figure(depth)        uint8 RGB [H,W,3] of depth [H,W] in metres, in the style below
    caption(img, text)         a copy of uint8 RGB [H,W,3] `img` with `text` at its top left
"""
from __future__ import annotations

import cv2
import numpy as np

from .colorize import colorize_depth

# Log depth from 2 m (bright) to 100 m (dark purple, kept apart from the black of invalid pixels), RGB.
DEPTH_RANGE = (2.0, 100.0)
DEPTH_STYLE = dict(scale='log', colormap='magma', darkest=0.18, rgb=True)
DEPTH_LABEL = 'GT depth, log scale 2-100 m (sky = invalid, black)'


def depth_figure(depth: np.ndarray) -> np.ndarray:
    """uint8 RGB [H,W,3] of depth float [H,W] (metres; <= 0 or not finite: black) in the figures' style."""
    return colorize_depth(depth, *DEPTH_RANGE, **DEPTH_STYLE)


def caption(img: np.ndarray, text: str) -> np.ndarray:
    """A copy of uint8 RGB [H,W,3] `img` with `text` in white on a black outline at its top left, sized to
    the image height."""
    out = img.copy()
    scale = max(0.35, img.shape[0] / 480)
    cv2.putText(out, text, (5, int(16 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (5, int(16 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out
