"""Reader of KITTI raw in the monodepth2 layout.

    <root>/<date>/calib_cam_to_cam.txt       P_rect_02/03 (3x4), R_rect_00, S_rect_02/03 (W H)
    <root>/<date>/calib_velo_to_cam.txt      R, T: velodyne → unrectified camera 0
    <root>/<date>/calib_imu_to_velo.txt      R, T: IMU → velodyne (only for poses)
    <root>/<date>/<drive>/image_02/data/0000000000.png   (image_03 = right camera; .png or .jpg)
    <root>/<date>/<drive>/image_02/timestamps.txt        optional
    <root>/<date>/<drive>/oxts/data/0000000000.txt       optional (poses)
    <root>/<date>/<drive>/velodyne_points/data/0000000000.bin   optional (float32 x,y,z,reflectance)
    <root>/<date>/<drive>/proj_depth/groundtruth/image_02/0000000000.png   optional improved GT (uint16 / 256 m)

Split files have lines `<date>/<drive> <frame index> <l|r>` (monodepth2); one sequence per
(drive, camera side), the listed frames become its target frames.

K is the left 3x3 block of P_rect_0X at the native (rectified) resolution. GT depth is the
improved GT when present, else the velodyne scan projected through P_rect · R_rect_00 ·
T_cam0_velo with the nearest point winning per pixel (pixel = rounded projection, pixel centres
at integer coordinates). Poses come from the OXTS GPS/IMU (Mercator projection as in the KITTI
devkit), expressed for the rectified camera and relative to the drive's first frame.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import cv2
import numpy as np

from dynadepth_ros.datasets.base import DatasetError, FrameSequence, FrameSource, find_split_file, read_split_lines

SIDES = {'l': '02', 'r': '03'}
EARTH_RADIUS_M = 6378137.0


# ---- calibration ---------------------------------------------------------------------------
def read_calib_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{key: float64 values} of a KITTI calibration text file (`key: v1 v2 ...`); non-numeric keys are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f'KITTI calibration file {path} is missing; the date folder must hold the '
                           f'calib_*.txt files of the raw dataset')
    out = {}
    for line in path.read_text().splitlines():
        if ':' not in line:
            continue
        key, value = line.split(':', 1)
        try:
            out[key.strip()] = np.array([float(v) for v in value.split()], dtype=np.float64)
        except ValueError:
            continue  # e.g. calib_time: 09-Jan-2012 13:57:47
    return out


def _calib_value(calib: dict, key: str, size: int, path) -> np.ndarray:
    if key not in calib:
        raise DatasetError(f'{path} has no {key}; is it a KITTI raw calibration file?')
    v = calib[key]
    if v.size != size:
        raise DatasetError(f'{path}: {key} has {v.size} numbers, expected {size}')
    return v


def rigid_from_calib(calib: dict, path) -> np.ndarray:
    """float64 [4,4] from the R (9) and T (3) entries of calib_velo_to_cam / calib_imu_to_velo."""
    T = np.eye(4)
    T[:3, :3] = _calib_value(calib, 'R', 9, path).reshape(3, 3)
    T[:3, 3] = _calib_value(calib, 'T', 3, path)
    return T


class KittiCalib:
    """Calibration of one recording date for one camera (02 = left colour, 03 = right colour)."""

    def __init__(self, date_dir: str | os.PathLike, cam: str):
        date_dir = Path(date_dir)
        self.cam_file = date_dir / 'calib_cam_to_cam.txt'
        cam_calib = read_calib_file(self.cam_file)
        self.P_rect = _calib_value(cam_calib, f'P_rect_{cam}', 12, self.cam_file).reshape(3, 4)
        if self.P_rect[0, 0] <= 0 or self.P_rect[1, 1] <= 0:
            raise DatasetError(f'{self.cam_file}: P_rect_{cam} has fx={self.P_rect[0, 0]:g}, '
                               f'fy={self.P_rect[1, 1]:g}; the calibration file is damaged')
        self.R_rect = np.eye(4)
        self.R_rect[:3, :3] = _calib_value(cam_calib, 'R_rect_00', 9, self.cam_file).reshape(3, 3)
        size = cam_calib.get(f'S_rect_{cam}')
        self.size = (int(round(size[1])), int(round(size[0]))) if size is not None and size.size == 2 else None
        self.K = np.array(self.P_rect[:3, :3], dtype=np.float64)
        # rectified camera 0 → rectified camera `cam`: the offset encoded in P_rect's 4th column
        self.T_cam_rect0 = np.eye(4)
        self.T_cam_rect0[:3, 3] = np.linalg.solve(self.P_rect[:3, :3], self.P_rect[:, 3])
        self._date_dir = date_dir
        self._T_cam0_velo = None
        self._T_velo_imu = None

    @property
    def T_cam0_velo(self) -> np.ndarray:
        """float64 [4,4] velodyne → unrectified camera 0."""
        if self._T_cam0_velo is None:
            p = self._date_dir / 'calib_velo_to_cam.txt'
            self._T_cam0_velo = rigid_from_calib(read_calib_file(p), p)
        return self._T_cam0_velo

    @property
    def T_velo_imu(self) -> np.ndarray:
        """float64 [4,4] IMU → velodyne."""
        if self._T_velo_imu is None:
            p = self._date_dir / 'calib_imu_to_velo.txt'
            self._T_velo_imu = rigid_from_calib(read_calib_file(p), p)
        return self._T_velo_imu

    def T_cam_velo(self) -> np.ndarray:
        """float64 [4,4] velodyne → this rectified camera (metric, without the projection)."""
        return self.T_cam_rect0 @ self.R_rect @ self.T_cam0_velo

    def T_cam_imu(self) -> np.ndarray:
        return self.T_cam_velo() @ self.T_velo_imu


def project_velodyne(points: np.ndarray, calib: KittiCalib, height: int, width: int) -> np.ndarray:
    """float32 [H,W] depth (metres, 0 = no point) from velodyne points float32 [N,4] (x,y,z,reflectance).

    Points behind the scanner (x < 0) are dropped; depth is the third projected coordinate of
    P_rect · R_rect_00 · T_cam0_velo; each point lands on the pixel nearest its projection and the
    closest point wins.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, points.shape[-1])[:, :3]
    pts = pts[pts[:, 0] >= 0]
    hom = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    P_velo2im = calib.P_rect @ calib.R_rect @ calib.T_cam0_velo
    proj = hom @ P_velo2im.T
    z = proj[:, 2]
    keep = z > 0
    proj, z = proj[keep], z[keep]
    col = np.round(proj[:, 0] / z).astype(np.int64)
    row = np.round(proj[:, 1] / z).astype(np.int64)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    col, row, z = col[inside], row[inside], z[inside]
    depth = np.zeros((height, width), dtype=np.float32)
    order = np.argsort(z, kind='stable')
    lin = (row * width + col)[order]
    _, first = np.unique(lin, return_index=True)  # first occurrence in ascending z = nearest point
    depth.reshape(-1)[lin[first]] = z[order][first]
    return depth


