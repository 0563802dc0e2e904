"""Orchestration: world + traffic + renderer -> dataset folder (design section 6) and optional rosbag2.

Seeds: every sequence gets its own numpy SeedSequence(entropy=seed, spawn_key=(split, index)), so
train / val / test never share a stream, and the output is byte-identical for the same arguments
whatever the number of worker processes.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ..atomic_files import write_text_atomic
from ..datasets.layout import SPLITS, Calib, Frame, Instance, SequenceWriter
from .materials import MaterialTable
from .primitives import PrimitiveSet
from .render import CameraRays, Lighting, Scene
from .rig import CAMERA_PITCH, CAMERA_XYZ, LIDAR_XYZ, T_base_camera, T_base_lidar, pose_matrix, synth_intrinsics
from .shading import SKY_HORIZON, SKY_ZENITH, RoadPaint, shade_camera
from .textures import MipTexture, fractal_noise_tile
from .traffic import StaticTrack, plan_traffic, random_ego
from .world import build_street, random_crossings, random_layout

GENERATOR_VERSION = 2            # 2: per-sequence Look (camera, sun, exposure, noise), vehicle kinds
FPS = 10.0
LEAD_RANGE = 30.0            # a frame "contains a lead car" when it is visible and closer than this (m)
MOVING_SPEED = 0.05          # m/s; slower objects are flagged static in that frame
IN_PROCESS_FRAMES = 64       # single-worker jobs up to this many frames run in the calling process
SPLIT_KEYS = {s: k for k, s in enumerate(SPLITS)}
# Bounds of one request. A sequence's world is built for its whole drive, and building it grows faster
# than the frame count (2 CPU cores: 1000 frames 5 s, 2000 frames 18 s, 4000 frames ~2 min and 0.6 GB);
# longer footage is more sequences. Images: 4K at most (a 20000x20000 frame needs a 6 GB buffer).
MAX_FRAMES = 2000
MAX_SEQUENCES = 10_000       # seq_0000 .. seq_9999
MAX_SIDE = 4096
MAX_PIXELS = 8_400_000       # 4096x2048, 3840x2160
SPLIT_RECORD = '.dynadepth_synth_split.json'   # <split>/: the parameters the split was generated with


def _gaussian_quantiles(n: int = 256) -> np.ndarray:
    """float32 [n]: the (k+0.5)/n quantiles of N(0,1). Indexing it with uniform random bytes gives
    Gaussian sensor noise quantised to 1/256 of its distribution, ~6x cheaper than standard_normal."""
    out = np.empty(n, np.float32)
    for k in range(n):
        p, lo, hi = (k + 0.5) / n, -10.0, 10.0
        for _ in range(60):                                  # bisection on the normal CDF
            mid = 0.5 * (lo + hi)
            if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < p:
                lo = mid
            else:
                hi = mid
        out[k] = 0.5 * (lo + hi)
    return out


_GAUSS_TABLE = _gaussian_quantiles()


@dataclass(frozen=True)
class SynthParams:
    """What one generated sequence depends on (besides its seed)."""
    frames: int
    height: int
    width: int
    noise: float = 0.01            # std of additive Gaussian sensor noise, in [0,1] intensity units
    bag: bool = False
    storage: str = 'mcap'

    def bytes_per_sequence(self) -> int:
        """About what one sequence takes on disk (a little more than measured): per frame RGB PNG (noisy,
        ~3 B/px), float32 depth, the 16-bit mask PNG (compresses well) and ~16 kB of instances and pose;
        with a bag also the raw images and a full LiDAR sweep of 16-byte points."""
        from .lidar import N_AZIMUTH, hdl64_elevations
        px = self.height * self.width
        per_frame = int(px * 7.5) + 16_384
        if self.bag:
            per_frame += px * 9 + len(hdl64_elevations()) * N_AZIMUTH * 16 + 4096
        return self.frames * per_frame + 65_536

    def validate(self) -> None:
        if self.frames < 2:
            raise ValueError(f'frames must be >= 2 (got {self.frames}): sequences are for temporal training')
        if self.frames > MAX_FRAMES:
            raise ValueError(f'frames must be <= {MAX_FRAMES} per sequence (got {self.frames}): a sequence\'s world is '
                             f'built for its whole drive; generate more sequences instead')
        if self.height < 16 or self.width < 16:
            raise ValueError(f'image size {self.height}x{self.width} is too small; use at least 16x16 (e.g. 192x640)')
        if max(self.height, self.width) > MAX_SIDE or self.height * self.width > MAX_PIXELS:
            raise ValueError(f'image size {self.height}x{self.width} is too large; at most {MAX_SIDE} px per side and '
                             f'{MAX_PIXELS / 1e6:.1f} Mpx (e.g. 2048x4096 or 2160x3840)')
        if not 0.0 <= self.noise <= 0.2:
            raise ValueError(f'noise must be in [0, 0.2] (std in [0,1] intensity units), got {self.noise}')
        if self.storage not in ('mcap', 'sqlite3'):
            raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {self.storage!r}")


def sequence_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of sequence `index` of `split`: distinct for every (seed, split, index)."""
    if split not in SPLIT_KEYS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if seed < 0:
        raise ValueError(f'seed must be a non-negative integer, got {seed}')
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(SPLIT_KEYS[split], int(index)))


