"""Traffic: the ego trajectory and every other road user (parked and moving cars, the lead car,
oncoming traffic, crossing and walking pedestrians, cyclists), each a rigid body with a track.

A track maps time t (s, float64 arrays) to a ground-plane pose (x, y, yaw). Objects are planned
with a swept-disc collision check over the whole sequence, so nobody drives through anybody.
Object-local frame: origin on the ground under the centre of the footprint, x forward, y left, z up.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import materials as M
from .materials import MaterialTable, jitter_color
from .primitives import PrimitiveBuilder, PrimitiveSet, rot_x
from .rig import CAMERA_XYZ, EGO_SIZE
from .world import StreetLayout

_DT = 1e-3     # finite-difference step for velocities, s


class Track:
    """Ground-plane trajectory. pose(t) -> (x, y, yaw) float64 arrays shaped like t."""

    def pose(self, t):
        raise NotImplementedError

    def velocity(self, t) -> tuple[np.ndarray, np.ndarray]:
        """(vx, vy) world frame, m/s (central differences)."""
        x1, y1, _ = self.pose(np.asarray(t, float) + _DT)
        x0, y0, _ = self.pose(np.asarray(t, float) - _DT)
        return (x1 - x0) / (2 * _DT), (y1 - y0) / (2 * _DT)


@dataclass
class StaticTrack(Track):
    x: float
    y: float
    yaw: float

    def pose(self, t):
        t = np.asarray(t, float)
        return np.full(t.shape, self.x), np.full(t.shape, self.y), np.full(t.shape, self.yaw)

    def velocity(self, t):
        t = np.asarray(t, float)
        return np.zeros(t.shape), np.zeros(t.shape)


@dataclass
class LinearTrack(Track):
    """Waits at (x0, y0) until t_start, moves with (vx, vy) until t_stop, then waits again."""
    x0: float
    y0: float
    vx: float
    vy: float
    t_start: float = -np.inf
    t_stop: float = np.inf

    def pose(self, t):
        t = np.asarray(t, float)
        tau = np.clip(t, self.t_start, self.t_stop) - (self.t_start if np.isfinite(self.t_start) else 0.0)
        yaw = np.arctan2(self.vy, self.vx)
        return self.x0 + self.vx * tau, self.y0 + self.vy * tau, np.full(t.shape, yaw)

    def velocity(self, t):
        t = np.asarray(t, float)
        on = (t > self.t_start) & (t < self.t_stop)
        return np.where(on, self.vx, 0.0), np.where(on, self.vy, 0.0)


@dataclass
class EgoTrack(Track):
    """Speed v(t) = v0 + a sin(w t + phi) (stays within 5-15 m/s); lateral position y(t) = y0 plus
    smooth (cosine-profile) lane changes (t_center, duration, dy); heading follows the path tangent;
    small suspension pitch/roll oscillations."""
    v0: float
    amp: float
    omega: float
    phase: float
    y0: float
    lane_changes: list = field(default_factory=list)
    pitch_amp: float = 0.004
    roll_amp: float = 0.003

    def x(self, t):
        t = np.asarray(t, float)
        return self.v0 * t - self.amp / self.omega * (np.cos(self.omega * t + self.phase) - np.cos(self.phase))

    def speed(self, t):
        return self.v0 + self.amp * np.sin(self.omega * np.asarray(t, float) + self.phase)

    def y(self, t):
        t = np.asarray(t, float)
        y = np.full(t.shape, self.y0)
        for tc, dur, dy in self.lane_changes:
            u = np.clip((t - (tc - dur / 2)) / dur, 0, 1)
            y = y + dy * 0.5 * (1 - np.cos(np.pi * u))
        return y

    def dy(self, t):
        t = np.asarray(t, float)
        out = np.zeros(t.shape)
        for tc, dur, dy in self.lane_changes:
            u = (t - (tc - dur / 2)) / dur
            inside = (u > 0) & (u < 1)
            out = out + np.where(inside, dy * 0.5 * np.pi / dur * np.sin(np.pi * np.clip(u, 0, 1)), 0.0)
        return out

    def pose(self, t):
        t = np.asarray(t, float)
        return self.x(t), self.y(t), np.arctan2(self.dy(t), self.speed(t))

    def attitude(self, t):
        """(pitch, roll) rad: suspension motion (two incommensurate sinusoids each)."""
        t = np.asarray(t, float)
        pitch = self.pitch_amp * (np.sin(2.1 * t + self.phase) + 0.5 * np.sin(5.3 * t + 1.0))
        roll = self.roll_amp * (np.sin(1.7 * t + 2.0 * self.phase) + 0.4 * np.sin(4.1 * t))
        return pitch, roll


@dataclass
class FollowTrack(Track):
    """A lead car in the ego's lane. The gap between the camera and its rear face oscillates slowly
    between gap0 - amp and gap0 + amp over `period` metres of ego travel, so its speed stays within
    (1 +- 2 pi amp / period) of the ego speed (at most +-10 %); it takes the ego's lane changes first."""
    ego: EgoTrack
    gap0: float
    amp: float
    period: float
    phase: float
    length: float

    def gap(self, t):
        s = self.ego.x(t) - self.ego.x(0.0)
        return self.gap0 + self.amp * np.sin(2 * np.pi * s / self.period + self.phase)

    def _xy(self, t):
        t = np.asarray(t, float)
        ahead = CAMERA_XYZ[0] + self.gap(t) + self.length / 2
        x = self.ego.x(t) + ahead
        y = self.ego.y(t + ahead / self.ego.v0)
        return x, y

    def pose(self, t):
        t = np.asarray(t, float)
        x, y = self._xy(t)
        x1, y1 = self._xy(t + _DT)
        x0, y0 = self._xy(t - _DT)
        return x, y, np.arctan2(y1 - y0, x1 - x0)


