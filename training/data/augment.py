"""Training-time augmentation of triplet samples, consistent across every map of a sample.

Two operations, sampled once per sample from a per-sample RNG:

- horizontal flip (p = flip_prob): every image, mask, depth map and bool map is reversed along
  its **width** axis, and K becomes the intrinsics of the mirrored camera (cx → W-1-cx, skew
  negated), so a 3-D point mirrored in x projects onto the flipped pixel. (The reference code
  flipped masks along the height axis; we test this.)
- colour jitter (p = colour_prob): brightness, contrast, saturation factors in [1-a, 1+a] and a hue
  shift in [-hue, +hue] turns, applied in a random order, identically to the three frames of a
  triplet. Only the network input gets it; loss targets keep the original colours.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class AugmentConfig:
    """Augmentation of training samples (validation and test samples are never augmented).

    flip_prob: probability of a horizontal flip. colour_prob: probability of colour jitter.
    brightness / contrast / saturation: jitter factor drawn from [1-x, 1+x]. hue: shift drawn
    from [-hue, hue] of a full colour turn (0.1 = ±36°).
    """

    flip_prob: float = 0.5
    colour_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1

    def __post_init__(self):
        for name in ('flip_prob', 'colour_prob'):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f'augment.{name} is a probability in [0, 1], got {v}')
        for name in ('brightness', 'contrast', 'saturation'):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f'augment.{name} must be in [0, 1) (factor drawn from [1-x, 1+x]), got {v}')
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f'augment.hue must be in [0, 0.5] turns, got {self.hue}')


@dataclass(frozen=True)
class ColourJitter:
    """Jitter parameters of one sample: factors, hue shift (turns) and the order of the 4 operations."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    order: tuple[int, ...]   # permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue)


@dataclass(frozen=True)
class AugmentParams:
    """What to do to one sample: flip or not, and colour jitter or None."""

    flip: bool
    colour: ColourJitter | None


NO_AUGMENTATION = AugmentParams(flip=False, colour=None)


def sample_params(cfg: AugmentConfig, rng: np.random.Generator) -> AugmentParams:
    """Draw one sample's augmentation from `rng` (always the same number of draws, so RNG streams stay aligned)."""
    u_flip, u_colour = rng.random(2)
    factors = rng.uniform(-1.0, 1.0, size=4)
    order = tuple(int(k) for k in rng.permutation(4))
    colour = None
    if u_colour < cfg.colour_prob:
        colour = ColourJitter(brightness=1.0 + cfg.brightness * float(factors[0]),
                              contrast=1.0 + cfg.contrast * float(factors[1]),
                              saturation=1.0 + cfg.saturation * float(factors[2]),
                              hue=cfg.hue * float(factors[3]), order=order)
    return AugmentParams(flip=bool(u_flip < cfg.flip_prob), colour=colour)


def flip_width(a: np.ndarray, width_axis: int) -> np.ndarray:
    """A contiguous copy of `a` reversed along `width_axis`."""
    return np.ascontiguousarray(np.flip(a, axis=width_axis))


def flip_intrinsics(K: np.ndarray, width: int) -> np.ndarray:
    """K [3,3] of the horizontally mirrored image of `width` pixels: cx → W-1-cx, skew → -skew.

    A point (X, Y, Z) seen at pixel u by K is seen at W-1-u by the returned K as (-X, Y, Z).
    """
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 2] = (width - 1) - out[0, 2]
    out[0, 1] = 0.0 - out[0, 1]  # (avoids -0.0 for zero skew)
    return out


def _grey(img: np.ndarray) -> np.ndarray:
    return img @ _GREY


def jitter_colour(images: np.ndarray, p: ColourJitter) -> np.ndarray:
    """float32 [T,H,W,3] RGB in [0,1] → jittered copy (same parameters for all T images), clipped to [0,1]."""
    out = np.empty_like(images, dtype=np.float32)
    for t in range(images.shape[0]):
        img = images[t].astype(np.float32, copy=True)
        for op in p.order:
            if op == 0:
                img *= p.brightness
            elif op == 1:
                mean = float(_grey(img).mean())
                img = (img - mean) * p.contrast + mean
            elif op == 2:
                g = _grey(img)[..., None]
                img = (img - g) * p.saturation + g
            elif p.hue != 0.0:
                hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)          # float: H in [0,360), S,V in [0,1]
                hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * p.hue, 360.0)
                img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
            np.clip(img, 0.0, 1.0, out=img)
        out[t] = img
    return out