def sequence_seed_id(seed: int, split: str, index: int) -> str:
    """A printable 128-bit identifier of the sequence's random stream (recorded in synth.json)."""
    words = sequence_seed(seed, split, index).generate_state(4, np.uint32)
    return ''.join(f'{int(w):08x}' for w in words)


def has_lead_car(index: int, fraction: float) -> bool:
    """Whether sequence `index` gets a lead car. Sequences 0..N-1 then hold ceil(N * fraction) lead
    sequences for every N, spread evenly (sequence 0 always has one when fraction > 0)."""
    return math.ceil((index + 1) * fraction - 1e-9) > math.ceil(index * fraction - 1e-9)


def sequence_name(index: int) -> str:
    return f'seq_{index:04d}'


@dataclass(frozen=True)
class Look:
    """How one sequence is seen: the camera mount and lens, the light, and the sensor's response.
    Drawn per sequence (random_look) so models trained on the synthetic world meet many cameras and
    lighting conditions, not one renderer's fixed settings."""
    camera_height: float = CAMERA_XYZ[2]      # m above the ground
    camera_pitch_deg: float = float(np.rad2deg(CAMERA_PITCH))   # downward tilt
    focal_scale: float = 1.0                  # fx = fy = 0.58 W x focal_scale
    light: Lighting = Lighting()
    overcast: bool = False                    # greyer sky
    exposure: float = 1.0                     # linear gain before the response curve
    gamma: float = 1.0                        # out = (gain x wb x in) ** gamma
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise_scale: float = 1.0                  # sensor noise std = SynthParams.noise x noise_scale

    def sky(self) -> tuple[np.ndarray, np.ndarray]:
        """(horizon, zenith) RGB of the sky gradient."""
        if not self.overcast:
            return SKY_HORIZON, SKY_ZENITH
        grey = np.float32(0.8)
        return (SKY_HORIZON * 0.3 + grey * 0.7).astype(np.float32), (SKY_ZENITH * 0.3 + grey * 0.65).astype(np.float32)

    def record(self) -> dict:
        d = asdict(self)
        d['light'] = asdict(self.light)
        return d


