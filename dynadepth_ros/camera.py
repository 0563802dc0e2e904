"""Pinhole camera geometry on numpy arrays (REP 103 optical frame: x right, y down, z forward).

Intrinsics scale with the image size by direct multiplication (fx*sx, cx*sx), the convention
image_proc's resize and monodepth2 use; normalised intrinsics are (fx/W, fy/H, cx/W, cy/H).
"""
from __future__ import annotations

import cv2
import numpy as np


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """float64 [3,3] K."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K [3,3] (or P [3,4]) for an image resized by sx horizontally and sy vertically."""
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, :] *= sx
    out[1, :] *= sy
    return out


def normalise_intrinsics(K: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """(fx/W, fy/H, cx/W, cy/H) of K for an image of width x height pixels."""
    return (float(K[0, 0]) / width, float(K[1, 1]) / height, float(K[0, 2]) / width, float(K[1, 2]) / height)


def denormalise_intrinsics(norm: tuple[float, float, float, float] | list[float], width: int, height: int) -> np.ndarray:
    """K [3,3] in pixels for width x height from normalised (fx/W, fy/H, cx/W, cy/H)."""
    fx, fy, cx, cy = (float(v) for v in norm)
    return intrinsics_matrix(fx * width, fy * height, cx * width, cy * height)


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) float32 [H,W] pixel-centre coordinates (integer positions, column u, row v)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    return u, v


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """3-D points float32 [H,W,3] in the camera frame from z-depth float32 [H,W] (metres)."""
    h, w = depth.shape
    u, v = pixel_grid(h, w)
    z = depth.astype(np.float32)
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], axis=-1)


def project(points: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project camera-frame points [...,3] → (uv [...,2] pixels, z [...] metres). z<=0 gives NaN uv."""
    pts = np.asarray(points, dtype=np.float64)
    z = pts[..., 2]
    with np.errstate(divide='ignore', invalid='ignore'):
        safe = np.where(z > 0, z, np.nan)
        u = K[0, 0] * pts[..., 0] / safe + K[0, 2]
        v = K[1, 1] * pts[..., 1] / safe + K[1, 2]
    return np.stack([u, v], axis=-1), z


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply 4x4 rigid transform T to points [...,3]."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ T[:3, :3].T + T[:3, 3]


def relative_pose(T_world_a: np.ndarray, T_world_b: np.ndarray) -> np.ndarray:
    """T_b_a: maps points in camera a's frame into camera b's frame (both poses camera-to-world)."""
    return np.linalg.inv(T_world_b) @ T_world_a


def resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map whose values must not be blended (instance ids; also sparse depth) resized to height x width.

    Nearest neighbour with exact pixel-centre rounding (cv2.INTER_NEAREST_EXACT: source pixel
    floor((x + 0.5) * src_w / width), the same as PIL NEAREST and torch 'nearest-exact'); plain INTER_NEAREST
    rounds down and shifts the map by up to a pixel. Returned unchanged when it already has that size; the
    node, the evaluation and training all resize label maps with this one function.
    """
    if labels.shape[:2] == (height, width):
        return labels
    out = cv2.resize(labels, (int(width), int(height)), interpolation=cv2.INTER_NEAREST_EXACT)
    return out.astype(labels.dtype, copy=False)
