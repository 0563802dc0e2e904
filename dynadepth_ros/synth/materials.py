"""Material table: per-material base colour, noise texture settings and a painted-pattern kind with
its parameters. The renderer stores a material index per pixel; shading gathers from these arrays.
"""
from __future__ import annotations

import numpy as np

# Pattern kinds (what is painted on top of the noise texture; see shading.py).
PLAIN = 0        # noise only
ROAD = 1         # asphalt, lane markings, zebra crossings (params: world layout)
SIDEWALK = 2     # paving slabs (p0 slab length, p1 slab width)
FACADE = 3       # window grid (p0 cell width, p1 floor height, p2 window w, p3 window h, p4 sill, p5 shop floor)
CAR_REAR = 4     # tail lights + number plate (p0 face width)
CAR_FRONT = 5    # headlights + grille (p0 face width)
CAR_SIDE = 6     # door seams, dark sill (p0 face length)
GLASS = 7        # dark glass with a soft reflection gradient
FOLIAGE = 8      # high-contrast two-tone leaves
SIGN = 9         # sign plate with a border and a stripe (p0 width, p1 height)
N_KINDS = 10
N_PARAMS = 6


class MaterialTable:
    """Growable table; `freeze()` returns contiguous arrays for the shader."""

    def __init__(self):
        self._rows: list[tuple] = []

    def add(self, kind: int, color, *, contrast: float = 0.25, texel: float = 0.02, seed: int = 0,
            params=(), color2=None, coarse: float = 0.6) -> int:
        """Add a material and return its index.

        color, color2: RGB in [0,1] (color2 = secondary paint, e.g. window frames, leaves);
        contrast: relative albedo modulation by the noise; texel: metres per noise texel (level 0);
        coarse: weight of the 4.3x coarser, rotated second noise layer (the fine layer has weight 0.6);
        seed: per-material integer used for hashing cells and for noise offsets.
        """
        p = np.zeros(N_PARAMS, np.float32)
        p[:len(params)] = params
        c2 = color if color2 is None else color2
        self._rows.append((int(kind), np.asarray(color, np.float32), np.asarray(c2, np.float32), float(contrast),
                           float(texel), int(seed) & 0x7FFFFFFF, p, float(coarse)))
        return len(self._rows) - 1

    def __len__(self) -> int:
        return len(self._rows)

    def truncate(self, n: int) -> None:
        """Drop the rows added after the table had n rows (materials of a rejected object)."""
        del self._rows[n:]

    def freeze(self) -> 'FrozenMaterials':
        return FrozenMaterials(self._rows)


class FrozenMaterials:
    """kind int32 [M]; color, color2 float32 [M,3]; contrast, inv_texel, coarse float32 [M]; seed int64 [M];
    offset float32 [M,2] (noise offset, texels); params float32 [M,N_PARAMS]."""

    def __init__(self, rows: list[tuple]):
        self.kind = np.array([r[0] for r in rows], np.int32)
        self.kind8 = self.kind.astype(np.uint8)             # radix-sortable
        self.color = np.array([r[1] for r in rows], np.float32).reshape(-1, 3)
        self.color2 = np.array([r[2] for r in rows], np.float32).reshape(-1, 3)
        self.contrast = np.array([r[3] for r in rows], np.float32)
        self.inv_texel = (1.0 / np.array([r[4] for r in rows], np.float32)).astype(np.float32)
        self.seed = np.array([r[5] for r in rows], np.int64)
        self.seed32 = self.seed.astype(np.uint32)
        # noise offsets decorrelate surfaces that share a texture tile (deterministic from the seed)
        s = self.seed.astype(np.uint64)
        self.offset = np.stack([(s * np.uint64(2654435761) % np.uint64(65536)).astype(np.float32),
                                (s * np.uint64(40503) % np.uint64(65521)).astype(np.float32)], axis=1)
        self.params = np.array([r[6] for r in rows], np.float32).reshape(-1, N_PARAMS)
        self.coarse = np.array([r[7] for r in rows], np.float32)
        # row-contiguous copy of what every pixel needs, gathered in one go by the shader:
        # inv_texel, offset u, offset v, contrast, coarse weight, r, g, b
        self.surface = np.ascontiguousarray(np.concatenate(
            [self.inv_texel[:, None], self.offset, self.contrast[:, None], self.coarse[:, None], self.color], axis=1),
            dtype=np.float32)

    def __len__(self) -> int:
        return len(self.kind)


def jitter_color(rng: np.random.Generator, rgb, amount: float = 0.06) -> np.ndarray:
    """RGB [3] in [0,1] with a small random brightness and hue jitter."""
    c = np.asarray(rgb, float) * rng.uniform(1 - amount * 2, 1 + amount * 2) + rng.normal(0, amount / 2, 3)
    return np.clip(c, 0.02, 0.98)


FACADE_COLORS = np.array([
    (0.80, 0.72, 0.58), (0.66, 0.36, 0.28), (0.72, 0.70, 0.66), (0.88, 0.86, 0.80), (0.78, 0.62, 0.36),
    (0.52, 0.58, 0.64), (0.60, 0.48, 0.40), (0.84, 0.78, 0.70), (0.46, 0.44, 0.42), (0.74, 0.52, 0.44),
])
CAR_COLORS = np.array([
    (0.85, 0.85, 0.86), (0.12, 0.12, 0.13), (0.45, 0.46, 0.48), (0.62, 0.08, 0.07), (0.10, 0.20, 0.45),
    (0.70, 0.70, 0.72), (0.20, 0.32, 0.22), (0.80, 0.62, 0.20), (0.30, 0.22, 0.18), (0.90, 0.90, 0.88),
])
BRIGHT_CAR_COLORS = np.array([
    (0.95, 0.78, 0.10), (0.92, 0.42, 0.08), (0.50, 0.72, 0.88), (0.30, 0.62, 0.28), (0.55, 0.12, 0.38),
    (0.85, 0.15, 0.12), (0.15, 0.45, 0.75), (0.60, 0.80, 0.25),
])
CLOTHES_COLORS = np.array([
    (0.15, 0.15, 0.18), (0.20, 0.25, 0.45), (0.55, 0.12, 0.12), (0.75, 0.72, 0.65), (0.25, 0.35, 0.22),
    (0.40, 0.38, 0.36), (0.85, 0.55, 0.15), (0.60, 0.60, 0.70),
])
SKIN_COLORS = np.array([(0.86, 0.68, 0.56), (0.62, 0.44, 0.32), (0.40, 0.28, 0.20), (0.78, 0.60, 0.46)])
