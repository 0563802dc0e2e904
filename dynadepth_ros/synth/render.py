"""Vectorised numpy ray caster.

A ray grid (the pixels of a pinhole camera, or the beams x azimuths of a spinning lidar) is
intersected analytically with the ground (road plane, raised sidewalks, curb faces) and with every
primitive (quads, capped cylinders, ellipsoids). Each primitive is only tested on the sub-rectangle
of the ray grid its bounds can cover (projected corners for the camera, an angular window for the
lidar), so the cost follows the pixels an object covers, not the object count.

The result is a G-buffer per ray: hit distance t (camera rays are scaled so t is the z-depth in
metres; lidar rays are unit length so t is the range), global primitive index, surface coordinates
(s, q) in metres fixed to the surface, a Lambert shading factor and |cos| of the incidence angle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .primitives import BOX_EDGES, QUAD_EDGES, PrimitiveSet, box_corners

NEAR = 0.05          # metres; nothing closer than this is rendered
AMBIENT = 0.42       # shading = AMBIENT + SKYLIGHT * n_z + SUN * max(0, n . sun)
SKYLIGHT = 0.10
SUN = 0.58
SUN_DIR = np.array([-0.35, -0.50, 0.79]) / np.linalg.norm([-0.35, -0.50, 0.79])   # towards the sun, world


@dataclass(frozen=True)
class Lighting:
    """shading = ambient + skylight * n_z + sun * max(0, n . sun_dir); sun_dir points towards the sun
    (world, unit). The default is the original fixed sun; sequences draw their own (generate.Look)."""
    ambient: float = AMBIENT
    skylight: float = SKYLIGHT
    sun: float = SUN
    sun_dir: tuple[float, float, float] = tuple(float(v) for v in SUN_DIR)

    def __post_init__(self):
        d = np.asarray(self.sun_dir, float)
        if d.shape != (3,) or not np.isfinite(d).all() or abs(np.linalg.norm(d) - 1.0) > 1e-6:
            raise ValueError(f'sun_dir must be a finite unit 3-vector, got {self.sun_dir}')
        if min(self.ambient, self.skylight, self.sun) < 0:
            raise ValueError('lighting terms must be non-negative')

    @staticmethod
    def from_angles(azimuth: float, elevation: float, ambient: float, skylight: float, sun: float) -> 'Lighting':
        """Sun at `azimuth` (rad, from +x towards +y) and `elevation` (rad above the horizon)."""
        ce = np.cos(elevation)
        d = (ce * np.cos(azimuth), ce * np.sin(azimuth), np.sin(elevation))
        return Lighting(float(ambient), float(skylight), float(sun), tuple(float(v) for v in d))


DEFAULT_LIGHTING = Lighting()


def lambert(normal: np.ndarray, light: Lighting = DEFAULT_LIGHTING) -> np.ndarray:
    """Shading factor for world normals [...,3] (float64) under `light`."""
    n = np.asarray(normal, float)
    return light.ambient + light.skylight * n[..., 2] + light.sun * np.maximum(0.0, n @ np.asarray(light.sun_dir))


@dataclass
class Ground:
    """The street cross-section: road |y| < road_half at z=0, sidewalks |y| >= road_half at
    z=curb_height, vertical curb faces between them. Materials: road, sidewalk left (+y), sidewalk
    right (-y), curb left, curb right."""
    road_half: float
    curb_height: float
    materials: tuple[int, int, int, int, int]


class GBuffer:
    """Per-ray hit record. t float32 [R,C] (inf = miss); prim int32 [R,C] (-1 = miss);
    s, q float32 [R,C] metres; shade, cos float32 [R,C]."""

    def __init__(self, shape: tuple[int, int], surface: bool = True):
        self.t = np.full(shape, np.inf, np.float32)
        self.prim = np.full(shape, -1, np.int32)
        self.cos = np.ones(shape, np.float32)
        self.surface = surface
        if surface:
            self.s = np.zeros(shape, np.float32)
            self.q = np.zeros(shape, np.float32)
            self.shade = np.ones(shape, np.float32)


class RayGrid:
    """Rays from one origin. dx, dy, dz float32 [R,C] world-frame directions; inv_norm float32 [R,C]."""
    origin: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    dz: np.ndarray
    inv_norm: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.dx.shape

    def rects(self, corners: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """int64 [K,5] rows (primitive, r0, r1, c0, c1): sub-grids that may see each primitive,
        given its bounding points in world coordinates corners float64 [N,M,3] (edges [E,2] index pairs)."""
        raise NotImplementedError


class CameraRays(RayGrid):
    """Pinhole camera rays; t along a ray is the z-depth (ray = ((u-cx)/fx, (v-cy)/fy, 1) in the
    optical frame, REP 103: x right, y down, z forward). Pixel (v, u) has its centre at integer u, v."""

    def __init__(self, K: np.ndarray, height: int, width: int, T_world_cam: np.ndarray,
                 _cache: dict = {}):  # noqa: B006 (per-process cache of the optical-frame directions)
        self.K = np.asarray(K, np.float64)
        self.height, self.width = int(height), int(width)
        key = (height, width, *self.K.reshape(-1).tolist())
        if key not in _cache:
            v, u = np.mgrid[0:height, 0:width].astype(np.float64)
            xc = ((u - self.K[0, 2]) / self.K[0, 0])
            yc = ((v - self.K[1, 2]) / self.K[1, 1])
            inv = (1.0 / np.sqrt(xc ** 2 + yc ** 2 + 1.0)).astype(np.float32)
            _cache.clear()
            _cache[key] = (xc, yc, inv)
        xc, yc, inv = _cache[key]
        R = np.asarray(T_world_cam, np.float64)[:3, :3]
        self.R_world_cam = R
        self.origin = np.asarray(T_world_cam, np.float64)[:3, 3].copy()
        self.dx = (R[0, 0] * xc + R[0, 1] * yc + R[0, 2]).astype(np.float32)
        self.dy = (R[1, 0] * xc + R[1, 1] * yc + R[1, 2]).astype(np.float32)
        self.dz = (R[2, 0] * xc + R[2, 1] * yc + R[2, 2]).astype(np.float32)
        self.inv_norm = inv
        self.pixel_angle = 1.0 / float(self.K[0, 0])

    def rects(self, corners: np.ndarray, edges: np.ndarray) -> np.ndarray:
        n = corners.shape[0]
        if n == 0:
            return np.zeros((0, 5), np.int64)
        pc = (corners - self.origin) @ self.R_world_cam           # optical frame [N,M,3]
        z = pc[..., 2]
        a, b = pc[:, edges[:, 0]], pc[:, edges[:, 1]]            # [N,E,3]
        za, zb = a[..., 2], b[..., 2]
        crosses = (za - NEAR) * (zb - NEAR) < 0
        with np.errstate(all='ignore'):
            w = np.where(crosses, (NEAR - za) / (zb - za), 0.0)
        clip = a + w[..., None] * (b - a)
        pts = np.concatenate([pc, clip], axis=1)
        ok = np.concatenate([z >= NEAR, crosses], axis=1)
        zz = np.where(ok, pts[..., 2], 1.0)
        u = self.K[0, 0] * pts[..., 0] / zz + self.K[0, 2]
        v = self.K[1, 1] * pts[..., 1] / zz + self.K[1, 2]
        umin = np.where(ok, u, np.inf).min(axis=1)
        umax = np.where(ok, u, -np.inf).max(axis=1)
        vmin = np.where(ok, v, np.inf).min(axis=1)
        vmax = np.where(ok, v, -np.inf).max(axis=1)
        vis = ok.any(axis=1)
        c0 = np.clip(np.floor(np.where(vis, umin, 0)), 0, self.width).astype(np.int64)
        c1 = np.clip(np.ceil(np.where(vis, umax, -1)) + 1, 0, self.width).astype(np.int64)
        r0 = np.clip(np.floor(np.where(vis, vmin, 0)), 0, self.height).astype(np.int64)
        r1 = np.clip(np.ceil(np.where(vis, vmax, -1)) + 1, 0, self.height).astype(np.int64)
        keep = vis & (c1 > c0) & (r1 > r0)
        idx = np.flatnonzero(keep)
        return np.stack([idx, r0[idx], r1[idx], c0[idx], c1[idx]], axis=1)


class LidarRays(RayGrid):
    """Spinning-lidar rays: rows = beams (elevation, descending), columns = azimuth (0 = +x, counter-
    clockwise, [0, 2pi)). Unit directions, so t is the range in metres."""

    def __init__(self, elevations: np.ndarray, n_azimuth: int, T_world_lidar: np.ndarray):
        el = np.asarray(elevations, np.float64)
        if np.any(np.diff(el) >= 0):
            raise ValueError('lidar beam elevations must be strictly descending')
        self.elevations = el
        self.n_azimuth = int(n_azimuth)
        self.azimuths = np.arange(n_azimuth) * (2 * np.pi / n_azimuth)
        ce, se = np.cos(el)[:, None], np.sin(el)[:, None]
        ca, sa = np.cos(self.azimuths)[None], np.sin(self.azimuths)[None]
        xl, yl, zl = ce * ca, ce * sa, np.broadcast_to(se, (len(el), n_azimuth))
        T = np.asarray(T_world_lidar, np.float64)
        R = T[:3, :3]
        self.R_world_lidar = R
        self.origin = T[:3, 3].copy()
        self.local = (xl, yl, zl)
        self.dx = (R[0, 0] * xl + R[0, 1] * yl + R[0, 2] * zl).astype(np.float32)
        self.dy = (R[1, 0] * xl + R[1, 1] * yl + R[1, 2] * zl).astype(np.float32)
        self.dz = (R[2, 0] * xl + R[2, 1] * yl + R[2, 2] * zl).astype(np.float32)
        self.inv_norm = np.ones(self.dx.shape, np.float32)

    def rects(self, corners: np.ndarray, edges: np.ndarray) -> np.ndarray:
        n = corners.shape[0]
        if n == 0:
            return np.zeros((0, 5), np.int64)
        pl = (corners - self.origin) @ self.R_world_lidar              # lidar frame [N,M,3]
        xy = pl[..., :2]
        # horizontal distance range of the (convex) footprint: nearest point on any projected edge
        a, b = xy[:, edges[:, 0]], xy[:, edges[:, 1]]
        ab = b - a
        w = np.clip(-np.einsum('nek,nek->ne', a, ab) / np.maximum(np.einsum('nek,nek->ne', ab, ab), 1e-12), 0, 1)
        rmin = np.linalg.norm(a + w[..., None] * ab, axis=2).min(axis=1)
        r = np.linalg.norm(xy, axis=2)
        rmax = r.max(axis=1)
        zmax, zmin = pl[..., 2].max(axis=1), pl[..., 2].min(axis=1)
        rmin_ = np.maximum(rmin, 1e-6)
        el_hi = np.arctan2(zmax, np.where(zmax > 0, rmin_, rmax))
        el_lo = np.arctan2(zmin, np.where(zmin < 0, rmin_, rmax))
        el = self.elevations
        r0 = np.searchsorted(-el, -el_hi, side='left')          # rows with el_lo <= elevation <= el_hi
        r1 = np.searchsorted(-el, -el_lo, side='right')
        # azimuth range: the vertices span it when the footprint does not surround the lidar
        az = np.arctan2(xy[..., 1], xy[..., 0])
        ref = np.arctan2(xy[..., 1].mean(axis=1), xy[..., 0].mean(axis=1))
        rel = np.mod(az - ref[:, None] + np.pi, 2 * np.pi) - np.pi
        lo, hi = ref + rel.min(axis=1), ref + rel.max(axis=1)
        step = 2 * np.pi / self.n_azimuth
        a0 = np.floor(lo / step).astype(np.int64)
        a1 = np.ceil(hi / step).astype(np.int64) + 1
        full = (rel.max(axis=1) - rel.min(axis=1) > np.pi - 1e-3) | (rmin < 1e-3) | (a1 - a0 >= self.n_azimuth)
        keep = r1 > r0
        na = self.n_azimuth
        start = np.where(full, 0, np.mod(a0, na))
        stop = np.where(full, na, start + (a1 - a0))
        idx = np.arange(n)
        main = np.stack([idx, r0, r1, start, np.minimum(stop, na)], axis=1)[keep]
        wrap = keep & (stop > na)
        extra = np.stack([idx, r0, r1, np.zeros(n, np.int64), stop - na], axis=1)[wrap]
        return np.concatenate([main, extra]).astype(np.int64)


class Scene:
    """A PrimitiveSet plus the ground, with the global primitive tables the shader needs.

    Global primitive index: quads [0, Nq), cylinders [Nq, Nq+Nc), ellipsoids next, then the five
    ground surfaces (road, sidewalk left, sidewalk right, curb left, curb right)."""

    def __init__(self, prims: PrimitiveSet, ground: Ground, shadows: np.ndarray | None = None,
                 light: Lighting = DEFAULT_LIGHTING):
        """light: the sun and sky terms of the Lambert shading.
        shadows: float64 [N,5] (x, y, yaw, half length, half width) footprints of vehicles standing
        on the road; the road under and around them is darkened (contact shadow / ambient occlusion)."""
        self.prims = prims
        self.ground = ground
        self.light = light
        self.shadows = np.zeros((0, 5)) if shadows is None else np.asarray(shadows, np.float64).reshape(-1, 5)
        q, c, e = prims.quads, prims.cylinders, prims.ellipsoids
        self.n_quads, self.n_cyl, self.n_ell = len(q), len(c), len(e)
        self.cyl_base = self.n_quads
        self.ell_base = self.n_quads + self.n_cyl
        self.ground_base = self.ell_base + self.n_ell
        self.material = np.concatenate([q.material, c.material, e.material,
                                        np.array(ground.materials, np.int32)]).astype(np.int32)
        self.inst = np.concatenate([q.inst, c.inst, e.inst, np.zeros(5, np.int32)]).astype(np.int32)
        self.quad_shade = lambert(q.normal, light).astype(np.float32)
        self._quad_corners = q.corners()
        self._cyl_corners = box_corners(c.center, c.rot, c.half_extents())
        self._ell_corners = box_corners(e.center, e.rot, e.half_extents())

    def cast(self, rays: RayGrid, surface: bool = True) -> GBuffer:
        """Intersect all rays with the scene; `surface=False` skips s, q and shade (lidar)."""
        g = GBuffer(rays.shape, surface)
        self._cast_ground(rays, g)
        o = rays.origin
        q = self.prims.quads
        facing = np.flatnonzero(np.einsum('ij,ij->i', q.normal, o - q.center) > 1e-6)
        jobs = (
            (_quad_params(q, o, self.quad_shade), _quad_math, 0,
             _index_rects(rays.rects(self._quad_corners[facing], QUAD_EDGES), facing)),
            (_cylinder_params(self.prims.cylinders, o, self.light), _cylinder_math, self.cyl_base,
             rays.rects(self._cyl_corners, BOX_EDGES)),
            (_ellipsoid_params(self.prims.ellipsoids, o, self.light), _ellipsoid_math, self.ell_base,
             rays.rects(self._ell_corners, BOX_EDGES)),
        )
        for params, math, base, rects in jobs:
            if len(rects) == 0:
                continue
            area = (rects[:, 2] - rects[:, 1]) * (rects[:, 4] - rects[:, 3])
            for i, r0, r1, c0, c1 in rects[area > SMALL_RECT]:
                rs, cs = slice(r0, r1), slice(c0, c1)
                p = {k: v[i] for k, v in params.items()}
                res = math(rays.dx[rs, cs], rays.dy[rs, cs], rays.dz[rs, cs], rays.inv_norm[rs, cs], p, surface)
                _write_rect(g, rs, cs, base + int(i), *res)
            small = rects[area <= SMALL_RECT]
            if len(small):
                prim, pix = _expand_rects(small, rays.shape[1])
                p = {k: v[prim] for k, v in params.items()}
                res = math(*(a.reshape(-1)[pix] for a in (rays.dx, rays.dy, rays.dz, rays.inv_norm)), p, surface)
                _write_pixels(g, pix, base + prim, *res)
        if surface and len(self.shadows):
            self._contact_shadows(rays, g)
        return g

    def _contact_shadows(self, rays: RayGrid, g: GBuffer) -> None:
        """Darken road pixels under and just around vehicle footprints (fixed to the vehicle)."""
        x, y, yaw, hl, hw = (self.shadows[:, k] for k in range(5))
        hl, hw = hl + CONTACT_MARGIN, hw + CONTACT_MARGIN
        c, s = np.cos(yaw), np.sin(yaw)
        sx = np.array([-1.0, 1.0, 1.0, -1.0])
        sy = np.array([-1.0, -1.0, 1.0, 1.0])
        cx = x[:, None] + c[:, None] * sx * hl[:, None] - s[:, None] * sy * hw[:, None]
        cy = y[:, None] + s[:, None] * sx * hl[:, None] + c[:, None] * sy * hw[:, None]
        corners = np.stack([cx, cy, np.zeros_like(cx)], axis=2)
        rects = rays.rects(corners, QUAD_EDGES)
        if len(rects) == 0:
            return
        k, pix = _expand_rects(rects, rays.shape[1])
        road = g.prim.reshape(-1)[pix] == self.ground_base
        k, pix = k[road], pix[road]
        if len(pix) == 0:
            return
        t = g.t.reshape(-1)[pix]
        px = rays.origin[0] + t * rays.dx.reshape(-1)[pix] - x[k]
        py = rays.origin[1] + t * rays.dy.reshape(-1)[pix] - y[k]
        lx = np.abs(c[k] * px + s[k] * py)
        ly = np.abs(-s[k] * px + c[k] * py)
        inside = np.clip(np.minimum(hl[k] - lx, hw[k] - ly) / (2 * CONTACT_MARGIN), 0, 1)
        factor = np.ones(g.shade.size, np.float32)
        np.minimum.at(factor, pix, (1 - CONTACT_DARKNESS * inside).astype(np.float32))
        g.shade *= factor.reshape(g.shade.shape)

    # ---- ground ---------------------------------------------------------------------------------
    def _cast_ground(self, rays: RayGrid, g: GBuffer) -> None:
        down = rays.dz < -1e-6
        rows = np.flatnonzero(down.any(axis=1))
        if len(rows) == 0:
            return
        sl = slice(rows[0], rows[-1] + 1)
        dx, dy, dz = rays.dx[sl], rays.dy[sl], rays.dz[sl]
        down = down[sl]
        ox, oy, oz = (float(v) for v in rays.origin)
        gr = self.ground
        rh, hc = gr.road_half, gr.curb_height
        if abs(oy) >= rh or oz <= hc:
            raise ValueError('ray origin must be above the road, between the curbs')
        with np.errstate(all='ignore'):
            inv_dz = np.float32(1.0) / np.where(down, dz, np.float32(-1e-30))
            t0 = np.float32(-oz) * inv_dz                        # road plane z = 0
            y0 = oy + t0 * dy
            t1 = np.float32(hc - oz) * inv_dz                    # sidewalk plane z = hc
            y1 = oy + t1 * dy
            road = down & (np.abs(y0) < rh)
            side = down & ~road & (np.abs(y1) >= rh)
            curb = down & ~road & ~side
            left_c = y0 > 0
            tc = (np.where(left_c, np.float32(rh), np.float32(-rh)) - oy) / np.where(dy == 0, np.float32(1e-30), dy)
        t = np.where(road, t0, np.where(side, t1, tc))
        t = np.where(down, t, np.float32(np.inf))
        base = self.ground_base
        left_s = y1 > 0
        prim = np.where(road, base, np.where(side, np.where(left_s, base + 1, base + 2),
                                              np.where(left_c, base + 3, base + 4)))
        prim = np.where(down, prim, -1).astype(np.int32)
        g.t[sl] = t
        g.prim[sl] = prim
        inv_n = rays.inv_norm[sl]
        g.cos[sl] = np.where(curb, np.abs(dy), np.abs(dz)) * inv_n
        if g.surface:
            with np.errstate(all='ignore'):             # rays that miss carry t = inf
                g.s[sl] = ox + t * dx
                g.q[sl] = np.where(curb, oz + t * dz, oy + t * dy)
            sh_top = np.float32(lambert(np.array([0.0, 0.0, 1.0]), self.light))
            sh_l = np.float32(lambert(np.array([0.0, -1.0, 0.0]), self.light))   # left curb faces the road (-y)
            sh_r = np.float32(lambert(np.array([0.0, 1.0, 0.0]), self.light))
            g.shade[sl] = np.where(curb, np.where(left_c, sh_l, sh_r), sh_top)

# ---- primitive math ---------------------------------------------------------------------------------
# Each *_params() returns per-primitive float32 parameter arrays for one ray origin; each *_math()
# intersects rays with primitives elementwise: parameters are either scalars (one primitive over a
# block of rays) or arrays aligned with the rays (many small primitives batched together). They return
# (t, hit, cos, s, q, shade) with s, q, shade None when surface=False.

SMALL_RECT = 384      # primitives covering at most this many rays are batched together
CONTACT_MARGIN = 0.3  # metres around a vehicle footprint over which its contact shadow fades out
CONTACT_DARKNESS = 0.55


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _index_rects(rects: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Map the primitive column of rects from a subset position back to the full index."""
    out = rects.copy()
    out[:, 0] = index[rects[:, 0]]
    return out