def read_velodyne(path: str | os.PathLike) -> np.ndarray:
    """float32 [N,4] (x, y, z, reflectance) of a KITTI velodyne .bin scan."""
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise DatasetError(f'{path}: {raw.size} floats is not a multiple of 4; the scan file is truncated')
    return raw.reshape(-1, 4)


# ---- OXTS poses ----------------------------------------------------------------------------
def oxts_pose(packet: np.ndarray, mercator_scale: float) -> np.ndarray:
    """float64 [4,4] T_world_imu of one OXTS packet (lat, lon, alt, roll, pitch, yaw, ...), KITTI devkit convention."""
    lat, lon, alt, roll, pitch, yaw = packet[:6]
    tx = mercator_scale * np.radians(lon) * EARTH_RADIUS_M
    ty = mercator_scale * EARTH_RADIUS_M * np.log(np.tan(np.radians(90.0 + lat) / 2.0))
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = Rz @ Ry @ Rx
    T[:3, 3] = (tx, ty, alt)
    return T


def _parse_kitti_time(text: str) -> float:
    """Seconds since the epoch of a KITTI timestamp '2011-09-26 13:02:25.594360375' (ns precision kept as float)."""
    text = text.strip()
    base, _, frac = text.partition('.')
    t = _dt.datetime.strptime(base, '%Y-%m-%d %H:%M:%S').replace(tzinfo=_dt.timezone.utc).timestamp()
    return t + (float('0.' + frac) if frac else 0.0)


