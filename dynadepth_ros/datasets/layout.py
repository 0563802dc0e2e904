"""Read and write the synthetic / recorded dataset layout (design §6).

    <root>/<split>/<sequence>/
        calib.json          {"K": [[fx,0,cx],[0,fy,cy],[0,0,1]], "height": H, "width": W, "fps": 10}
        poses.txt           one line per frame: 12 numbers, row-major top 3x4 of T_world_cam
        rgb/000000.png      8-bit RGB
        depth/000000.npy    float32 [H,W] z-depth in metres, 0 = invalid (sky)
        mask/000000.png     16-bit instance ids, 0 = background
        instances/000000.json  list of {id, class, moving, velocity[3] (world, m/s), box}

`box` is {"center_world": [x,y,z], "center_cam": [x,y,z] (this frame's optical frame),
"size": [length, width, height] (m), "yaw_world": rad (about world up)}.

A sequence is written into a hidden `.<name>.partial/` directory and renamed into place when
complete, so a killed writer never leaves a half sequence that looks finished; a writer that fails
removes it (abort), and the next writer of that name removes one a killed writer left.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..atomic_files import CloseOrAbort

SPLITS = ('train', 'val', 'test')


@dataclass
class Calib:
    K: np.ndarray            # float64 [3,3], pixels
    height: int
    width: int
    fps: float = 10.0

    def to_json(self) -> dict:
        return {'K': np.asarray(self.K, dtype=float).tolist(), 'height': int(self.height),
                'width': int(self.width), 'fps': float(self.fps)}

    @classmethod
    def from_json(cls, d: dict) -> 'Calib':
        K = np.asarray(d['K'], dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f'calib.json: K must be 3x3, got shape {K.shape}')
        return cls(K=K, height=int(d['height']), width=int(d['width']), fps=float(d.get('fps', 10.0)))


@dataclass
class Instance:
    id: int
    cls: str
    moving: bool
    velocity: list            # [vx, vy, vz] world frame, m/s
    box: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {'id': int(self.id), 'class': self.cls, 'moving': bool(self.moving),
                'velocity': [float(v) for v in self.velocity], 'box': self.box}

    @classmethod
    def from_json(cls, d: dict) -> 'Instance':
        return cls(id=int(d['id']), cls=str(d['class']), moving=bool(d['moving']),
                   velocity=[float(v) for v in d['velocity']], box=d.get('box', {}))


@dataclass
class Frame:
    index: int
    rgb: np.ndarray           # uint8 [H,W,3]
    depth: np.ndarray         # float32 [H,W] metres, 0 = invalid
    mask: np.ndarray          # uint16 [H,W] instance ids
    instances: list           # list[Instance]
    pose: np.ndarray          # float64 [4,4] T_world_cam


def _frame_name(i: int) -> str:
    return f'{i:06d}'


class SequenceWriter(CloseOrAbort):
    """Writes one sequence; call close() (or use as a context manager) to publish it atomically."""

    def __init__(self, root: str | os.PathLike, split: str, name: str, calib: Calib):
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
        self.final = Path(root) / split / name
        self.tmp = Path(root) / split / f'.{name}.partial'
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        try:
            for sub in ('rgb', 'depth', 'mask', 'instances'):
                (self.tmp / sub).mkdir(parents=True)
            (self.tmp / 'calib.json').write_text(json.dumps(calib.to_json(), indent=1))
        except BaseException:
            self.abort()
            raise
        self.calib = calib
        self.poses: list[np.ndarray] = []

    @property
    def path(self) -> Path:
        """Where files go while writing (extra artifacts such as a bag can be added here)."""
        return self.tmp

    def write(self, frame: Frame) -> None:
        if frame.index != len(self.poses):
            raise ValueError(f'frames must be written in order: expected {len(self.poses)}, got {frame.index}')
        h, w = self.calib.height, self.calib.width
        if frame.rgb.shape != (h, w, 3) or frame.rgb.dtype != np.uint8:
            raise ValueError(f'rgb must be uint8 [{h},{w},3], got {frame.rgb.dtype} {frame.rgb.shape}')
        n = _frame_name(frame.index)
        cv2.imwrite(str(self.tmp / 'rgb' / f'{n}.png'), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_PNG_COMPRESSION, 1])
        np.save(self.tmp / 'depth' / f'{n}.npy', frame.depth.astype(np.float32))
        cv2.imwrite(str(self.tmp / 'mask' / f'{n}.png'), frame.mask.astype(np.uint16),
                    [cv2.IMWRITE_PNG_COMPRESSION, 1])
        (self.tmp / 'instances' / f'{n}.json').write_text(json.dumps([i.to_json() for i in frame.instances]))
        self.poses.append(np.asarray(frame.pose, dtype=np.float64))

    def close(self) -> Path:
        lines = [' '.join(f'{v:.9g}' for v in p[:3, :4].reshape(-1)) for p in self.poses]
        (self.tmp / 'poses.txt').write_text('\n'.join(lines) + '\n')
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        """Drop what was written (the sequence is not published; an earlier one of that name stays)."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_poses(path: str | os.PathLike) -> np.ndarray:
    """float64 [N,4,4] T_world_cam from a poses.txt."""
    rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if rows.shape[1] != 12:
        raise ValueError(f'{path}: expected 12 numbers per line, got {rows.shape[1]}')
    poses = np.tile(np.eye(4), (rows.shape[0], 1, 1))
    poses[:, :3, :4] = rows.reshape(-1, 3, 4)
    return poses