def random_look(rng: np.random.Generator) -> Look:
    """A random camera / light / sensor within what road vehicles and daylight give: camera 1.25-1.85 m
    high (hatchback to van), pitched -1..+4 deg, 72-92 deg horizontal field of view; sun anywhere in
    azimuth, 15-70 deg high, a quarter of the sequences overcast; exposure +-30 %, gamma 0.85-1.15,
    a few percent of white-balance cast, 0.5-2.5x the sensor noise."""
    overcast = bool(rng.random() < 0.25)
    if overcast:
        sun, ambient = rng.uniform(0.08, 0.25), rng.uniform(0.55, 0.72)
    else:
        sun, ambient = rng.uniform(0.45, 0.72), rng.uniform(0.30, 0.48)
    light = Lighting.from_angles(float(rng.uniform(0, 2 * np.pi)), float(np.deg2rad(rng.uniform(15, 70))),
                                 float(ambient), float(rng.uniform(0.05, 0.15)), float(sun))
    wb = 1.0 + rng.uniform(-0.06, 0.06, 3)
    return Look(camera_height=float(rng.uniform(1.25, 1.85)), camera_pitch_deg=float(rng.uniform(-1.0, 4.0)),
                focal_scale=float(rng.uniform(0.88, 1.14)), light=light, overcast=overcast,
                exposure=float(rng.uniform(0.75, 1.3)), gamma=float(rng.uniform(0.85, 1.15)),
                white_balance=tuple(float(v) for v in wb / wb.mean()), noise_scale=float(rng.uniform(0.5, 2.5)))


def look_seed(ss: np.random.SeedSequence) -> np.random.SeedSequence:
    """The Look's own stream, derived from the sequence's, so drawing it never shifts the world's draws."""
    return np.random.SeedSequence(entropy=ss.entropy, spawn_key=tuple(ss.spawn_key) + (1 << 20,))