# ---- sequences -----------------------------------------------------------------------------
class KittiSequence(FrameSequence):
    """One KITTI raw drive seen by one colour camera."""

    def __init__(self, root: str | os.PathLike, folder: str, side: str = 'l', targets: list[int] | None = None,
                 gt: str = 'auto'):
        if side not in SIDES:
            raise DatasetError(f'KITTI camera side must be "l" or "r", got {side!r}')
        if gt not in ('auto', 'improved', 'velodyne', 'none'):
            raise DatasetError(f'KITTI gt must be auto|improved|velodyne|none, got {gt!r}')
        self.root = Path(root)
        self.folder = folder.strip('/')
        self.side = side
        self.cam = SIDES[side]
        self.gt_mode = gt
        self.name = f'{self.folder.replace("/", "_")}_{side}'
        self.drive_dir = self.root / self.folder
        self.image_dir = self.drive_dir / f'image_{self.cam}' / 'data'
        if not self.image_dir.is_dir():
            raise DatasetError(f'{self.image_dir} does not exist; expected the KITTI raw layout '
                               f'<root>/<date>/<drive>/image_0{{2|3}}/data/')
        files = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in ('.png', '.jpg', '.jpeg'))
        if not files:
            raise DatasetError(f'{self.image_dir} holds no .png/.jpg images')
        self._files = files
        self._kitti_index = [int(p.stem) for p in files]
        self._position = {k: i for i, k in enumerate(self._kitti_index)}
        date_dir = self.drive_dir.parent
        self.calib = KittiCalib(date_dir, self.cam)
        self._targets = None
        if targets is not None:
            missing = [t for t in targets if t not in self._position]
            if missing:
                raise DatasetError(f'split lists frames {missing[:5]} of {self.folder} ({side}) that are not in '
                                   f'{self.image_dir}')
            self._targets = sorted({self._position[t] for t in targets})
        self._stamps = self._read_stamps()
        self._poses = None
        self._poses_read = False

    def __len__(self) -> int:
        return len(self._files)

    def kitti_index(self, i: int) -> int:
        """The KITTI frame number (file name) of sequence frame i."""
        return self._kitti_index[self.check_index(i)]

    def sample_indices(self) -> list[int]:
        return list(self._targets) if self._targets is not None else list(range(len(self)))

    def rgb(self, i: int) -> np.ndarray:
        path = self._files[self.check_index(i)]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f'{path} is unreadable')
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def K(self, i: int) -> np.ndarray:
        self.check_index(i)
        return self.calib.K.copy()

    def image_size(self) -> tuple[int, int]:
        """(height, width) of the rectified images."""
        if self.calib.size is not None:
            return self.calib.size
        return self.rgb(0).shape[:2]

    def _read_stamps(self) -> np.ndarray | None:
        p = self.drive_dir / f'image_{self.cam}' / 'timestamps.txt'
        if not p.is_file():
            return None
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
        try:
            stamps = np.array([_parse_kitti_time(ln) for ln in lines])
        except ValueError as exc:
            raise DatasetError(f'{p}: cannot parse time stamp ({exc})') from None
        return stamps

    def stamp(self, i: int) -> float:
        k = self.kitti_index(i)
        if self._stamps is not None and k < len(self._stamps):
            return float(self._stamps[k])
        return k / 10.0  # KITTI raw is recorded at 10 Hz

    def _load_poses(self) -> None:
        self._poses_read = True
        oxts_dir = self.drive_dir / 'oxts' / 'data'
        if not oxts_dir.is_dir() or not (self.drive_dir.parent / 'calib_imu_to_velo.txt').is_file():
            return
        packets = {}
        for k in self._kitti_index:
            p = oxts_dir / f'{k:010d}.txt'
            if p.is_file():
                vals = np.array(p.read_text().split(), dtype=np.float64)
                if vals.size < 6:
                    raise DatasetError(f'{p}: an OXTS packet needs at least 6 numbers, got {vals.size}')
                packets[k] = vals
        if not packets:
            return
        first = min(packets)
        scale = np.cos(np.radians(packets[first][0]))
        T_imu_cam = np.linalg.inv(self.calib.T_cam_imu())
        origin_inv = None
        poses = {}
        for k in sorted(packets):
            T_w_imu = oxts_pose(packets[k], scale)
            if origin_inv is None:
                origin_inv = np.linalg.inv(T_w_imu @ T_imu_cam)
            poses[k] = origin_inv @ T_w_imu @ T_imu_cam
        self._poses = poses

    def pose(self, i: int) -> np.ndarray | None:
        k = self.kitti_index(i)
        if not self._poses_read:
            self._load_poses()
        if self._poses is None or k not in self._poses:
            return None
        return self._poses[k].copy()

    def gt_depth(self, i: int) -> np.ndarray | None:
        k = self.kitti_index(i)
        if self.gt_mode in ('auto', 'improved'):
            p = self.drive_dir / 'proj_depth' / 'groundtruth' / f'image_{self.cam}' / f'{k:010d}.png'
            if p.is_file():
                raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
                if raw is None or raw.dtype != np.uint16:
                    raise DatasetError(f'{p} is not a 16-bit PNG depth map (value/256 = metres)')
                return raw.astype(np.float32) / 256.0
            if self.gt_mode == 'improved':
                return None
        if self.gt_mode in ('auto', 'velodyne'):
            p = self.drive_dir / 'velodyne_points' / 'data' / f'{k:010d}.bin'
            if p.is_file():
                h, w = self.image_size()
                return project_velodyne(read_velodyne(p), self.calib, h, w)
        return None


