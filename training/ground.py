"""The ground from a depth map alone (numpy): surface normals, a ground mask, a robust ground plane
and the depth at which a pixel's ray meets that plane.

Most robots' segmentation nodes give instances only, no road class, and our synthetic data has no
road mask either. So, like the noisy target of the reference's ground-segmentation stage (§3U 1.2),
the ground is found geometrically in the stage-1 depth: back-project, take normals from
neighbours `step` pixels away, and call a pixel ground when its normal is within `max_angle_deg`
of the camera's "down" axis (optical frame: y down, so the ground plane's normal is ±y) and it
lies below the camera. Instance pixels are never ground (car roofs are horizontal too).

A plane n·X = h (n unit, n_y > 0, h > 0: the camera height above it when n = (0, 1, 0)) fitted
to those points with two rounds of trimming gives, for any pixel, the depth of the ground along
its ray: Z = h / (n·K⁻¹[u, v, 1]). That is the depth of a point standing on the ground there,
whatever the scene depth says about the object itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """float64 [H,W,3] camera-frame points of a z-depth map [H,W] (metres) with intrinsics K [3,3]."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    Ki = np.linalg.inv(np.asarray(K, np.float64))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ Ki.T
    return rays * np.asarray(depth, np.float64)[..., None]


def surface_normals(depth: np.ndarray, K: np.ndarray, step: int = 2) -> np.ndarray:
    """float64 [H,W,3] unit normals (NaN where undefined) from cross products of the vectors to the
    neighbours `step` px right/left and down/up; oriented towards the camera."""
    P = backproject(depth, K)
    h, w = depth.shape
    n = np.full((h, w, 3), np.nan)
    if h <= 2 * step or w <= 2 * step:
        return n
    dx = P[step:-step, 2 * step:] - P[step:-step, :-2 * step]
    dy = P[2 * step:, step:-step] - P[:-2 * step, step:-step]
    c = np.cross(dx, dy)
    norm = np.linalg.norm(c, axis=-1, keepdims=True)
    c = np.where(norm > 1e-12, c / np.maximum(norm, 1e-12), np.nan)
    centre = P[step:-step, step:-step]
    flip = (c * centre).sum(-1) > 0          # make normals face the camera
    c[flip] *= -1
    n[step:-step, step:-step] = c
    valid = np.asarray(depth) > 0
    ok = valid.copy()
    ok[step:-step, step:-step] &= valid[step:-step, 2 * step:] & valid[step:-step, :-2 * step] \
        & valid[2 * step:, step:-step] & valid[:-2 * step, step:-step]
    n[~ok] = np.nan
    return n


def ground_mask(depth: np.ndarray, K: np.ndarray, max_angle_deg: float = 15.0, step: int = 2,
                exclude: np.ndarray | None = None) -> np.ndarray:
    """bool [H,W]: pixels whose surface normal is within max_angle_deg of the camera's vertical axis
    and that lie below the camera (y > 0), minus `exclude` (e.g. every instance pixel)."""
    n = surface_normals(depth, K, step)
    P = backproject(depth, K)
    with np.errstate(invalid='ignore'):
        up = np.abs(n[..., 1]) >= np.cos(np.radians(max_angle_deg))
    g = up & (P[..., 1] > 0) & (np.asarray(depth) > 0)
    if exclude is not None:
        g &= ~exclude.astype(bool)
    return g


@dataclass(frozen=True)
class Plane:
    normal: np.ndarray   # [3] unit, n_y > 0
    height: float        # n·X = height for points on the plane (> 0: the camera is above it)
    inliers: int

    def depth_at(self, K: np.ndarray, u, v) -> np.ndarray:
        """z-depth where the rays through pixels (u, v) meet the plane; +inf where they do not (above the horizon)."""
        u = np.asarray(u, np.float64)
        v = np.asarray(v, np.float64)
        Ki = np.linalg.inv(np.asarray(K, np.float64))
        rays = np.stack([u, v, np.ones_like(u)], -1) @ Ki.T
        denom = rays @ self.normal
        with np.errstate(divide='ignore', invalid='ignore'):
            z = np.where(denom > 1e-9, self.height / denom, np.inf)
        return z