@dataclass
class Actor:
    """One road user. parts: primitives in the object-local frame; size (length, width, height) m;
    z0: height of the ground it stands on; discs: (x offsets along its length, radius) for collisions."""
    id: int
    cls: str
    role: str
    size: tuple[float, float, float]
    z0: float
    track: Track
    parts: PrimitiveSet
    disc_offsets: tuple[float, ...]
    disc_radius: float
    kind: str = ''                         # vehicle body kind (VEHICLE_KINDS) or the class for people

    def transform(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(R [3,3], p [3]) object-local -> world at time t."""
        x, y, yaw = (float(v) for v in self.track.pose(np.array(t)))
        c, s = np.cos(yaw), np.sin(yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]), np.array([x, y, self.z0])

    def primitives_at(self, t: float) -> PrimitiveSet:
        R, p = self.transform(t)
        return self.parts.transformed(R, p)

    def discs(self, times: np.ndarray) -> np.ndarray:
        """float64 [T,k,2] disc centres over time."""
        x, y, yaw = self.track.pose(times)
        off = np.asarray(self.disc_offsets, float)
        return np.stack([x[:, None] + np.cos(yaw)[:, None] * off, y[:, None] + np.sin(yaw)[:, None] * off], axis=2)


# ---- road-user models -----------------------------------------------------------------------------

# Vehicle body kinds: length, width, body height, cabin height (uniform ranges, m), the cabin's share
# of the length and its offset (share of L, + = forward), wheel radius.
VEHICLE_KINDS = {
    'sedan': dict(L=(3.9, 4.9), W=(1.70, 1.88), hb=(0.62, 0.76), hcab=(0.50, 0.62), cab=(0.45, 0.55),
                  cab_x=(-0.10, -0.05), r=(0.30, 0.34)),
    'hatch': dict(L=(3.5, 4.2), W=(1.65, 1.80), hb=(0.68, 0.82), hcab=(0.62, 0.76), cab=(0.58, 0.68),
                  cab_x=(-0.16, -0.10), r=(0.29, 0.32)),
    'low': dict(L=(4.2, 4.7), W=(1.85, 1.98), hb=(0.48, 0.58), hcab=(0.38, 0.46), cab=(0.38, 0.46),
                cab_x=(-0.12, -0.04), r=(0.32, 0.35)),
    'suv': dict(L=(4.4, 4.95), W=(1.85, 2.0), hb=(0.80, 0.95), hcab=(0.66, 0.78), cab=(0.55, 0.65),
                cab_x=(-0.12, -0.06), r=(0.36, 0.40)),
    'van': dict(L=(4.8, 5.6), W=(1.9, 2.05), hb=(0.95, 1.1), hcab=(0.75, 0.95), cab=None, cab_x=None,
                r=(0.30, 0.34)),
    'truck': dict(L=(6.2, 8.5), W=(2.25, 2.5), hb=(1.0, 1.2), hcab=(0.7, 0.85), cab=None, cab_x=None,
                  r=(0.42, 0.50)),
}
# Mix of kinds by where the vehicle is; trucks (up to 3.6 m tall) never park under the street trees.
KIND_MIX = {
    'parked': {'sedan': 0.38, 'hatch': 0.22, 'low': 0.06, 'suv': 0.18, 'van': 0.16},
    'moving': {'sedan': 0.30, 'hatch': 0.16, 'low': 0.07, 'suv': 0.18, 'van': 0.14, 'truck': 0.15},
}


def vehicle_kind(rng: np.random.Generator, where: str) -> str:
    mix = KIND_MIX[where]
    return str(rng.choice(list(mix), p=np.array(list(mix.values())) / sum(mix.values())))


def _paint(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Body colour: mostly the common greys/whites/darks, sometimes a saturated colour; trucks are
    mostly white or a fleet colour."""
    if kind == 'truck' and rng.random() < 0.6:
        return jitter_color(rng, (0.88, 0.88, 0.86), 0.04)
    if rng.random() < 0.25:
        return jitter_color(rng, M.BRIGHT_CAR_COLORS[rng.integers(len(M.BRIGHT_CAR_COLORS))], 0.05)
    return jitter_color(rng, M.CAR_COLORS[rng.integers(len(M.CAR_COLORS))], 0.04)


def car_parts(rng: np.random.Generator, mats: MaterialTable, inst: int, van: bool = False, kind: str | None = None):
    """(PrimitiveSet, size) of a road vehicle of `kind` (VEHICLE_KINDS; `van=True` is kind 'van',
    default 'sedan'): body box, glass cabin (a driver's cab and a cargo box for trucks), four wheels."""
    kind = kind or ('van' if van else 'sedan')
    if kind not in VEHICLE_KINDS:
        raise ValueError(f'unknown vehicle kind {kind!r}; one of {sorted(VEHICLE_KINDS)}')
    spec = VEHICLE_KINDS[kind]
    L, W, hb, hcab, r = (float(rng.uniform(*spec[k])) for k in ('L', 'W', 'hb', 'hcab', 'r'))
    zb = r - 0.04                           # body bottom (ground clearance)
    paint = _paint(rng, kind)
    contrast = float(rng.uniform(0.08, 0.3))     # clean paint .. dusty / matte
    sd = int(rng.integers(1 << 30))
    glass_col = jitter_color(rng, (0.19, 0.23, 0.27), 0.08)
    tire = mats.add(M.PLAIN, (0.07, 0.07, 0.07), contrast=0.35, texel=0.006, seed=sd + 6)
    b = PrimitiveBuilder()
    if kind == 'truck':
        # driver's cab at the front (body + glass), a tall cargo box behind it
        cab_len = float(rng.uniform(1.7, 2.1))
        box_h = float(rng.uniform(2.3, 2.8))
        box_len = L - cab_len - 0.15
        H = zb + box_h + 0.25
        cab_paint = paint if rng.random() < 0.5 else _paint(rng, 'sedan')
        cab_side = mats.add(M.CAR_SIDE, cab_paint, contrast=contrast, texel=0.01, seed=sd, params=(cab_len, hb))
        cab_front = mats.add(M.CAR_FRONT, cab_paint, contrast=contrast, texel=0.01, seed=sd + 1, params=(W, hb))
        cab_roof = mats.add(M.PLAIN, cab_paint, contrast=contrast, texel=0.01, seed=sd + 3)
        box_side = mats.add(M.PLAIN, paint, contrast=float(rng.uniform(0.15, 0.4)), texel=float(rng.uniform(0.01, 0.04)),
                            seed=sd + 7, coarse=float(rng.uniform(0.3, 0.8)))
        box_rear = mats.add(M.CAR_REAR, paint, contrast=contrast, texel=0.01, seed=sd + 2, params=(W, box_h))
        glass_side = mats.add(M.GLASS, glass_col, contrast=0.25, texel=0.02, seed=sd + 4, params=(cab_len, hcab))
        glass_end = mats.add(M.GLASS, glass_col, contrast=0.25, texel=0.02, seed=sd + 5, params=(0.0, hcab))
        cx = L / 2 - cab_len / 2
        b.box((cx, 0, zb + hb / 2), (cab_len / 2, W / 2, hb / 2),
              [cab_front, cab_front, cab_side, cab_side, cab_roof, cab_roof], inst=inst, faces=(0, 1, 2, 3, 4))
        b.box((cx + 0.05, 0, zb + hb + hcab / 2), (cab_len / 2 - 0.1, W / 2 - 0.05, hcab / 2),
              [glass_end, glass_end, glass_side, glass_side, cab_roof, cab_roof], inst=inst, faces=(0, 1, 2, 3, 4))
        bx = -L / 2 + box_len / 2
        b.box((bx, 0, zb + 0.25 + box_h / 2), (box_len / 2, W / 2, box_h / 2),
              [box_side, box_rear, box_side, box_side, box_side, box_side], inst=inst, faces=(0, 1, 2, 3, 4, 5))
        wx_front, wx_rear = L / 2 - cab_len / 2, -L / 2 + float(rng.uniform(1.0, 1.6))
    else:
        H = zb + hb + hcab
        body_side = mats.add(M.CAR_SIDE, paint, contrast=contrast, texel=0.01, seed=sd, params=(L, hb))
        body_front = mats.add(M.CAR_FRONT, paint, contrast=contrast, texel=0.01, seed=sd + 1, params=(W, hb))
        body_rear = mats.add(M.CAR_REAR, paint, contrast=contrast, texel=0.01, seed=sd + 2, params=(W, hb))
        roof = mats.add(M.PLAIN, paint, contrast=contrast, texel=0.01, seed=sd + 3)
        if kind == 'van':
            cab_len = L - 1.1
            cab_x = -0.45
        else:
            cab_len = L * float(rng.uniform(*spec['cab']))
            cab_x = L * float(rng.uniform(*spec['cab_x']))
        glass_side = mats.add(M.GLASS, glass_col, contrast=0.25, texel=0.02, seed=sd + 4, params=(cab_len, hcab))
        glass_end = mats.add(M.GLASS, glass_col, contrast=0.25, texel=0.02, seed=sd + 5, params=(0.0, hcab))
        b.box((0, 0, zb + hb / 2), (L / 2, W / 2, hb / 2),
              [body_front, body_rear, body_side, body_side, roof, roof], inst=inst, faces=(0, 1, 2, 3, 4))
        b.box((cab_x, 0, zb + hb + hcab / 2), (cab_len / 2, W / 2 - 0.07, hcab / 2),
              [glass_end, glass_end, glass_side, glass_side, roof, roof], inst=inst, faces=(0, 1, 2, 3, 4))
        wx = L / 2 - float(rng.uniform(0.7, 0.9))
        wx_front, wx_rear = wx, -wx
    axis_y = rot_x(np.pi / 2)                # local z -> -y: wheel axles across the car
    for x_w in (wx_rear, wx_front):
        for sy in (-1, 1):
            b.cylinder((x_w, sy * (W / 2 - 0.12), r), r, 0.11, tire, inst=inst, rot=axis_y)
    return b.build(), (L, W, H)


def pedestrian_parts(rng: np.random.Generator, mats: MaterialTable, inst: int):
    H = float(rng.uniform(1.55, 1.92))
    sd = int(rng.integers(1 << 30))
    pants = mats.add(M.PLAIN, jitter_color(rng, M.CLOTHES_COLORS[rng.integers(len(M.CLOTHES_COLORS))]),
                     contrast=0.35, texel=0.008, seed=sd)
    shirt = mats.add(M.PLAIN, jitter_color(rng, M.CLOTHES_COLORS[rng.integers(len(M.CLOTHES_COLORS))]),
                     contrast=0.35, texel=0.008, seed=sd + 1)
    skin = mats.add(M.PLAIN, M.SKIN_COLORS[rng.integers(len(M.SKIN_COLORS))], contrast=0.2, texel=0.005, seed=sd + 2)
    hair = mats.add(M.PLAIN, jitter_color(rng, (0.12, 0.09, 0.07)), contrast=0.4, texel=0.004, seed=sd + 3)
    leg_h = 0.47 * H
    torso_top = H - 0.24
    b = PrimitiveBuilder()
    b.box((0, 0, leg_h / 2), (0.12, 0.16, leg_h / 2), pants, inst=inst, faces=(0, 1, 2, 3))
    b.box((0, 0, (leg_h + torso_top) / 2), (0.13, 0.2, (torso_top - leg_h) / 2), shirt, inst=inst,
          faces=(0, 1, 2, 3, 4))
    for sy in (-1, 1):   # arms
        b.box((0, sy * 0.25, torso_top - 0.3), (0.06, 0.05, 0.3), shirt, inst=inst, faces=(0, 1, 2, 3, 4))
    b.ellipsoid((0, 0, H - 0.12), (0.1, 0.09, 0.12), skin, inst=inst)
    b.ellipsoid((-0.015, 0, H - 0.085), (0.1, 0.095, 0.09), hair, inst=inst)
    return b.build(), (0.3, 0.6, H)


def cyclist_parts(rng: np.random.Generator, mats: MaterialTable, inst: int):
    sd = int(rng.integers(1 << 30))
    frame = mats.add(M.PLAIN, jitter_color(rng, M.CAR_COLORS[rng.integers(len(M.CAR_COLORS))]), contrast=0.2,
                     texel=0.005, seed=sd)
    tire = mats.add(M.PLAIN, (0.06, 0.06, 0.06), contrast=0.3, texel=0.005, seed=sd + 1)
    shirt = mats.add(M.PLAIN, jitter_color(rng, M.CLOTHES_COLORS[rng.integers(len(M.CLOTHES_COLORS))]),
                     contrast=0.35, texel=0.008, seed=sd + 2)
    pants = mats.add(M.PLAIN, jitter_color(rng, M.CLOTHES_COLORS[rng.integers(len(M.CLOTHES_COLORS))]),
                     contrast=0.35, texel=0.008, seed=sd + 3)
    helmet = mats.add(M.PLAIN, jitter_color(rng, (0.85, 0.85, 0.2)), contrast=0.15, texel=0.005, seed=sd + 4)
    r = 0.34
    b = PrimitiveBuilder()
    axis_y = rot_x(np.pi / 2)
    for sx in (-1, 1):
        b.cylinder((sx * 0.52, 0, r), r, 0.025, tire, inst=inst, rot=axis_y)
    b.box((0, 0, 0.62), (0.45, 0.03, 0.09), frame, inst=inst)
    b.box((0.05, 0, 0.8), (0.14, 0.15, 0.2), pants, inst=inst, faces=(0, 1, 2, 3))
    b.box((-0.02, 0, 1.22), (0.14, 0.2, 0.25), shirt, inst=inst, faces=(0, 1, 2, 3, 4))
    b.ellipsoid((0.04, 0, 1.6), (0.13, 0.11, 0.12), helmet, inst=inst)
    return b.build(), (1.76, 0.6, 1.72)


# ---- planning ------------------------------------------------------------------------------------

class _Occupancy:
    """Swept discs of everything already placed (centres [T,K,2], radii [K]), for rejection sampling."""

    def __init__(self, times: np.ndarray):
        self.times = times
        self.centres = np.zeros((len(times), 0, 2))
        self.radii = np.zeros(0)

    def add(self, centres: np.ndarray, radius: float) -> None:
        self.centres = np.concatenate([self.centres, centres], axis=1)
        self.radii = np.concatenate([self.radii, np.full(centres.shape[1], radius)])

    def add_static(self, x: float, y: float, radius: float) -> None:
        self.add(np.broadcast_to(np.array([x, y], float), (len(self.times), 1, 2)), radius)

    def free(self, centres: np.ndarray, radius: float, margin: float = 0.3) -> bool:
        """True when discs centres [T,k,2] of `radius` keep `margin` from everything placed."""
        if self.radii.size == 0:
            return True
        # cheap prefilter: only discs that ever come within reach of the candidate's sweep
        lo = centres.min(axis=(0, 1)) - radius - margin - self.radii.max()
        hi = centres.max(axis=(0, 1)) + radius + margin + self.radii.max()
        near = np.all((self.centres.max(axis=0) >= lo) & (self.centres.min(axis=0) <= hi), axis=1)
        if not near.any():
            return True
        c = self.centres[:, near]
        d = np.linalg.norm(centres[:, :, None, :] - c[:, None, :, :], axis=3)
        return not np.any(d < self.radii[near][None, None, :] + radius + margin)


def _car_discs(length: float, width: float) -> tuple[tuple[float, ...], float]:
    half = length / 2 - width / 2
    return (-half, 0.0, half), width / 2 + 0.15


@dataclass
class TrafficPlan:
    ego: EgoTrack
    actors: list[Actor]


def random_ego(rng: np.random.Generator, layout: StreetLayout, duration: float) -> EgoTrack:
    v0 = float(rng.uniform(6.5, 13.5))
    amp = float(min(rng.uniform(0.3, 1.5), v0 - 5.0, 15.0 - v0))
    omega = 2 * np.pi / float(rng.uniform(6.0, 15.0))
    lane = int(rng.integers(layout.lanes_per_dir))
    y0 = layout.lane_y(lane) + float(rng.uniform(-0.2, 0.2))
    changes = []
    if layout.lanes_per_dir == 2 and duration > 5.0 and rng.random() < 0.5:
        dur = float(rng.uniform(3.0, 4.5))
        tc = float(rng.uniform(0.25, 0.7)) * duration
        target = layout.lane_y(1 - lane) + float(rng.uniform(-0.2, 0.2))
        changes.append((tc, dur, target - y0))
    return EgoTrack(v0=v0, amp=amp, omega=omega, phase=float(rng.uniform(0, 2 * np.pi)), y0=y0, lane_changes=changes)


def plan_traffic(rng: np.random.Generator, layout: StreetLayout, ego: EgoTrack, duration: float, has_lead: bool,
                 mats: MaterialTable, obstacles: list, x_lo: float, x_hi: float) -> TrafficPlan:
    """Place parked cars, the lead car (if has_lead), oncoming and same-direction traffic, crossing
    pedestrians/cyclists and sidewalk pedestrians around the ego's path over [0, duration] s."""
    times = np.arange(0.0, duration + 0.05, 0.1)
    occ = _Occupancy(times)
    ego_off, ego_r = _car_discs(EGO_SIZE[0], EGO_SIZE[1])
    ego_actor_discs = Actor(0, 'car', 'ego', EGO_SIZE, 0.0, ego, PrimitiveSet.concat([]), ego_off, ego_r)
    occ.add(ego_actor_discs.discs(times), ego_r)
    actors: list[Actor] = []
    hc = layout.curb_height
    x_e0, x_e1 = float(ego.x(0.0)), float(ego.x(duration))

    def next_id() -> int:
        return len(actors) + 1

    pending_kind = ['']

    def build(parts_fn):
        """(parts, size, mark): a candidate's geometry with the next instance id; `mark` lets a
        rejected candidate's materials be dropped again."""
        mark = len(mats)
        parts, size = parts_fn(next_id())
        pending_kind[0] = getattr(parts_fn, 'kind', '')
        return parts, size, mark

    def place(cls: str, role: str, track: Track, z0: float, parts, size) -> bool:
        if cls == 'car':
            off, rad = _car_discs(size[0], size[1])
        elif cls == 'cyclist':
            off, rad = (-0.45, 0.45), 0.45
        else:
            off, rad = (0.0,), 0.35
        a = Actor(next_id(), cls, role, size, z0, track, parts, off, rad, kind=pending_kind[0] or cls)
        centres = a.discs(times)
        if not occ.free(centres, rad, margin=0.25 if cls != 'car' else 0.4):
            return False
        occ.add(centres, rad)
        actors.append(a)
        return True

    def car_fn(where='moving'):
        kind = vehicle_kind(rng, where)

        def parts(inst):
            return car_parts(rng, mats, inst, kind=kind)
        parts.kind = kind
        return parts

    # lead car first: it must exist when requested
    if has_lead:
        parts, size, _ = build(car_fn())
        amp = float(rng.uniform(3.0, 8.0))
        eps = float(rng.uniform(0.04, 0.095))            # max relative speed difference
        gap0 = float(rng.uniform(6.0 + amp, 26.0 - amp))
        track = FollowTrack(ego, gap0, amp, 2 * np.pi * amp / eps, float(rng.uniform(0, 2 * np.pi)), size[0])
        if not place('car', 'lead', track, 0.0, parts, size):
            raise RuntimeError('lead car collides with the ego; this is a bug in the traffic planner')
        # keep the view from the ego to its lead car clear: nobody enters the corridor between them
        ex, ey, eyaw = ego.pose(times)
        front = np.stack([ex + np.cos(eyaw) * EGO_SIZE[0] / 2, ey + np.sin(eyaw) * EGO_SIZE[0] / 2], axis=1)
        lx, ly, _ = track.pose(times)
        w = np.linspace(0.0, 1.0, 14)[None, :, None]
        occ.add(front[:, None, :] + w * (np.stack([lx, ly], axis=1)[:, None, :] - front[:, None, :]), 1.0)

    # parked cars along both curbs, leaving the crossings free
    for left in (True, False):
        y_c = layout.parking_y(left)
        side = 1.0 if left else -1.0
        x = x_lo + float(rng.uniform(0, 6))
        while x < x_hi:
            if rng.random() < 0.2:
                x += float(rng.uniform(4, 18))
                continue
            parts, size, mark = build(car_fn('parked'))
            cx = x + size[0] / 2
            if any(abs(cx - xc) < 4.5 + size[0] / 2 for xc in layout.crossings):
                mats.truncate(mark)
                x += size[0] + 1.0
                continue
            yaw = (np.pi if left else 0.0) if rng.random() < 0.85 else (0.0 if left else np.pi)
            yaw += float(rng.normal(0, 0.02))
            y = y_c + side * float(rng.uniform(-0.05, 0.2))
            if not place('car', 'parked', StaticTrack(cx, y, yaw), 0.0, parts, size):
                mats.truncate(mark)
            x += size[0] + float(rng.uniform(0.7, 3.0))

    # oncoming traffic: one guaranteed in view mid-sequence, then random ones
    for k in range(int(rng.integers(3, 9)) + 1):
        lane = int(rng.integers(layout.lanes_per_dir))
        v = float(rng.uniform(6.0, 14.0))
        y = layout.lane_y(lane, oncoming=True) + float(rng.uniform(-0.25, 0.25))
        if k == 0:
            tm = duration / 2
            x0 = float(ego.x(tm)) + float(rng.uniform(25, 45)) + v * tm
        else:
            x0 = float(rng.uniform(x_e0 + 10, x_e1 + 180 + v * duration))
        parts, size, mark = build(car_fn())
        for _ in range(8):
            if place('car', 'oncoming', LinearTrack(x0, y, -v, 0.0), 0.0, parts, size):
                break
            x0 += 12.0
        else:
            mats.truncate(mark)

    # same-direction traffic in the other lane
    if layout.lanes_per_dir == 2:
        for _ in range(int(rng.integers(1, 4))):
            lane = int(rng.integers(2))
            ratio = float(rng.uniform(0.75, 1.3))
            v = ego.v0 * ratio
            y = layout.lane_y(lane) + float(rng.uniform(-0.2, 0.2))
            parts, size, mark = build(car_fn())
            for _ in range(6):
                x0 = x_e0 + float(rng.uniform(-40, 70))
                if place('car', 'traffic', LinearTrack(x0, y, v, 0.0), 0.0, parts, size):
                    break
            else:
                mats.truncate(mark)

    # crossing pedestrians and cyclists at the zebra crossings, timed to be seen
    ego_x = ego.x(times)
    for xc in layout.crossings:
        ahead = (xc - ego_x > 8) & (xc - ego_x < 80)
        if not ahead.any():
            continue
        t_a, t_b = times[ahead][0], times[ahead][-1]
        for _ in range(int(rng.integers(1, 4))):
            cyclist = rng.random() < 0.3
            speed = float(rng.uniform(3.0, 5.5) if cyclist else rng.uniform(1.0, 1.8))
            from_left = rng.random() < 0.5
            y_start = (1 if from_left else -1) * (layout.road_half - 0.4)
            y_end = -y_start
            cross_t = abs(y_end - y_start) / speed
            x_path = xc + float(rng.uniform(-1.2, 1.2))
            cls = 'cyclist' if cyclist else 'pedestrian'
            parts, size, mark = build((lambda inst: cyclist_parts(rng, mats, inst)) if cyclist
                                      else (lambda inst: pedestrian_parts(rng, mats, inst)))
            vy = speed * (-1 if from_left else 1)
            for _ in range(25):
                t0 = float(rng.uniform(t_a - 0.6 * cross_t, t_b - 0.5))
                if place(cls, 'crossing', LinearTrack(x_path, y_start, 0.0, vy, t0, t0 + cross_t), 0.0, parts, size):
                    break
            else:
                mats.truncate(mark)

    # sidewalk pedestrians: walking along the street, and standing ones
    for x, y, r in obstacles:
        occ.add_static(x, y, r)
    for left in (True, False):
        sgn = 1.0 if left else -1.0
        y_in, y_out = layout.road_half + 1.5, layout.road_half + layout.sidewalk(left) - 0.45
        if y_out <= y_in:
            continue
        for _ in range(int(rng.integers(2, 7))):
            y = sgn * float(rng.uniform(y_in, y_out))
            x0 = float(rng.uniform(x_e0 - 10, x_e1 + 90))
            parts, size, mark = build(lambda inst: pedestrian_parts(rng, mats, inst))
            if rng.random() < 0.7:
                v = float(rng.uniform(0.9, 1.7)) * (1 if rng.random() < 0.5 else -1)
                ok = place('pedestrian', 'walking', LinearTrack(x0, y, v, 0.0), hc, parts, size)
            else:
                ok = place('pedestrian', 'standing', StaticTrack(x0, y, float(rng.uniform(-np.pi, np.pi))), hc,
                           parts, size)
            if not ok:
                mats.truncate(mark)
    return TrafficPlan(ego=ego, actors=actors)
