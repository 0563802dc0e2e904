"""Deferred shading: turns a camera G-buffer into an RGB image.

albedo = material colour x (1 + contrast x fractal noise), with painted patterns (lane markings,
paving joints, windows, car lights, ...) drawn in surface coordinates and box-filtered by the pixel
footprint; colour = albedo x Lambert shading of the scene's sun (render.Lighting). Sky pixels get a direction-only
gradient with clouds (it is infinitely far, so it is consistent under camera translation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import materials as M
from .materials import FrozenMaterials
from .render import CameraRays, GBuffer, Scene
from .textures import MipTexture, box_coverage, hash_cells, periodic_offset

# second noise lookup: rotated by ~37 degrees and 4.3x coarser, so the sum never repeats
_ROT_C, _ROT_S, _COARSE = np.float32(0.8), np.float32(0.6), np.float32(0.23)
SKY_HORIZON = np.array([0.78, 0.84, 0.90], np.float32)
SKY_ZENITH = np.array([0.36, 0.55, 0.82], np.float32)
PAINT = np.array([0.92, 0.92, 0.88], np.float32)


@dataclass
class RoadPaint:
    """Where lane markings go (world metres). The road centre line is y = 0; driving lanes of
    width lane_width on each side, then a parking strip; crossings are zebra stripes at these x."""
    lanes_per_dir: int
    lane_width: float
    crossings: tuple[float, ...] = ()
    dash_length: float = 3.0
    dash_period: float = 9.0


def _mix(base: np.ndarray, color, cov: np.ndarray) -> np.ndarray:
    """base float32 [n,3] blended towards color ([3] or [n,3]) by coverage cov [n]."""
    c = cov[:, None]
    return base * (1 - c) + np.asarray(color, np.float32) * c


def _road(alb, x, y, fp, noise, paint: RoadPaint):
    cov = np.zeros(len(x), np.float32)
    lw = np.float32(paint.lane_width)
    n = paint.lanes_per_dir
    # centre line (double when two lanes per direction)
    if n >= 2:
        cov = np.maximum(cov, box_coverage(np.abs(y) - np.float32(0.18), np.float32(0.07), fp))
    else:
        cov = np.maximum(cov, box_coverage(y, np.float32(0.08), fp))
    # dashed lane dividers
    for k in range(1, n):
        dash = box_coverage(periodic_offset(x, np.float32(paint.dash_period)), np.float32(paint.dash_length / 2), fp)
        cov = np.maximum(cov, box_coverage(np.abs(y) - lw * k, np.float32(0.07), fp) * dash)
    # solid edge lines between driving lanes and parking strips
    cov = np.maximum(cov, box_coverage(np.abs(y) - lw * n, np.float32(0.07), fp))
    for xc in paint.crossings:
        band = box_coverage(x - np.float32(xc), np.float32(2.0), fp)
        stripes = box_coverage(periodic_offset(y, np.float32(1.0)), np.float32(0.25), fp)
        cov = np.maximum(cov, band * stripes * (np.abs(y) < lw * n + 0.3))
    paint_col = PAINT[None] * (1 + np.float32(0.08) * noise[:, None])
    return _mix(alb, paint_col, cov * np.float32(0.9))


# Pattern painters below work on the compacted pixels of one pattern kind at once: s, q, fp are
# float32 [n]; p is float32 [n, N_PARAMS] (each pixel's material parameters), seed uint32 [n] and
# color2 float32 [n,3] likewise; alb float32 [n,3] is returned updated.

def _sidewalk(alb, x, y, fp, p, seed):
    sl, sw = p[:, 0], p[:, 1]
    joints = np.maximum(box_coverage(periodic_offset(x, sl), np.float32(0.012), fp),
                        box_coverage(periodic_offset(y, sw), np.float32(0.012), fp))
    tint = hash_cells(np.floor(x / sl).astype(np.int32), np.floor(y / sw).astype(np.int32), seed)
    amp = np.clip(1 - fp / sl, 0, 1) * np.float32(0.22)
    alb = alb * (1 + amp * (tint - np.float32(0.5)))[:, None]
    return alb * (1 - np.float32(0.5) * joints)[:, None]


def _facade(alb, s, q, fp, p, seed, color2):
    cw, fh, ww, wh, sill, shop = (p[:, k] for k in range(6))
    ls = periodic_offset(s - cw / 2, cw)
    floor_i = np.floor(q / fh)
    fz = q - fh * floor_i
    cell_i = np.floor(s / cw).astype(np.int32)
    shop_floor = (floor_i < 0.5) & (shop > 0.5)          # shop windows on ground floors
    hw = np.where(shop_floor, cw * np.float32(0.42), ww / 2)
    hh = np.where(shop_floor, (fh - np.float32(0.9)) / 2, wh / 2)
    cz = np.where(shop_floor, np.float32(0.5) + hh, sill + wh / 2)
    dz = fz - cz
    win = box_coverage(ls, hw, fp) * box_coverage(dz, hh, fp)
    frame = box_coverage(ls, hw + np.float32(0.09), fp) * box_coverage(dz, hh + np.float32(0.09), fp)
    h = hash_cells(cell_i, floor_i.astype(np.int32), seed)
    g = np.float32(0.10) + np.float32(0.22) * h
    glass = np.stack([g, g * np.float32(1.12), g * np.float32(1.3)], axis=1)
    lit = h > 0.88                                  # curtains / lit rooms
    glass[lit] = np.float32([0.78, 0.70, 0.52]) * (0.8 + 0.2 * h[lit, None])
    mull = box_coverage(ls, np.float32(0.035), fp) * (hw > 0.5)      # mullion of wide windows
    band = box_coverage(periodic_offset(q, fh), np.float32(0.10), fp) * np.float32(0.35)   # cornices
    alb = alb * (1 - band)[:, None]
    alb = _mix(alb, color2, np.clip(frame - win, 0, 1))
    alb = _mix(alb, glass, win * (1 - mull))
    return _mix(alb, color2, win * mull)


def _car_rear(alb, s, q, fp, p):
    w, hb = p[:, 0], p[:, 1]
    c = s - w / 2
    lights = (box_coverage(np.abs(c) - (w / 2 - np.float32(0.24)), np.float32(0.15), fp)
              * box_coverage(q - (hb - np.float32(0.2)), np.float32(0.1), fp))
    plate = box_coverage(c, np.float32(0.26), fp) * box_coverage(q - np.float32(0.25), np.float32(0.06), fp)
    bumper = box_coverage(q, np.float32(0.13), fp)
    alb = _mix(alb, (0.08, 0.08, 0.08), bumper * np.float32(0.8))
    alb = _mix(alb, (0.75, 0.06, 0.05), lights)
    return _mix(alb, (0.92, 0.92, 0.86), plate)


def _car_front(alb, s, q, fp, p):
    w, hb = p[:, 0], p[:, 1]
    c = s - w / 2
    lights = (box_coverage(np.abs(c) - (w / 2 - np.float32(0.25)), np.float32(0.16), fp)
              * box_coverage(q - (hb - np.float32(0.17)), np.float32(0.08), fp))
    grille = box_coverage(c, np.float32(0.38), fp) * box_coverage(q - hb * np.float32(0.55), np.float32(0.1), fp)
    plate = box_coverage(c, np.float32(0.26), fp) * box_coverage(q - np.float32(0.22), np.float32(0.06), fp)
    alb = _mix(alb, (0.08, 0.08, 0.08), box_coverage(q, np.float32(0.12), fp) * np.float32(0.8))
    alb = _mix(alb, (0.05, 0.05, 0.06), grille)
    alb = _mix(alb, (0.85, 0.86, 0.88), lights)
    return _mix(alb, (0.92, 0.92, 0.86), plate)


def _car_side(alb, s, q, fp, p):
    length, hb = p[:, 0], p[:, 1]
    seams = np.maximum(box_coverage(s - length * np.float32(0.40), np.float32(0.012), fp),
                       box_coverage(s - length * np.float32(0.66), np.float32(0.012), fp))
    seams = seams * (q > hb * 0.25)
    trim = box_coverage(q - hb * np.float32(0.55), np.float32(0.02), fp)
    sill = box_coverage(q, np.float32(0.09), fp)
    handle = (box_coverage(q - hb * np.float32(0.68), np.float32(0.025), fp)
              * np.maximum(box_coverage(s - length * np.float32(0.47), np.float32(0.09), fp),
                           box_coverage(s - length * np.float32(0.72), np.float32(0.09), fp)))
    alb = _mix(alb, (0.06, 0.06, 0.06), np.maximum(np.maximum(seams, sill * np.float32(0.8)), handle * np.float32(0.6)))
    return alb * (1 + np.float32(0.15) * trim)[:, None]


def _glass(alb, s, q, fp, p):
    length, height = p[:, 0], p[:, 1]
    grad = np.clip(q / np.maximum(height, np.float32(0.1)), 0, 1)
    alb = alb * (np.float32(0.6) + np.float32(1.1) * grad * grad)[:, None]     # sky reflected towards the top
    pillar = box_coverage(s - length * np.float32(0.5), np.float32(0.06), fp) * (length > 0)   # B-pillar, sides
    alb = _mix(alb, (0.05, 0.05, 0.05), pillar)
    frame = np.maximum(box_coverage(q, np.float32(0.04), fp), box_coverage(q - height, np.float32(0.04), fp))
    return _mix(alb, (0.04, 0.04, 0.04), frame)


def _sign(alb, s, q, fp, p, color2):
    w, h = p[:, 0], p[:, 1]
    inner = (box_coverage(s - w / 2, w / 2 - np.float32(0.05), fp)
             * box_coverage(q - h / 2, h / 2 - np.float32(0.05), fp))
    stripe = box_coverage(q - h / 2, h * np.float32(0.12), fp) * box_coverage(s - w / 2, w * np.float32(0.32), fp)
    alb = _mix(alb, (0.95, 0.95, 0.95), 1 - inner)
    return _mix(alb, color2, stripe)


def shade_camera(scene: Scene, g: GBuffer, rays: CameraRays, mats: FrozenMaterials, tex: MipTexture,
                 paint: RoadPaint, sky: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """RGB float32 [H,W,3] in [0,1] from a camera G-buffer; sky: (horizon, zenith) RGB of the sky."""
    H, W = g.t.shape
    out = np.empty((H * W, 3), np.float32)
    prim = g.prim.reshape(-1)
    hit = np.flatnonzero(prim >= 0)
    sky_idx = np.flatnonzero(prim < 0)
    if len(sky_idx):
        out[sky_idx] = _sky(rays, sky_idx, tex, *(sky or (SKY_HORIZON, SKY_ZENITH)))
    if len(hit) == 0:
        return out.reshape(H, W, 3)

    # order the hit pixels by pattern kind, so each painter works on one contiguous slice
    mat = scene.material[prim[hit]]
    kind = mats.kind8[mat]
    order = np.argsort(kind, kind='stable')
    hit, mat, kind = hit[order], mat[order], kind[order]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(kind, minlength=M.N_KINDS))])

    t = g.t.reshape(-1)[hit]
    s = g.s.reshape(-1)[hit]
    q = g.q.reshape(-1)[hit]
    cos = g.cos.reshape(-1)[hit]
    fp = t / rays.inv_norm.reshape(-1)[hit] * np.float32(rays.pixel_angle) / np.maximum(cos, np.float32(0.04))

    ms = mats.surface[mat]                                     # [n,8], see FrozenMaterials.surface
    inv_texel = ms[:, 0]
    u = s * inv_texel + ms[:, 1]
    v = q * inv_texel + ms[:, 2]
    fpt = fp * inv_texel
    n1 = tex.sample(u, v, fpt)
    u2 = (_ROT_C * u - _ROT_S * v) * _COARSE + np.float32(37.25)
    v2 = (_ROT_S * u + _ROT_C * v) * _COARSE + np.float32(91.75)
    n2 = tex.sample(u2, v2, fpt * _COARSE)
    noise = np.float32(0.6) * n1 + ms[:, 4] * n2
    mod = np.float32(1.0) + ms[:, 3] * noise
    np.clip(mod, np.float32(0.15), np.float32(2.0), out=mod)
    alb = ms[:, 5:8] * mod[:, None]

    for k in range(M.N_KINDS):
        lo, hi = bounds[k], bounds[k + 1]
        if k == M.PLAIN or hi == lo:
            continue
        sl = slice(lo, hi)
        m = mat[sl]
        a, ss, qs, f = alb[sl], s[sl], q[sl], fp[sl]
        if k == M.ROAD:
            a = _road(a, ss, qs, f, noise[sl], paint)
        elif k == M.FOLIAGE:
            mix = np.clip(np.float32(0.5) + np.float32(0.8) * n2[sl], 0, 1)
            a = _mix(a, mats.color2[m] * mod[sl, None], mix)
        elif k == M.SIDEWALK:
            a = _sidewalk(a, ss, qs, f, mats.params[m], mats.seed32[m])
        elif k == M.FACADE:
            a = _facade(a, ss, qs, f, mats.params[m], mats.seed32[m], mats.color2[m])
        elif k == M.CAR_REAR:
            a = _car_rear(a, ss, qs, f, mats.params[m])
        elif k == M.CAR_FRONT:
            a = _car_front(a, ss, qs, f, mats.params[m])
        elif k == M.CAR_SIDE:
            a = _car_side(a, ss, qs, f, mats.params[m])
        elif k == M.GLASS:
            a = _glass(a, ss, qs, f, mats.params[m])
        elif k == M.SIGN:
            a = _sign(a, ss, qs, f, mats.params[m], mats.color2[m])
        alb[sl] = a
    shade = g.shade.reshape(-1)[hit]
    out[hit] = alb * shade[:, None]
    np.clip(out, 0, 1, out=out)
    return out.reshape(H, W, 3)


def _sky(rays: CameraRays, idx: np.ndarray, tex: MipTexture, horizon: np.ndarray, zenith: np.ndarray) -> np.ndarray:
    dx, dy, dz = (a.reshape(-1)[idx] for a in (rays.dx, rays.dy, rays.dz))
    inv = rays.inv_norm.reshape(-1)[idx]
    el = np.clip(dz * inv, -1, 1)                             # sin(elevation)
    k = np.clip(el * np.float32(2.2), 0, 1)[:, None]
    col = horizon * (1 - k) + zenith * k
    az = np.arctan2(dy, dx)
    scale = np.float32(60.0)                                   # texels per radian
    fp = np.full(len(idx), np.float32(rays.pixel_angle) * scale, np.float32)
    cloud = tex.sample(az * scale * np.float32(0.6), np.arcsin(el) * scale * np.float32(1.8) + np.float32(11.0), fp)
    cover = np.clip((cloud - np.float32(0.2)) * np.float32(0.9), 0, 0.75)[:, None]
    return col * (1 - cover) + np.float32(0.96) * cover
