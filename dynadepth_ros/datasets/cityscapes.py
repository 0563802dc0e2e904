"""Reader of the preprocessed Cityscapes triplets the reference code trains on (reference §7.1).

    <root>/<city>/<frame>.png        three frames side by side [prev | cur | next] (e.g. 3072x384)
    <root>/<city>/<frame>_cam.txt    9 comma-separated numbers: row-major K of one 1024x384 frame
    list file lines:                 `<city> <frame>`  (e.g. `ulm ulm_000002_000025`)

Every triplet file becomes a sequence of three frames whose only target frame is the middle one
(index 1); the frame spacing is fixed by the preprocessing (t-2, t, t+2 of the 17 Hz video), so
triplets are built with frame_gap 1. The data carry no poses, GT depth or masks.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np

from dynadepth_ros.datasets.base import DatasetError, FrameSequence, FrameSource, find_split_file, read_split_lines

CITYSCAPES_FPS = 17.0
PREPROCESS_GAP = 2  # the preprocessed triplets are frames t-2, t, t+2


def read_cam_file(path: str | os.PathLike) -> np.ndarray:
    """float64 [3,3] K of a `<frame>_cam.txt` (9 comma- or space-separated numbers, row-major)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f'{path} is missing; every Cityscapes triplet needs its <frame>_cam.txt intrinsics')
    tokens = [t for t in re.split(r'[,\s]+', path.read_text().strip()) if t]
    try:
        vals = np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        raise DatasetError(f'{path}: intrinsics must be 9 numbers, got {tokens[:9]}') from None
    if vals.size != 9:
        raise DatasetError(f'{path}: intrinsics must be 9 numbers (row-major K), got {vals.size}')
    K = vals.reshape(3, 3)
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise DatasetError(f'{path}: K has fx={K[0, 0]:g}, fy={K[1, 1]:g}; the intrinsics file is damaged')
    return K


class CityscapesTriplet(FrameSequence):
    """One preprocessed triplet file: frames 0 (t-2), 1 (t), 2 (t+2)."""

    def __init__(self, root: str | os.PathLike, city: str, frame: str):
        self.root = Path(root)
        self.city = city
        self.frame = frame
        self.name = f'{city}/{frame}'
        self.image_path = self.root / city / f'{frame}.png'
        if not self.image_path.is_file():
            raise DatasetError(f'{self.image_path} is missing (listed as "{city} {frame}")')
        self._K = read_cam_file(self.root / city / f'{frame}_cam.txt')
        m = re.search(r'_(\d+)$', frame)
        self._frame_number = int(m.group(1)) if m else None

    def __len__(self) -> int:
        return 3

    def sample_indices(self) -> list[int]:
        return [1]

    # the last decoded triplet file, shared by all triplets: reading frames 0, 1, 2 decodes the PNG once
    _last: tuple[Path, np.ndarray] | None = None

    def _triplet(self) -> np.ndarray:
        last = CityscapesTriplet._last
        if last is None or last[0] != self.image_path:
            img = cv2.imread(str(self.image_path), cv2.IMREAD_COLOR)
            if img is None:
                raise DatasetError(f'{self.image_path} is unreadable')
            if img.shape[1] % 3:
                raise DatasetError(f'{self.image_path} is {img.shape[1]} px wide; a side-by-side triplet '
                                   f'[prev | cur | next] must be a multiple of 3 wide')
            CityscapesTriplet._last = last = (self.image_path, cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        return last[1]

    def rgb(self, i: int) -> np.ndarray:
        i = self.check_index(i)
        trip = self._triplet()
        w = trip.shape[1] // 3
        return np.ascontiguousarray(trip[:, i * w:(i + 1) * w])

    def K(self, i: int) -> np.ndarray:
        self.check_index(i)
        return self._K.copy()

    def stamp(self, i: int) -> float:
        i = self.check_index(i)
        base = self._frame_number if self._frame_number is not None else 0
        return (base + (i - 1) * PREPROCESS_GAP) / CITYSCAPES_FPS


class CityscapesSource(FrameSource):
    """Triplets named by a `city frame` list file, or every `<city>/<frame>.png` with a _cam.txt (split None/'all')."""

    layout = 'cityscapes'

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f'Cityscapes root {self.root} does not exist')
        split_file = find_split_file(self.root, split, 'Cityscapes')
        entries: list[tuple[str, str]] = []
        if split_file is None:
            for cam in sorted(self.root.glob('*/*_cam.txt')):
                entries.append((cam.parent.name, cam.name[:-len('_cam.txt')]))
            if not entries:
                raise DatasetError(f'no Cityscapes triplets under {self.root}; expected <city>/<frame>.png with '
                                   f'<city>/<frame>_cam.txt')
        else:
            for n, tokens in enumerate(read_split_lines(split_file), 1):
                if len(tokens) < 2:
                    raise DatasetError(f'{split_file}:{n}: expected "<city> <frame>", got {tokens}')
                entries.append((tokens[0], tokens[1]))  # extra tokens (mask ids, labels) are not ours
        self._sequences = [CityscapesTriplet(self.root, city, frame) for city, frame in entries]

    def sequences(self) -> list[CityscapesTriplet]:
        return list(self._sequences)
