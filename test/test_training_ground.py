"""The ground from a depth map alone (training.ground): ground mask, plane fit, the depth at which a
ray meets the ground, and the contact ratio of an object standing on it."""
from __future__ import annotations

import math

import numpy as np
import pytest

from training.ground import (Plane, backproject, bottom_pixels, contact_ratio, fit_plane, ground_mask, ground_plane,
                             surface_normals)

H, W = 96, 128
FX = FY = 100.0
CX, CY = 63.5, 47.5
K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1]])
CAM_HEIGHT = 1.5
FAR_WALL = 60.0     # fronto-parallel wall behind everything (the sky/buildings above the horizon)
WALL = 8.0          # a fronto-parallel wall on the right, standing on the ground 8 m ahead
WALL_COLS = slice(96, W)


def rot_x(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def ground_depth(pitch_deg=0.0, height=CAM_HEIGHT):
    """z-depth [H,W] of a flat ground `height` m below a camera pitched down by `pitch_deg` (optical frame,
    y down), intersecting each pixel's ray with the world plane Y = height; np.inf where the ray misses it."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - CX) / FX, (v - CY) / FY, np.ones_like(u)], -1)      # z = 1
    R_wc = rot_x(-math.radians(pitch_deg))                                      # camera z axis tilts towards +y (down)
    ry = rays @ R_wc[1]                                                         # world-y component of each ray
    with np.errstate(divide='ignore'):
        return np.where(ry > 1e-9, height / ry, np.inf)


def scene(pitch_deg=0.0):
    """(depth, is_ground, is_wall): the ground, a far wall where the ground is farther than it (above the
    horizon), and a near wall at WALL m over the right-hand columns where the ground is farther than WALL."""
    g = ground_depth(pitch_deg)
    depth = np.minimum(g, FAR_WALL)
    wall = np.zeros((H, W), bool)
    wall[:, WALL_COLS] = g[:, WALL_COLS] > WALL
    depth[wall] = WALL
    is_ground = g <= depth
    return depth.astype(np.float32), is_ground, wall


def _interior(m, r):
    """Pixels of m whose (2r+1)-square neighbourhood lies inside m."""
    out = m.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= np.roll(np.roll(m, dy, 0), dx, 1)
    out[:r], out[-r:], out[:, :r], out[:, -r:] = False, False, False, False
    return out


def test_ground_mask_marks_the_ground_not_the_walls():
    """Every ground pixel is ground and no pixel of the near wall or the far wall is (away from the depth
    edges, where the normal comes from neighbours on both surfaces)."""
    depth, is_ground, wall = scene()
    g = ground_mask(depth, K)
    assert g[_interior(is_ground, 2)].all()
    assert not g[_interior(wall, 2)].any()
    assert not g[_interior(~is_ground & ~wall, 2)].any()
    assert g[wall].mean() < 0.05
    # instance pixels are never ground (car roofs are horizontal too)
    inst = np.zeros((H, W), bool)
    inst[70:90, 20:50] = True
    assert not ground_mask(depth, K, exclude=inst)[inst].any()
    assert ground_mask(depth, K, exclude=inst)[_interior(is_ground, 2) & ~inst].all()


def test_surface_normals_of_ground_and_wall():
    """The ground's normal is the camera's vertical axis, the fronto-parallel wall's the optical axis, both
    facing the camera."""
    depth, is_ground, wall = scene()
    n = surface_normals(depth, K)
    gi, wi = _interior(is_ground, 2), _interior(wall, 2)
    assert np.allclose(n[gi], [0, -1, 0], atol=1e-6)      # facing the camera: the ground is below, so -y
    assert np.allclose(n[wi], [0, 0, -1], atol=1e-6)
    assert np.isnan(n[0]).all() and np.isnan(n[:, -1]).all()   # no neighbours at the border


def test_ground_plane_recovers_camera_height_and_normal():
    depth, _, _ = scene()
    plane = ground_plane(depth, K, ground_mask(depth, K))
    assert plane is not None
    assert plane.height == pytest.approx(CAM_HEIGHT, rel=0.02)
    assert np.allclose(plane.normal, [0, 1, 0], atol=0.01)
    assert np.linalg.norm(plane.normal) == pytest.approx(1.0)


@pytest.mark.parametrize('pitch', [-3.0, 4.0, 8.0])
def test_pitched_camera_plane_gives_the_ground_depth_of_every_ground_pixel(pitch):
    """With the camera pitched by a few degrees the fitted plane's depth along each ground pixel's ray is the
    ground's depth there, and its normal is the world vertical seen from the tilted camera."""
    depth, is_ground, _ = scene(pitch)
    plane = ground_plane(depth, K, ground_mask(depth, K))
    assert plane is not None
    assert plane.height == pytest.approx(CAM_HEIGHT, rel=0.02)
    expected_normal = rot_x(-math.radians(pitch)).T @ np.array([0, 1.0, 0])   # = (0, cos, sin)
    assert np.allclose(plane.normal, expected_normal, atol=0.01)
    v, u = np.nonzero(is_ground & (depth < 40))
    z = plane.depth_at(K, u, v)
    assert np.allclose(z, depth[v, u], rtol=0.01)
    # rays above the horizon never meet the ground
    assert np.isinf(plane.depth_at(K, [CX], [0.0])).all()


def _box_scene(scale=1.0):
    """The flat-ground scene with a box standing on the ground: rows 50..79, cols 20..49; its depth is the
    ground depth at its bottom row times `scale`."""
    depth, _, _ = scene()
    box = np.zeros((H, W), bool)
    box[50:80, 20:50] = True
    z_contact = CAM_HEIGHT * FY / (79 - CY)
    d = depth.copy()
    d[box] = z_contact * scale
    return d, box


@pytest.mark.parametrize('scale', [1.0, 1.3, 0.7])
def test_contact_ratio_of_a_box_on_the_ground(scale):
    """1 for an object at the depth where it touches the ground; its depth error factor otherwise."""
    d, box = _box_scene(scale)
    plane = ground_plane(d, K, ground_mask(d, K, exclude=box))
    r = contact_ratio(d, box, plane, K)
    assert r == pytest.approx(scale, rel=0.03)


def test_contact_ratio_is_none_without_a_plane_or_a_contact_below_the_horizon():
    d, box = _box_scene()
    assert contact_ratio(d, box, None, K) is None
    plane = ground_plane(d, K, ground_mask(d, K, exclude=box))
    high = np.zeros((H, W), bool)
    high[5:30, 20:50] = True                       # entirely above the horizon: no ground below it
    assert contact_ratio(d, high, plane, K) is None
    assert contact_ratio(d, np.zeros((H, W), bool), plane, K) is None


def test_bottom_pixels_returns_the_lowest_row_of_each_column():
    m = np.zeros((10, 8), bool)
    m[2:5, 1] = True
    m[7, 1] = True          # a second part lower in the same column
    m[3:9, 4] = True
    m[0, 6] = True
    u, v = bottom_pixels(m)
    assert u.tolist() == [1, 4, 6]
    assert v.tolist() == [7, 8, 0]
    u, v = bottom_pixels(np.zeros((4, 4), bool))
    assert len(u) == 0 and len(v) == 0


def _plane_points(n, height=CAM_HEIGHT, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-5, 5, n), np.full(n, height), rng.uniform(3, 30, n)], 1)