class SequenceRenderer:
    """Builds one sequence's world from its seed and renders frames of it."""

    def __init__(self, ss: np.random.SeedSequence, params: SynthParams, has_lead: bool, look: Look | None = None):
        rng = np.random.default_rng(ss)
        self.params = params
        self.look = random_look(np.random.default_rng(look_seed(ss))) if look is None else look
        duration = (params.frames - 1) / FPS
        # cross-section first (the lane count shapes the ego path), then the ego, then crossings ahead of it
        self.layout = random_layout(rng)
        self.ego = random_ego(rng, self.layout, duration)
        x_e0, x_e1 = float(self.ego.x(0.0)), float(self.ego.x(duration))
        self.layout.crossings = random_crossings(rng, x_e0 + 30.0, x_e1 + 50.0)
        mats = MaterialTable()
        x_lo, x_hi = x_e0 - 80.0, x_e1 + 200.0
        static, self.ground, obstacles = build_street(rng, self.layout, x_lo, x_hi, mats)
        plan = plan_traffic(rng, self.layout, self.ego, duration, has_lead, mats, obstacles, x_lo, x_hi)
        self.actors = {a.id: a for a in plan.actors}
        self.moving = [a for a in plan.actors if not isinstance(a.track, StaticTrack)]
        parked = [a.primitives_at(0.0) for a in plan.actors if isinstance(a.track, StaticTrack)]
        self.static = PrimitiveSet.concat([static] + parked)
        self._static_shadows = np.concatenate(
            [np.zeros((0, 5))] + [_footprint(a, 0.0) for a in plan.actors
                                  if a.cls == 'car' and isinstance(a.track, StaticTrack)])
        self.mats = mats.freeze()
        self.reflectivity = self.mats.color.mean(axis=1).astype(np.float32)
        self.texture = MipTexture(fractal_noise_tile(rng, 256))
        self.paint = RoadPaint(self.layout.lanes_per_dir, self.layout.lane_width, self.layout.crossings)
        lk = self.look
        self.K = synth_intrinsics(params.height, params.width, lk.focal_scale)
        self.T_base_cam = T_base_camera(lk.camera_height, float(np.deg2rad(lk.camera_pitch_deg)))
        self.T_base_lidar = T_base_lidar(lk.camera_height + (LIDAR_XYZ[2] - CAMERA_XYZ[2]))
        self._wb = np.asarray(lk.white_balance, np.float32) * np.float32(lk.exposure)
        self.noise_rng = np.random.default_rng(rng.integers(1 << 62))
        self.lead_id = next((a.id for a in plan.actors if a.role == 'lead'), None)
        self._static_states: dict = {}

    def base_pose(self, t: float) -> np.ndarray:
        """float64 [4,4] T_world_base_link at time t."""
        x, y, yaw = (float(v) for v in self.ego.pose(np.array(t)))
        pitch, roll = (float(v) for v in self.ego.attitude(np.array(t)))
        return pose_matrix(x, y, 0.0, yaw, pitch, roll)

    def base_twist(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(linear, angular) velocity of base_link expressed in base_link (m/s, rad/s)."""
        h = 1e-3
        T0, T1 = self.base_pose(t - h), self.base_pose(t + h)
        v_world = (T1[:3, 3] - T0[:3, 3]) / (2 * h)
        R = self.base_pose(t)[:3, :3]
        dR = (T1[:3, :3] - T0[:3, :3]) / (2 * h)
        W = R.T @ dR                                           # skew(omega) in the body frame
        omega = np.array([W[2, 1] - W[1, 2], W[0, 2] - W[2, 0], W[1, 0] - W[0, 1]]) / 2
        return R.T @ v_world, omega

    def scene_at(self, t: float) -> Scene:
        moving_cars = [a for a in self.moving if a.cls == 'car']
        shadows = [self._static_shadows] + [_footprint(a, t) for a in moving_cars]
        return Scene(PrimitiveSet.concat([self.static] + [a.primitives_at(t) for a in self.moving]), self.ground,
                     np.concatenate(shadows), light=self.look.light)

    def render(self, index: int) -> tuple[Frame, Scene, np.ndarray]:
        """(frame, scene, T_world_base) of frame `index`."""
        p = self.params
        t = index / FPS
        T_wb = self.base_pose(t)
        T_wc = T_wb @ self.T_base_cam
        scene = self.scene_at(t)
        rays = CameraRays(self.K, p.height, p.width, T_wc)
        g = scene.cast(rays)
        rgb = shade_camera(scene, g, rays, self.mats, self.texture, self.paint, sky=self.look.sky())
        rgb *= self._wb
        np.clip(rgb, 0, 1, out=rgb)
        if self.look.gamma != 1.0:
            np.power(rgb, np.float32(self.look.gamma), out=rgb)
        if p.noise > 0:
            std = np.float32(p.noise * self.look.noise_scale)
            rgb += _GAUSS_TABLE[self.noise_rng.integers(0, 256, rgb.shape, dtype=np.uint8)] * std
        rgb8 = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
        valid = g.prim >= 0
        depth = np.where(valid, g.t, np.float32(0)).astype(np.float32)
        mask = np.where(valid, scene.inst[np.maximum(g.prim, 0)], 0).astype(np.uint16)
        instances = self.instances(mask, t, T_wc)
        return Frame(index=index, rgb=rgb8, depth=depth, mask=mask, instances=instances, pose=T_wc), scene, T_wb

    def instances(self, mask: np.ndarray, t: float, T_world_cam: np.ndarray) -> list[Instance]:
        """Metadata of every instance visible in `mask` (sorted by id)."""
        T_cam_world = np.linalg.inv(T_world_cam)
        out = []
        for iid in np.flatnonzero(np.bincount(mask.reshape(-1))[1:]) + 1:       # visible ids, ascending
            a = self.actors[int(iid)]
            c_world, yaw, vx, vy = self._actor_state(a, t)
            c_cam = T_cam_world[:3, :3] @ c_world + T_cam_world[:3, 3]
            box = {'center_world': [float(v) for v in c_world], 'center_cam': [float(v) for v in c_cam],
                   'size': [float(v) for v in a.size], 'yaw_world': yaw}
            out.append(Instance(id=int(iid), cls=a.cls, moving=bool(math.hypot(vx, vy) > MOVING_SPEED),
                                velocity=[vx, vy, 0.0], box=box))
        return out

    def _actor_state(self, a, t: float) -> tuple[np.ndarray, float, float, float]:
        """(box centre float64 [3] world, yaw rad, vx, vy m/s) of an actor at time t (cached if static)."""
        if a.id in self._static_states:
            return self._static_states[a.id]
        R, pos = a.transform(t)
        vx, vy = (float(v) for v in a.track.velocity(np.array(t)))
        state = (pos + np.array([0.0, 0.0, a.size[2] / 2]), float(np.arctan2(R[1, 0], R[0, 0])), vx, vy)
        if isinstance(a.track, StaticTrack):
            self._static_states[a.id] = state
        return state



def _footprint(actor, t: float) -> np.ndarray:
    """float64 [1,5] (x, y, yaw, half length, half width) of an actor on the ground at time t."""
    x, y, yaw = (float(v) for v in actor.track.pose(np.array(t)))
    return np.array([[x, y, yaw, actor.size[0] / 2, actor.size[1] / 2]])


def _params_record(params: SynthParams, seed: int, split: str, index: int, lead: bool) -> dict:
    """What synth.json records about how a sequence was made (compared to skip up-to-date sequences)."""
    return {'generator': 'dynadepth_ros.synth', 'version': GENERATOR_VERSION, 'seed': int(seed), 'split': split,
            'index': int(index), 'seed_id': sequence_seed_id(seed, split, index), 'has_lead': bool(lead),
            **asdict(params)}


def split_record(split: str, sequences: int, params: SynthParams, seed: int, lead_car_fraction: float) -> dict:
    """What a split is generated with, recorded in <split>/SPLIT_RECORD (worker count and --force do not
    change the data and are not part of it)."""
    return {'generator_version': GENERATOR_VERSION, 'split': split, 'sequences': int(sequences), 'seed': int(seed),
            'lead_car_fraction': float(lead_car_fraction), **asdict(params)}


def _sequence_dirs(split_dir: Path) -> dict[int, Path]:
    """index → directory of the published sequences (seq_NNNN) in a split folder."""
    if not split_dir.is_dir():
        return {}
    return {int(p.name[4:]): p for p in split_dir.iterdir()
            if p.is_dir() and p.name.startswith('seq_') and p.name[4:].isdigit()}


def _recorded_split(split_dir: Path) -> dict | None:
    """The split's record; for a split generated before records existed, what its sequences' synth.json
    and their number tell (None: nothing generated there yet)."""
    try:
        return json.loads((split_dir / SPLIT_RECORD).read_text())
    except (OSError, ValueError):
        pass
    seqs = _sequence_dirs(split_dir)
    if not seqs:
        return None
    try:
        p = json.loads((seqs[min(seqs)] / 'synth.json').read_text())['params']
    except (OSError, ValueError, KeyError, TypeError):
        p = {}
    old = {'generator_version': p.get('version'), 'sequences': len(seqs),
           **{k: p.get(k) for k in ('seed', 'frames', 'height', 'width', 'noise', 'bag', 'storage')}}
    return {k: v for k, v in old.items() if v is not None}


def _changed_params(old: dict, new: dict) -> list[str]:
    return [f'{k} {old[k]} -> {new[k]}' for k in new if k in old and old[k] != new[k]]


def _check_free_space(out: Path, split: str, n_sequences: int, params: SynthParams) -> None:
    """ValueError when the sequences to write would not fit on `out`'s filesystem."""
    need = n_sequences * params.bytes_per_sequence()
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ValueError(f'{n_sequences} sequences x {params.frames} frames at {params.height}x{params.width}'
                         f'{" with bags" if params.bag else ""} need about {_size(need)} under {out / split}, '
                         f'but only {_size(free)} are free there; free space, or generate fewer or shorter '
                         f'sequences or smaller images')


def _size(n: int) -> str:
    return f'{n / 1e9:.1f} GB' if n >= 1e8 else f'{n / 1e6:.1f} MB'


def is_up_to_date(seq_dir: Path, record: dict) -> bool:
    """True when seq_dir is a complete sequence made with exactly these parameters."""
    try:
        meta = json.loads((Path(seq_dir) / 'synth.json').read_text())
    except (OSError, ValueError):
        return False
    if meta.get('params') != record:
        return False
    return not record['bag'] or (Path(seq_dir) / 'bag' / 'metadata.yaml').is_file()


def generate_sequence(out_dir: str | os.PathLike, split: str, index: int, params: SynthParams, seed: int,
                      has_lead: bool, progress=None) -> Path:
    """Render and write one sequence (dataset folder + optional bag); returns its directory.

    progress: optional callable(n_frames_done_since_last_call) for progress reporting.
    """
    params.validate()
    timings = {'build': 0.0, 'render': 0.0, 'write': 0.0, 'lidar': 0.0, 'bag': 0.0}
    t0 = time.perf_counter()
    r = SequenceRenderer(sequence_seed(seed, split, index), params, has_lead)
    timings['build'] = time.perf_counter() - t0
    calib = Calib(K=r.K, height=params.height, width=params.width, fps=FPS)
    writer = SequenceWriter(out_dir, split, sequence_name(index), calib)
    bagw = None
    if params.bag:
        from .bag import SequenceBagWriter          # rosbags only needed with --bag
        bagw = SequenceBagWriter(writer.path / 'bag', params.storage, r.K, params.height, params.width,
                                 r.T_base_cam, r.T_base_lidar, FPS)
    lead_frames = []
    try:
        for i in range(params.frames):
            t1 = time.perf_counter()
            frame, scene, T_wb = r.render(i)
            t2 = time.perf_counter()
            writer.write(frame)
            t3 = time.perf_counter()
            timings['render'] += t2 - t1
            timings['write'] += t3 - t2
            lead = next((x for x in frame.instances if x.id == r.lead_id), None)
            lead_frames.append(bool(lead is not None and lead.box['center_cam'][2] < LEAD_RANGE))
            if bagw is not None:
                from .lidar import scan
                points = scan(scene, T_wb @ r.T_base_lidar, r.reflectivity)
                t4 = time.perf_counter()
                lin, ang = r.base_twist(i / FPS)
                bagw.write_frame(i, frame.rgb, frame.depth, frame.mask, T_wb, lin, ang, points)
                timings['lidar'] += t4 - t3
                timings['bag'] += time.perf_counter() - t4
            if progress is not None:
                progress(1)
        if bagw is not None:
            bagw.close()
            bagw = None
    except BaseException:
        if bagw is not None:
            bagw.abort()
        writer.abort()
        raise
    summary = {
        'params': _params_record(params, seed, split, index, has_lead),
        'lead_id': r.lead_id, 'lead_frames': lead_frames,
        'street': {'lanes_per_dir': r.layout.lanes_per_dir, 'lane_width': r.layout.lane_width,
                   'road_half_width': r.layout.road_half, 'curb_height': r.layout.curb_height,
                   'crossings_x': list(r.layout.crossings)},
        'ego': {'mean_speed_mps': r.ego.v0, 'lane_changes': len(r.ego.lane_changes)},
        'actors': [{'id': a.id, 'class': a.cls, 'kind': a.kind, 'role': a.role, 'size': [float(v) for v in a.size]}
                   for a in r.actors.values()],
        'look': r.look.record(),
        'frames_tf': {'T_base_camera': r.T_base_cam.tolist(), 'T_base_lidar': r.T_base_lidar.tolist()},
    }
    write_text_atomic(writer.path / 'synth.json', json.dumps(summary, indent=1))
    path = writer.close()
    timings['total'] = time.perf_counter() - t0
    _LAST_TIMINGS.clear()
    _LAST_TIMINGS.update(timings)
    return path


_LAST_TIMINGS: dict = {}


def last_timings() -> dict:
    """Seconds spent per phase (build, render, write, lidar, bag, total) by the last generate_sequence in
    this process."""
    return dict(_LAST_TIMINGS)


def _init_worker() -> None:
    """Worker-process setup: one thread per process, and a malloc that keeps freed memory.

    Rendering allocates many short-lived arrays of a few hundred kB; glibc serves those with mmap and
    returns them to the kernel, so every frame pays page faults (~20 % of the time). Raising the mmap
    and trim thresholds in the worker makes it reuse the memory instead.
    """
    import cv2
    cv2.setNumThreads(1)                              # one process per core; no thread oversubscription
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 256 << 20)                   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)                   # M_TRIM_THRESHOLD
        libc.mallopt(-2, 64 << 20)                    # M_TOP_PAD
    except (OSError, AttributeError):                 # not glibc: keep the defaults
        pass