class KittiSource(FrameSource):
    """KITTI raw drives: every drive under root (split None/'all') or those a monodepth2 split file names."""

    layout = 'kitti'

    def __init__(self, root: str | os.PathLike, split: str | None = None, sides: str = 'l', gt: str = 'auto'):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f'KITTI root {self.root} does not exist')
        split_file = find_split_file(self.root, split, 'KITTI')
        groups: dict[tuple[str, str], list[int]] = {}
        if split_file is None:
            for image_dir in sorted(self.root.glob('*/*/image_0[23]/data')):
                side = 'l' if image_dir.parent.name == 'image_02' else 'r'
                if side in sides:
                    folder = image_dir.parent.parent.relative_to(self.root).as_posix()
                    groups[(folder, side)] = None
            if not groups:
                raise DatasetError(f'no KITTI drives under {self.root}; expected <root>/<date>/<drive>/image_02/data/')
        else:
            for n, tokens in enumerate(read_split_lines(split_file), 1):
                if len(tokens) not in (2, 3):
                    raise DatasetError(f'{split_file}:{n}: expected "<date>/<drive> <frame> [l|r]", got {tokens}')
                side = tokens[2] if len(tokens) == 3 else 'l'
                try:
                    frame = int(tokens[1])
                except ValueError:
                    raise DatasetError(f'{split_file}:{n}: frame index {tokens[1]!r} is not an integer') from None
                groups.setdefault((tokens[0], side), []).append(frame)
        self._sequences = [KittiSequence(self.root, folder, side, targets, gt)
                           for (folder, side), targets in sorted(groups.items())]

    def sequences(self) -> list[KittiSequence]:
        return list(self._sequences)