def test_fit_plane_needs_enough_points_and_a_level_plane_below_the_camera():
    assert fit_plane(_plane_points(29)) is None
    p = fit_plane(_plane_points(30))
    assert p is not None and p.height == pytest.approx(CAM_HEIGHT) and np.allclose(p.normal, [0, 1, 0])
    assert fit_plane(_plane_points(500, height=-1.5)) is None           # a plane above the camera (a ceiling)
    wall = _plane_points(500)[:, [0, 2, 1]]                             # z = 1.5: a wall, not a ground
    assert fit_plane(wall) is None
    assert fit_plane(np.full((100, 3), np.nan)) is None


def test_fit_plane_trims_outliers():
    """A few points far off the ground (objects, depth noise) do not move the fitted plane."""
    pts = _plane_points(400)
    rng = np.random.default_rng(1)
    out = rng.choice(len(pts), 20, replace=False)
    pts[out, 1] -= rng.uniform(1.0, 3.0, len(out))     # 5 % of points up to 3 m above the ground
    p = fit_plane(pts)
    assert p is not None and p.height == pytest.approx(CAM_HEIGHT, rel=0.01)
    assert np.allclose(p.normal, [0, 1, 0], atol=0.01)


def test_backproject_lands_ground_pixels_on_the_plane():
    depth, is_ground, _ = scene()
    P = backproject(depth, K)
    assert np.allclose(P[is_ground][:, 1], CAM_HEIGHT)
    assert np.allclose(P[..., 2], depth)
    assert isinstance(Plane(np.array([0, 1.0, 0]), 1.5, 10).depth_at(K, 10, 80), np.ndarray)


def test_ground_below_finds_where_the_ground_starts_under_each_column():
    """Per column of the mask: its lowest row and the first ground row below it; -1 where another object comes
    first, where no ground lies within reach (max_rows) or before the image's bottom."""
    from training.ground import ground_below

    mask = np.zeros((12, 6), bool)
    mask[2:5, 1:5] = True
    mask[6, 2] = True                        # column 2 reaches lower
    ground = np.zeros((12, 6), bool)
    ground[8:, :4] = True                    # no ground under column 4
    blocked = np.zeros((12, 6), bool)
    blocked[6, 3] = True                     # another object between column 3 and the ground
    u, v, vg = ground_below(mask, ground, blocked)
    assert u.tolist() == [1, 2, 3, 4] and v.tolist() == [4, 6, 4, 4]
    assert vg.tolist() == [8, 8, -1, -1]
    assert ground_below(mask, ground, blocked, max_rows=2)[2].tolist() == [-1, 8, -1, -1]   # 4 rows below column 1
    assert ground_below(np.zeros((4, 4), bool), ground[:4, :4])[0].size == 0