def _worker(args) -> tuple[str, dict]:
    out_dir, split, index, params, seed, lead = args
    path = generate_sequence(out_dir, split, index, params, seed, lead)
    return str(path), last_timings()


def generate_split(out_dir: str | os.PathLike, split: str, sequences: int, frames: int, height: int, width: int,
                   seed: int, bag: bool = False, storage: str = 'mcap', noise: float = 0.01,
                   lead_car_fraction: float = 0.5, workers: int | None = None, skip_existing: bool = True,
                   progress: bool = True, overwrite: bool = False) -> list[Path]:
    """Generate `sequences` sequences of `frames` frames into <out_dir>/<split>/seq_NNNN.

    Deterministic: byte-identical files for the same arguments, whatever `workers`. Sequences already
    present with identical parameters (their synth.json) are kept when skip_existing. At least
    ceil(sequences * lead_car_fraction) sequences have a lead car within 30 m in every frame.
    workers: processes (default: one per CPU, at most `sequences`); a single-worker job of at most
    IN_PROCESS_FRAMES frames runs in the calling process. Returns the sequence directories.

    The split's parameters are recorded in <split>/SPLIT_RECORD. A split generated with other parameters
    is refused (ValueError naming them), so its sequences never mix with these, unless `overwrite`: then
    its sequences that differ from this request, or are not part of it, are deleted first. A request
    that exceeds the bounds (MAX_*) or the free space of the output filesystem is refused before
    anything is written.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if not 1 <= sequences <= MAX_SEQUENCES:
        raise ValueError(f'sequences must be in [1, {MAX_SEQUENCES}], got {sequences}')
    if not 0.0 <= lead_car_fraction <= 1.0:
        raise ValueError(f'lead_car_fraction must be in [0, 1], got {lead_car_fraction}')
    if workers is not None and workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    params = SynthParams(frames=int(frames), height=int(height), width=int(width), noise=float(noise),
                         bag=bool(bag), storage=storage)
    params.validate()
    out = Path(out_dir)
    split_dir = out / split
    record = split_record(split, sequences, params, seed, lead_car_fraction)
    recorded = _recorded_split(split_dir)
    changed = _changed_params(recorded, record) if recorded is not None else []
    if changed and not overwrite:
        raise ValueError(f'{split_dir} holds sequences generated with other parameters ({", ".join(changed)}); '
                         f'rerun with --overwrite to replace them, or choose another --out')
    jobs, paths, keep = [], [], set()
    for i in range(sequences):
        lead = has_lead_car(i, lead_car_fraction)
        path = split_dir / sequence_name(i)
        paths.append(path)
        if is_up_to_date(path, _params_record(params, seed, split, i, lead)):
            keep.add(path)
            if skip_existing:
                continue
        jobs.append((str(out), split, i, params, int(seed), lead))
    _check_free_space(out, split, len(jobs), params)
    if changed:                      # overwrite: what this request does not reproduce goes
        stale = [p for p in _sequence_dirs(split_dir).values() if p not in keep]
        for path in stale + list(split_dir.glob('.seq_*.partial')):
            shutil.rmtree(path)
    split_dir.mkdir(parents=True, exist_ok=True)
    if recorded != record:
        write_text_atomic(split_dir / SPLIT_RECORD, json.dumps(record, indent=1) + '\n')
    if not jobs:
        return paths
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    total = len(jobs) * params.frames
    from tqdm import tqdm
    with tqdm(total=total, unit='frame', desc=f'synth {split}', disable=not progress, dynamic_ncols=True) as bar:
        if n_workers == 1 and total <= IN_PROCESS_FRAMES:
            for job in jobs:                            # small job: not worth starting a process
                generate_sequence(*job, progress=bar.update)
        else:
            ctx = get_context('spawn')                  # safe even when the caller has threads (torch, ROS)
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_init_worker) as pool:
                futures = [pool.submit(_worker, job) for job in jobs]
                try:
                    for fut in as_completed(futures):
                        fut.result()
                        bar.update(params.frames)
                except BaseException:          # e.g. a full disk: start no further sequence
                    for fut in futures:
                        fut.cancel()
                    raise
    return paths