class Sequence:
    """Lazy reader of one sequence directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / 'calib.json').is_file():
            raise FileNotFoundError(f'{self.path} is not a sequence directory (no calib.json)')
        self.calib = Calib.from_json(json.loads((self.path / 'calib.json').read_text()))
        self.poses = read_poses(self.path / 'poses.txt')
        n_rgb = len(list((self.path / 'rgb').glob('*.png')))
        if n_rgb != len(self.poses):
            raise ValueError(f'{self.path}: {n_rgb} rgb frames but {len(self.poses)} poses')

    @property
    def name(self) -> str:
        return self.path.name

    def __len__(self) -> int:
        return len(self.poses)

    def rgb(self, i: int) -> np.ndarray:
        img = cv2.imread(str(self.path / 'rgb' / f'{_frame_name(i)}.png'), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f'{self.path}/rgb/{_frame_name(i)}.png is missing or unreadable')
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def depth(self, i: int) -> np.ndarray:
        return np.load(self.path / 'depth' / f'{_frame_name(i)}.npy')

    def mask(self, i: int) -> np.ndarray:
        m = cv2.imread(str(self.path / 'mask' / f'{_frame_name(i)}.png'), cv2.IMREAD_UNCHANGED)
        if m is None:
            raise FileNotFoundError(f'{self.path}/mask/{_frame_name(i)}.png is missing or unreadable')
        return m.astype(np.uint16)

    def instances(self, i: int) -> list[Instance]:
        return [Instance.from_json(d) for d in json.loads((self.path / 'instances' / f'{_frame_name(i)}.json').read_text())]

    def frame(self, i: int) -> Frame:
        return Frame(index=i, rgb=self.rgb(i), depth=self.depth(i), mask=self.mask(i),
                     instances=self.instances(i), pose=self.poses[i])

    def moving_mask(self, i: int) -> np.ndarray:
        """bool [H,W]: pixels of instances flagged as moving in frame i."""
        m = self.mask(i)
        moving_ids = [inst.id for inst in self.instances(i) if inst.moving]
        return np.isin(m, moving_ids) if moving_ids else np.zeros(m.shape, dtype=bool)


def list_sequences(root: str | os.PathLike, split: str) -> list[Sequence]:
    """All complete sequences of a split, sorted by name (partial ones are ignored)."""
    d = Path(root) / split
    if not d.is_dir():
        return []
    return [Sequence(p) for p in sorted(d.iterdir()) if p.is_dir() and not p.name.startswith('.')]
