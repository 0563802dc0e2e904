"""The static street: road cross-section, sidewalks, building facades, trees, street lights, signs.

World frame: x along the road (the ego drives towards +x), y to the left, z up, metres; the road
centre line is y = 0 and traffic keeps right (ego lanes at y < 0, oncoming lanes at y > 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import materials as M
from .materials import MaterialTable, jitter_color
from .primitives import PrimitiveBuilder, PrimitiveSet, rot_z
from .render import Ground

SKYLINE_HEIGHT = 45.0


@dataclass
class StreetLayout:
    """Cross-section and crossings of one street (metres)."""
    lanes_per_dir: int
    lane_width: float
    parking_width: float
    curb_height: float
    sidewalk_left: float
    sidewalk_right: float
    crossings: tuple[float, ...]

    @property
    def road_half(self) -> float:
        return self.lanes_per_dir * self.lane_width + self.parking_width

    def lane_y(self, lane: int, oncoming: bool = False) -> float:
        """Centre y of driving lane `lane`, counted from the centre line outwards (0 = innermost)."""
        y = (lane + 0.5) * self.lane_width
        return y if oncoming else -y

    def parking_y(self, left: bool) -> float:
        y = self.lanes_per_dir * self.lane_width + self.parking_width / 2
        return y if left else -y

    def sidewalk(self, left: bool) -> float:
        return self.sidewalk_left if left else self.sidewalk_right


def random_layout(rng: np.random.Generator) -> StreetLayout:
    """A random cross-section (1 or 2 lanes per direction), without crossings yet."""
    lanes = int(rng.choice([1, 2], p=[0.45, 0.55]))
    return StreetLayout(lanes_per_dir=lanes, lane_width=float(rng.uniform(3.2, 3.6)),
                        parking_width=float(rng.uniform(2.2, 2.5)), curb_height=float(rng.uniform(0.12, 0.16)),
                        sidewalk_left=float(rng.uniform(3.0, 5.5)), sidewalk_right=float(rng.uniform(3.0, 5.5)),
                        crossings=())


def random_crossings(rng: np.random.Generator, x_from: float, x_to: float) -> tuple[float, ...]:
    """One or two zebra crossings in [x_from, x_to], at least 30 m apart."""
    xs = np.sort(rng.uniform(x_from, x_to, int(rng.integers(1, 3))))
    if len(xs) == 2 and xs[1] - xs[0] < 30.0:
        xs = xs[:1]
    return tuple(float(x) for x in xs)


def ground_materials(rng: np.random.Generator, mats: MaterialTable) -> tuple[int, int, int, int, int]:
    asphalt = np.full(3, rng.uniform(0.27, 0.36)) + np.array([0.0, 0.0, 0.01])
    road = mats.add(M.ROAD, asphalt, contrast=0.24, texel=0.006, coarse=0.25, seed=int(rng.integers(1 << 30)))
    slab = (float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.3, 0.6)))
    sw = jitter_color(rng, (0.62, 0.60, 0.57), 0.05)
    side_l = mats.add(M.SIDEWALK, sw, contrast=0.22, texel=0.01, seed=int(rng.integers(1 << 30)), params=slab)
    side_r = mats.add(M.SIDEWALK, sw, contrast=0.22, texel=0.01, seed=int(rng.integers(1 << 30)), params=slab)
    curb = (0.70, 0.69, 0.66)
    curb_l = mats.add(M.PLAIN, curb, contrast=0.25, texel=0.008, seed=int(rng.integers(1 << 30)))
    curb_r = mats.add(M.PLAIN, curb, contrast=0.25, texel=0.008, seed=int(rng.integers(1 << 30)))
    return road, side_l, side_r, curb_l, curb_r


def build_street(rng: np.random.Generator, layout: StreetLayout, x_lo: float, x_hi: float,
                 mats: MaterialTable) -> tuple[PrimitiveSet, Ground, list[tuple[float, float, float]]]:
    """Static primitives for x in [x_lo, x_hi] plus closing skylines beyond both ends.

    Returns (primitives, ground, obstacles) where obstacles are (x, y, radius) footprints on the
    sidewalks (trunks, poles) that pedestrians must avoid.
    """
    b = PrimitiveBuilder()
    obstacles: list[tuple[float, float, float]] = []
    ground = Ground(layout.road_half, layout.curb_height, ground_materials(rng, mats))
    for left in (True, False):
        _buildings(rng, b, layout, left, x_lo, x_hi, mats)
        _street_furniture(rng, b, layout, left, x_lo, x_hi, mats, obstacles)
    _skyline(rng, b, x_lo, x_hi, layout, mats)
    return b.build(), ground, obstacles


def _facade_material(rng: np.random.Generator, mats: MaterialTable, cell_w: float, floor_h: float) -> int:
    col = jitter_color(rng, M.FACADE_COLORS[rng.integers(len(M.FACADE_COLORS))], 0.05)
    trim = np.clip(col * rng.uniform(0.55, 1.25) + rng.normal(0, 0.04, 3), 0.05, 0.95)
    win_w = float(rng.uniform(0.35, 0.6)) * cell_w
    win_h = float(rng.uniform(0.45, 0.6)) * floor_h
    sill = float(rng.uniform(0.22, 0.3)) * floor_h
    shop = float(rng.random() < 0.4)
    return mats.add(M.FACADE, col, color2=trim, contrast=float(rng.uniform(0.16, 0.28)),
                    texel=float(rng.uniform(0.012, 0.025)), coarse=float(rng.uniform(0.35, 0.6)),
                    seed=int(rng.integers(1 << 30)),
                    params=(cell_w, floor_h, win_w, win_h, sill, shop))


def _buildings(rng, b: PrimitiveBuilder, layout: StreetLayout, left: bool, x_lo: float, x_hi: float,
               mats: MaterialTable) -> None:
    sgn = 1.0 if left else -1.0
    front0 = layout.road_half + layout.sidewalk(left)
    x = x_lo - 30.0
    while x < x_hi + 30.0:
        cell_w = float(rng.uniform(2.6, 4.2))
        floor_h = float(rng.uniform(2.9, 3.6))
        n_cells = int(rng.integers(3, 9))
        length = n_cells * cell_w
        floors = int(rng.integers(2, 8))
        height = floors * floor_h + float(rng.uniform(0.4, 1.2))
        depth = float(rng.integers(3, 6)) * cell_w
        setback = float(rng.choice([0.0, 0.0, rng.uniform(0.5, 4.0)]))
        mat = _facade_material(rng, mats, cell_w, floor_h)
        yf = front0 + setback
        center = (x + length / 2, sgn * (yf + depth / 2), height / 2)
        # axis-aligned box; the road-facing face's coordinates run along x (s) and up from z=0 (q)
        b.box(center, (length / 2, depth / 2, height / 2), mat, faces=(0, 1, 2, 3))
        if setback > 1.2 and rng.random() < 0.6:
            hedge = mats.add(M.FOLIAGE, jitter_color(rng, (0.20, 0.36, 0.14)), color2=(0.30, 0.45, 0.18),
                             contrast=0.55, texel=0.015, seed=int(rng.integers(1 << 30)))
            hh = float(rng.uniform(0.6, 1.3))
            b.box((x + length / 2, sgn * (front0 + 0.45), layout.curb_height + hh / 2),
                  (length / 2 - 0.3, 0.4, hh / 2), hedge, faces=(0, 1, 2, 3, 4))
        gap = 0.0 if rng.random() < 0.55 else float(rng.uniform(1.5, 7.0))
        x += length + gap
    # continuous backdrop behind the row, seen through the gaps
    back = mats.add(M.FACADE, jitter_color(rng, (0.62, 0.60, 0.58), 0.05), color2=(0.5, 0.48, 0.46),
                    contrast=0.3, texel=0.03, seed=int(rng.integers(1 << 30)),
                    params=(3.4, 3.2, 1.6, 1.7, 0.9, 0.0))
    yb = front0 + 30.0
    length = (x_hi - x_lo) + 160.0
    n = np.array([0.0, -sgn, 0.0])
    e2 = np.array([0.0, 0.0, 1.0])
    e1 = np.cross(e2, n)
    b.quad(((x_lo + x_hi) / 2, sgn * yb, 14.0), e1, e2, (length / 2, 14.0), back)


def _street_furniture(rng, b: PrimitiveBuilder, layout: StreetLayout, left: bool, x_lo: float, x_hi: float,
                      mats: MaterialTable, obstacles: list) -> None:
    sgn = 1.0 if left else -1.0
    hc = layout.curb_height
    y_edge = layout.road_half + 0.7
    pole_mat = mats.add(M.PLAIN, (0.42, 0.44, 0.45), contrast=0.3, texel=0.01, seed=int(rng.integers(1 << 30)))
    x = x_lo + float(rng.uniform(0, 10))
    while x < x_hi:
        if any(abs(x - xc) < 4.0 for xc in layout.crossings):
            x += 4.0
            continue
        kind = rng.choice(['tree', 'lamp', 'sign', 'none'], p=[0.5, 0.28, 0.1, 0.12])
        y = sgn * (y_edge + float(rng.uniform(-0.1, 0.2)))
        if kind == 'tree':
            bark = mats.add(M.PLAIN, jitter_color(rng, (0.33, 0.25, 0.18)), contrast=0.45, texel=0.01,
                            seed=int(rng.integers(1 << 30)))
            leaves = mats.add(M.FOLIAGE, jitter_color(rng, (0.22, 0.38, 0.14), 0.08),
                              color2=jitter_color(rng, (0.38, 0.50, 0.20), 0.08), contrast=0.6,
                              texel=float(rng.uniform(0.015, 0.03)), seed=int(rng.integers(1 << 30)))
            r = float(rng.uniform(0.12, 0.2))
            th = float(rng.uniform(2.8, 3.8))
            b.cylinder((x, y, hc + th / 2), r, th / 2, bark)
            rx = float(rng.uniform(1.4, 2.4))
            rz = float(rng.uniform(1.4, 2.4))   # canopy bottom stays above 2.3 m (vans park below)
            zc = hc + th + rz * 0.75
            b.ellipsoid((x, y, zc), (rx, rx * rng.uniform(0.85, 1.1), rz), leaves,
                        rot=rot_z(float(rng.uniform(0, np.pi))))
            for _ in range(int(rng.integers(2, 4))):          # lumps so crowns are not perfect spheres
                ang = float(rng.uniform(0, 2 * np.pi))
                rr = rx * float(rng.uniform(0.45, 0.6))
                off = rx * float(rng.uniform(0.45, 0.65))
                b.ellipsoid((x + off * np.cos(ang), y + off * np.sin(ang), zc + rz * float(rng.uniform(0.0, 0.45))),
                            (rr, rr, rr * float(rng.uniform(0.8, 1.0))), leaves)
            obstacles.append((x, y, r + 0.3))
        elif kind == 'lamp':
            h = float(rng.uniform(6.0, 8.0))
            b.cylinder((x, y, hc + h / 2), 0.08, h / 2, pole_mat)
            arm = float(rng.uniform(1.2, 2.0))
            b.box((x, y - sgn * arm / 2, hc + h - 0.05), (0.05, arm / 2, 0.05), pole_mat, faces=(0, 1, 2, 3, 4, 5))
            lamp = mats.add(M.PLAIN, (0.80, 0.80, 0.74), contrast=0.1, texel=0.01, seed=int(rng.integers(1 << 30)))
            b.box((x, y - sgn * arm, hc + h - 0.15), (0.3, 0.16, 0.08), lamp, faces=(0, 1, 2, 3, 4, 5))
            obstacles.append((x, y, 0.4))
        elif kind == 'sign':
            h = float(rng.uniform(2.2, 2.8))
            b.cylinder((x, y, hc + h / 2), 0.04, h / 2, pole_mat)
            w, sh = float(rng.uniform(0.5, 0.8)), float(rng.uniform(0.5, 0.8))
            face_col = [(0.1, 0.3, 0.7), (0.75, 0.1, 0.1), (0.1, 0.5, 0.2), (0.85, 0.7, 0.1)][int(rng.integers(4))]
            sign = mats.add(M.SIGN, face_col, color2=(0.95, 0.95, 0.95), contrast=0.12, texel=0.01,
                            seed=int(rng.integers(1 << 30)), params=(w, sh))
            back = mats.add(M.PLAIN, (0.55, 0.56, 0.57), contrast=0.2, texel=0.01, seed=int(rng.integers(1 << 30)))
            # the sign plate faces oncoming traffic on its side of the road (right side: -x, left: +x)
            face = 1 if not left else 0
            fm = [back] * 6
            fm[face] = sign
            b.box((x, y, hc + h + sh / 2 - 0.05), (0.02, w / 2, sh / 2), fm)
            obstacles.append((x, y, 0.3))
        x += float(rng.uniform(7.0, 16.0))


def _skyline(rng, b: PrimitiveBuilder, x_lo: float, x_hi: float, layout: StreetLayout, mats: MaterialTable) -> None:
    """Rows of tall blocks across the street beyond both ends, so the road ends at a wall of buildings
    rather than at the edge of the world (the far end is also what a lidar sees behind the ego)."""
    for xw, facing in ((x_hi + 40.0, -1.0), (x_lo - 40.0, +1.0)):
        y = -80.0
        while y < 80.0:
            w = float(rng.uniform(10, 25))
            h = float(rng.uniform(12, SKYLINE_HEIGHT))
            cell, floor_h = float(rng.uniform(2.8, 4.0)), float(rng.uniform(3.0, 3.5))
            mat = _facade_material(rng, mats, cell, floor_h)
            dx = float(rng.uniform(0, 25))
            b.box((xw - facing * (dx + 10), y + w / 2, h / 2), (10, w / 2, h / 2), mat, faces=(0, 1, 2, 3))
            y += w