def _expand_rects(rects: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(primitive int64 [N], flat ray index int64 [N]) for every ray inside every rect [K,5]."""
    h = rects[:, 2] - rects[:, 1]
    w = rects[:, 4] - rects[:, 3]
    area = h * w
    k = np.repeat(np.arange(len(rects)), area)
    j = np.arange(area.sum()) - np.repeat(np.cumsum(area) - area, area)
    wk = w[k]
    pix = (rects[k, 1] + j // wk) * width + rects[k, 3] + j % wk
    return rects[k, 0], pix


def _quad_params(q, origin: np.ndarray, shade: np.ndarray) -> dict:
    rel = origin - q.center
    return {'n0': _f32(q.normal[:, 0]), 'n1': _f32(q.normal[:, 1]), 'n2': _f32(q.normal[:, 2]),
            'a0': _f32(q.e1[:, 0]), 'a1': _f32(q.e1[:, 1]), 'a2': _f32(q.e1[:, 2]),
            'b0': _f32(q.e2[:, 0]), 'b1': _f32(q.e2[:, 1]), 'b2': _f32(q.e2[:, 2]),
            'dist': _f32(-np.einsum('ij,ij->i', q.normal, rel)),
            'so': _f32(np.einsum('ij,ij->i', q.e1, rel)), 'qo': _f32(np.einsum('ij,ij->i', q.e2, rel)),
            'ha': _f32(q.half[:, 0]), 'hb': _f32(q.half[:, 1]), 'shade': _f32(shade)}


def _quad_math(dx, dy, dz, inv_norm, p, surface):
    nd = p['n0'] * dx + p['n1'] * dy + p['n2'] * dz
    with np.errstate(all='ignore'):
        t = p['dist'] / nd
    s = p['so'] + t * (p['a0'] * dx + p['a1'] * dy + p['a2'] * dz)
    q = p['qo'] + t * (p['b0'] * dx + p['b1'] * dy + p['b2'] * dz)
    hit = (t > 0) & (np.abs(s) <= p['ha']) & (np.abs(q) <= p['hb'])
    cos = -nd * inv_norm
    if not surface:
        return t, hit, cos, None, None, None
    return t, hit, cos, s + p['ha'], q + p['hb'], p['shade']


def _local_params(center: np.ndarray, rot: np.ndarray, origin: np.ndarray, light: Lighting) -> dict:
    """Ray origin and the world->local rotation of each primitive, plus the sun and up in local axes
    (and the lighting terms, per primitive so the batched path can index them like the rest)."""
    o = np.einsum('nji,nj->ni', rot, origin - center)            # R^T (origin - centre)
    sun = np.einsum('nji,j->ni', rot, np.asarray(light.sun_dir))
    n = len(center)
    p = {f'r{j}{k}': _f32(rot[:, j, k]) for j in range(3) for k in range(3)}
    p.update({'ox': _f32(o[:, 0]), 'oy': _f32(o[:, 1]), 'oz': _f32(o[:, 2]),
              'sx': _f32(sun[:, 0]), 'sy': _f32(sun[:, 1]), 'sz': _f32(sun[:, 2]),
              'amb': np.full(n, light.ambient, np.float32), 'skyk': np.full(n, light.skylight, np.float32),
              'sunk': np.full(n, light.sun, np.float32)})
    return p


def _to_local(dx, dy, dz, p):
    return (p['r00'] * dx + p['r10'] * dy + p['r20'] * dz,
            p['r01'] * dx + p['r11'] * dy + p['r21'] * dz,
            p['r02'] * dx + p['r12'] * dy + p['r22'] * dz)


def _lambert_local(nx, ny, nz, p):
    """Shading factor from local normals (sun and world up expressed in local axes)."""
    sun = np.maximum(nx * p['sx'] + ny * p['sy'] + nz * p['sz'], np.float32(0))
    up = nx * p['r20'] + ny * p['r21'] + nz * p['r22']
    return p['amb'] + p['sunk'] * sun + p['skyk'] * up


def _cylinder_params(c, origin: np.ndarray, light: Lighting) -> dict:
    p = _local_params(c.center, c.rot, origin, light)
    oz = p['oz']
    h = _f32(c.half_height)
    p.update({'r': _f32(c.radius), 'h': h, 'cc': _f32(p['ox'].astype(np.float64) ** 2 + p['oy'].astype(np.float64) ** 2
                                                     - c.radius ** 2),
              'capz': _f32(np.where(np.abs(oz) > h, np.sign(oz) * h, np.nan))})
    return p


def _cylinder_math(dx, dy, dz, inv_norm, p, surface):
    lx, ly, lz = _to_local(dx, dy, dz, p)
    ox, oy, oz, r, h = p['ox'], p['oy'], p['oz'], p['r'], p['h']
    a = lx * lx + ly * ly
    b = ox * lx + oy * ly
    disc = b * b - a * p['cc']
    with np.errstate(all='ignore'):
        ts = (-b - np.sqrt(np.maximum(disc, np.float32(0)))) / a
        side = (disc > 0) & (ts > 0) & (np.abs(oz + ts * lz) <= h)
        tc = (p['capz'] - oz) / lz                  # NaN where the origin is level with the side
        xc, yc = ox + tc * lx, oy + tc * ly
        cap = (tc > 0) & (xc * xc + yc * yc <= r * r) & ~side
        t = np.where(side, ts, tc)
        px, py = ox + t * lx, oy + t * ly
        inv_r = np.float32(1) / r
        nx = np.where(cap, np.float32(0), px * inv_r)
        ny = np.where(cap, np.float32(0), py * inv_r)
        nz = np.where(cap, np.sign(p['capz']), np.float32(0))
    hit = side | cap
    cos = np.abs(nx * lx + ny * ly + nz * lz) * inv_norm
    if not surface:
        return t, hit, cos, None, None, None
    with np.errstate(all='ignore'):
        s = np.where(cap, px, np.arctan2(py, px) * r)
        q = np.where(cap, py, oz + t * lz + h)
        shade = _lambert_local(nx, ny, nz, p)
    return t, hit, cos, s, q, shade


def _ellipsoid_params(e, origin: np.ndarray, light: Lighting) -> dict:
    p = _local_params(e.center, e.rot, origin, light)
    inv = 1.0 / e.radii
    o_s = np.stack([p['ox'], p['oy'], p['oz']], axis=1) * inv
    p.update({'ix': _f32(inv[:, 0]), 'iy': _f32(inv[:, 1]), 'iz': _f32(inv[:, 2]),
              'cc': _f32((o_s ** 2).sum(axis=1) - 1.0), 'rxy': _f32(0.5 * (e.radii[:, 0] + e.radii[:, 1])),
              'rz': _f32(e.radii[:, 2])})
    return p


def _ellipsoid_math(dx, dy, dz, inv_norm, p, surface):
    lx, ly, lz = _to_local(dx, dy, dz, p)
    ix, iy, iz = p['ix'], p['iy'], p['iz']
    ox, oy, oz = p['ox'], p['oy'], p['oz']
    sx, sy, sz = lx * ix, ly * iy, lz * iz
    a = sx * sx + sy * sy + sz * sz
    b = ox * ix * sx + oy * iy * sy + oz * iz * sz
    disc = b * b - a * p['cc']
    with np.errstate(all='ignore'):
        t = (-b - np.sqrt(np.maximum(disc, np.float32(0)))) / a
    hit = (disc > 0) & (t > 0)
    px, py, pz = ox + t * lx, oy + t * ly, oz + t * lz
    nx, ny, nz = px * ix * ix, py * iy * iy, pz * iz * iz
    inv = np.float32(1) / np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), np.float32(1e-9))
    nx, ny, nz = nx * inv, ny * inv, nz * inv
    cos = np.abs(nx * lx + ny * ly + nz * lz) * inv_norm
    if not surface:
        return t, hit, cos, None, None, None
    return t, hit, cos, np.arctan2(py, px) * p['rxy'], pz + p['rz'], _lambert_local(nx, ny, nz, p)


def _write_rect(g: GBuffer, rs: slice, cs: slice, prim: int, t, hit, cos, s, q, shade) -> None:
    """Z-test and store one primitive's hits over a block of rays."""
    zb = g.t[rs, cs]
    hit &= t < zb
    if not hit.any():
        return
    np.copyto(zb, t, where=hit)
    np.copyto(g.prim[rs, cs], prim, where=hit)
    np.copyto(g.cos[rs, cs], cos, where=hit)
    if g.surface:
        np.copyto(g.s[rs, cs], s, where=hit)
        np.copyto(g.q[rs, cs], q, where=hit)
        np.copyto(g.shade[rs, cs], shade, where=hit)


def _write_pixels(g: GBuffer, pix: np.ndarray, prim: np.ndarray, t, hit, cos, s, q, shade) -> None:
    """Z-test and store hits of many primitives over scattered rays (the nearest hit per ray wins)."""
    h = np.flatnonzero(hit)
    if len(h) == 0:
        return
    order = h[np.lexsort((t[h], pix[h]))]                       # by ray, nearest first
    ps = pix[order]
    first = np.ones(len(order), bool)
    first[1:] = ps[1:] != ps[:-1]
    sel = order[first]
    zb = g.t.reshape(-1)
    sel = sel[t[sel] < zb[pix[sel]]]
    px = pix[sel]
    zb[px] = t[sel]
    g.prim.reshape(-1)[px] = prim[sel]
    g.cos.reshape(-1)[px] = cos[sel]
    if g.surface:
        g.s.reshape(-1)[px] = s[sel]
        g.q.reshape(-1)[px] = q[sel]
        g.shade.reshape(-1)[px] = shade if np.ndim(shade) == 0 else shade[sel]