def fit_plane(points: np.ndarray, min_points: int = 30, trim: float = 0.2, rounds: int = 2) -> Plane | None:
    """Least-squares plane through points [N,3] with `rounds` of dropping the worst `trim` share of
    residuals; None when there are too few points or the result is not a ground plane below the camera."""
    P = np.asarray(points, np.float64).reshape(-1, 3)
    P = P[np.isfinite(P).all(1)]
    if len(P) < min_points:
        return None
    keep = np.ones(len(P), bool)
    n = c = None
    for r in range(rounds + 1):
        Q = P[keep]
        if len(Q) < min(min_points, 3):
            return None
        c = Q.mean(0)
        _, _, vt = np.linalg.svd(Q - c, full_matrices=False)
        n = vt[-1]
        if n[1] < 0:
            n = -n
        if r < rounds:
            res = np.abs((P - c) @ n)
            cut = np.quantile(res[keep], 1.0 - trim)
            keep = res <= cut
    h = float(c @ n)
    if not np.isfinite(h) or h <= 0 or n[1] < 0.5:   # the plane must be below the camera and roughly level
        return None
    return Plane(normal=n, height=h, inliers=int(keep.sum()))


def ground_plane(depth: np.ndarray, K: np.ndarray, ground: np.ndarray, min_points: int = 30,
                 max_points: int = 4000, seed: int = 0) -> Plane | None:
    """The plane fitted to the back-projected `ground` pixels of `depth` (a fixed random subset of
    at most max_points, so the cost does not grow with the resolution)."""
    P = backproject(depth, K)[ground]
    if len(P) > max_points:
        P = P[np.random.default_rng(seed).choice(len(P), max_points, replace=False)]
    return fit_plane(P, min_points=min_points)


def bottom_pixels(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of the lowest pixel of `mask` in each of its columns: where an object meets the ground."""
    mask = mask.astype(bool)
    cols = np.flatnonzero(mask.any(0))
    if not len(cols):
        return cols, cols
    h = mask.shape[0]
    lowest = h - 1 - np.argmax(mask[::-1, cols], axis=0)
    return cols, lowest


def contact_pixels(mask: np.ndarray, rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of the column bottoms that lie within `rows` rows of the mask's lowest row: where the object
    really touches the ground (wheels, feet). Between a car's wheels the column bottom is the body,
    above the road, and the ray through it meets the ground behind the car."""
    u, v = bottom_pixels(mask)
    if not len(u):
        return u, v
    keep = v >= v.max() - rows
    return u[keep], v[keep]


def ground_below(mask: np.ndarray, ground: np.ndarray, blocked: np.ndarray | None = None,
                 max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the ground starts below an object whose mask may stop short of its bottom (learned masks: a car's
    dark lower body and wheels often fall outside it). For each column of `mask`, (u, lowest mask row, first
    `ground` row below it); the last is -1 where no ground is reached within `max_rows` rows (default: the
    mask's height) before a `blocked` pixel (another object) or the image's bottom."""
    mask = mask.astype(bool)
    u, v = bottom_pixels(mask)
    vg = np.full(len(u), -1, np.int64)
    if not len(u):
        return u, v, vg
    h = mask.shape[0]
    rows = np.flatnonzero(mask.any(1))
    reach = int(max_rows if max_rows is not None else rows[-1] - rows[0] + 1)
    for k, (uu, vv) in enumerate(zip(u.tolist(), v.tolist())):
        end = min(h, vv + 1 + max(1, reach))
        col_ground = np.asarray(ground[vv + 1:end, uu], bool)
        if not col_ground.any():
            continue
        first = int(np.argmax(col_ground))
        if blocked is not None and np.asarray(blocked[vv + 1:vv + 1 + first, uu], bool).any():
            continue            # another object lies between this one and the ground
        vg[k] = vv + 1 + first
    return u, v, vg


def contact_ratio(depth: np.ndarray, mask: np.ndarray, plane: Plane | None, K: np.ndarray) -> float | None:
    """Median over the mask's contact pixels (contact_pixels) of depth / ground-plane depth there; None
    when the plane is unknown or the contact lies above the horizon. 1 = the object stands where the
    ground says it does; > 1 its depth is too far for its contact with the road, < 1 too near."""
    if plane is None:
        return None
    u, v = contact_pixels(mask)
    if not len(u):
        return None
    zg = plane.depth_at(K, u, v + 0.5)        # the bottom edge of the lowest pixel
    d = np.asarray(depth)[v, u]
    ok = np.isfinite(zg) & (zg > 0) & (d > 0)
    if ok.sum() < max(1, 0.5 * len(u)):
        return None
    return float(np.median(d[ok] / zg[ok]))
