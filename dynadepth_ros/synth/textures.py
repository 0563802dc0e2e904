"""Procedural surface textures: a periodic fractal-noise tile with a mip pyramid, trilinear sampling,
integer hashing for per-cell variation and anti-aliased stripe/box coverage for painted patterns.

All texture coordinates are in texels of level 0 (callers divide metres by the material's texel size),
footprints are the size of one pixel on the surface in the same texel units; sampling picks the mip
level from the footprint so distant and grazing surfaces do not alias (photometric consistency
between frames depends on that).
"""
from __future__ import annotations

import numpy as np


def fractal_noise_tile(rng: np.random.Generator, size: int = 256, beta: float = 1.6) -> np.ndarray:
    """float32 [size,size] zero-mean, unit-std periodic noise with a 1/f^beta amplitude spectrum.

    Periodic by construction (filtered in the Fourier domain), so it tiles without seams.
    """
    if size & (size - 1):
        raise ValueError(f'texture size must be a power of two, got {size}')
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    fr = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    amp = 1.0 / np.maximum(fr, 1.0 / size) ** beta
    amp[0, 0] = 0.0
    tile = np.real(np.fft.ifft2(np.fft.fft2(white) * amp))
    tile = (tile - tile.mean()) / tile.std()
    return tile.astype(np.float32)


class MipTexture:
    """A square, power-of-two, wrap-around scalar texture with a box-filtered mip pyramid.

    Levels are packed into one flat float32 array so one gather serves pixels at mixed levels.
    """

    def __init__(self, tile: np.ndarray):
        tile = np.asarray(tile, dtype=np.float32)
        n = tile.shape[0]
        if tile.shape != (n, n) or n & (n - 1):
            raise ValueError(f'MipTexture needs a square power-of-two tile, got {tile.shape}')
        levels = [tile]
        while levels[-1].shape[0] > 1:
            t = levels[-1]
            levels.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
        self.size = n
        self.n_levels = len(levels)
        self.sizes = np.array([lv.shape[0] for lv in levels], dtype=np.int32)
        self.offsets = np.cumsum([0] + [lv.size for lv in levels[:-1]]).astype(np.int32)
        self.flat = np.concatenate([lv.reshape(-1) for lv in levels]).astype(np.float32)
        self.log2_sizes = np.log2(self.sizes).astype(np.int32)

    def _bilinear(self, u: np.ndarray, v: np.ndarray, level: np.ndarray) -> np.ndarray:
        """Bilinear lookup at integer mip `level` (int32 array); u, v in level-0 texels."""
        scale = np.ldexp(np.float32(1.0), -level).astype(np.float32)
        ul = u * scale - 0.5
        vl = v * scale - 0.5
        iu = np.floor(ul)
        iv = np.floor(vl)
        fu = ul - iu
        fv = vl - iv
        mask = self.sizes[level] - 1
        iu = iu.astype(np.int32)
        iv = iv.astype(np.int32)
        iu0 = iu & mask
        iu1 = (iu + 1) & mask
        row0 = (iv & mask) << self.log2_sizes[level]
        row1 = ((iv + 1) & mask) << self.log2_sizes[level]
        off = self.offsets[level]
        row0 += off
        row1 += off
        flat = self.flat
        top = flat[row0 + iu0]
        top += fu * (flat[row0 + iu1] - top)
        bot = flat[row1 + iu0]
        bot += fu * (flat[row1 + iu1] - bot)
        top += fv * (bot - top)
        return top

    def sample(self, u: np.ndarray, v: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        """Trilinear sample. u, v, footprint: float32 [...] in level-0 texels. Returns float32 [...]."""
        lod = np.log2(np.maximum(footprint, np.float32(1.0)))
        np.minimum(lod, np.float32(self.n_levels - 1), out=lod)
        l0 = lod.astype(np.int32)
        frac = lod - l0
        l1 = np.minimum(l0 + 1, self.n_levels - 1)
        a = self._bilinear(u, v, l0)
        b = self._bilinear(u, v, l1)
        a += frac * (b - a)
        return a


def hash_cells(a: np.ndarray, b: np.ndarray, seed) -> np.ndarray:
    """float32 in [0,1) from integer cell coordinates (any int arrays, same shape) and a seed
    (an int, or a uint32 array of the same shape).

    A cheap avalanche hash: no visible correlation between neighbouring cells, no period in practice.
    """
    h = a.astype(np.uint32) * np.uint32(0x8DA6B343)
    h ^= b.astype(np.uint32) * np.uint32(0xD8163841)
    h ^= np.asarray(seed).astype(np.uint32)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def box_coverage(x: np.ndarray, half_width, footprint: np.ndarray) -> np.ndarray:
    """Fraction in [0,1] of a pixel of size `footprint` covered by the band |x| <= half_width.

    Box-filtered (anti-aliased) so thin painted lines fade instead of flickering with distance.
    x, footprint: float32 [...] in the same units; half_width: scalar or array.
    """
    cov = (half_width - np.abs(x)) / footprint + np.float32(0.5)
    np.clip(cov, 0.0, 1.0, out=cov)
    # a band narrower than the pixel cannot cover more than its width
    return np.minimum(cov, np.float32(2.0) * half_width / footprint)


def periodic_offset(x: np.ndarray, period) -> np.ndarray:
    """x mapped to [-period/2, period/2) relative to the nearest multiple of `period`."""
    return x - period * np.floor(x / period + np.float32(0.5))
