"""Camera image → model input, with a documented aspect policy.

Aspect policy (one rule, used both ways):
  * If the image's aspect ratio W/H is within `aspect_tolerance` (relative, default 5 %) of the model's,
    the whole image is resized to the model size (a slight anisotropic scale, e.g. KITTI 1242x375 →
    640x192 is 0.6 % off).
  * Otherwise the largest centred window with the model's aspect ratio is cropped first, then resized.
    The network never sees a squashed image (a squashed image gives wrong metric depth). Depth is
    mapped back onto the original image geometry, and pixels outside the crop are NaN (postprocess).
Resizing uses area averaging when shrinking and bilinear when enlarging.

Intrinsics follow the project convention (camera.py): a crop subtracts its offset from cx, cy; a resize
multiplies row 0 by sx and row 1 by sy.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dynadepth_ros.camera import scale_intrinsics


@dataclass(frozen=True)
class CropPlan:
    """How a source image of src_h x src_w pixels maps onto the model input of model_h x model_w."""

    src_h: int
    src_w: int
    x0: int          # crop window in source pixels: columns [x0, x0+crop_w), rows [y0, y0+crop_h)
    y0: int
    crop_w: int
    crop_h: int
    model_h: int
    model_w: int

    @property
    def cropped(self) -> bool:
        return (self.crop_w, self.crop_h) != (self.src_w, self.src_h)

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): model pixels per source pixel inside the crop."""
        return self.model_w / self.crop_w, self.model_h / self.crop_h

    def model_intrinsics(self, K: np.ndarray) -> np.ndarray:
        """K float64 [3,3] at the model input, from K at the source image size."""
        Kc = np.array(K, dtype=np.float64, copy=True)
        Kc[0, 2] -= self.x0
        Kc[1, 2] -= self.y0
        sx, sy = self.scale
        return scale_intrinsics(Kc, sx, sy)

    def source_intrinsics(self, K_model: np.ndarray) -> np.ndarray:
        """K float64 [3,3] at the source image size from K at the model input (inverse of model_intrinsics)."""
        sx, sy = self.scale
        Ks = scale_intrinsics(K_model, 1.0 / sx, 1.0 / sy)
        Ks[0, 2] += self.x0
        Ks[1, 2] += self.y0
        return Ks

    def output_window(self, out_h: int, out_w: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the crop window in an output image of out_h x out_w covering the source image.

        Output pixel (u, v) is inside when its centre maps into the crop; bounds are half-open.
        """
        fx, fy = out_w / self.src_w, out_h / self.src_h
        x0 = int(np.ceil(self.x0 * fx - 0.5))
        x1 = int(np.ceil((self.x0 + self.crop_w) * fx - 0.5))
        y0 = int(np.ceil(self.y0 * fy - 0.5))
        y1 = int(np.ceil((self.y0 + self.crop_h) * fy - 0.5))
        return max(x0, 0), max(y0, 0), min(max(x1, x0 + 1), out_w), min(max(y1, y0 + 1), out_h)


def plan_crop(src_h: int, src_w: int, model_h: int, model_w: int, aspect_tolerance: float = 0.05) -> CropPlan:
    """The CropPlan for a src_h x src_w image under the aspect policy in the module docstring."""
    if src_h <= 0 or src_w <= 0:
        raise ValueError(f'image size {src_w}x{src_h} must be positive')
    if aspect_tolerance < 0:
        raise ValueError(f'aspect_tolerance {aspect_tolerance} must be >= 0')
    r_src, r_model = src_w / src_h, model_w / model_h
    if abs(r_src / r_model - 1.0) <= aspect_tolerance:
        return CropPlan(src_h, src_w, 0, 0, src_w, src_h, model_h, model_w)
    if r_src > r_model:          # too wide: keep full height, crop columns
        crop_w = max(1, min(src_w, int(round(src_h * r_model))))
        return CropPlan(src_h, src_w, (src_w - crop_w) // 2, 0, crop_w, src_h, model_h, model_w)
    crop_h = max(1, min(src_h, int(round(src_w / r_model))))   # too tall: keep full width, crop rows
    return CropPlan(src_h, src_w, 0, (src_h - crop_h) // 2, src_w, crop_h, model_h, model_w)


def resize_interpolation(src_h: int, src_w: int, dst_h: int, dst_w: int) -> int:
    """cv2 flag: INTER_AREA when shrinking in both directions, else INTER_LINEAR."""
    return cv2.INTER_AREA if dst_h <= src_h and dst_w <= src_w else cv2.INTER_LINEAR


def to_model_input(rgb: np.ndarray, plan: CropPlan, out: np.ndarray | None = None) -> np.ndarray:
    """float32 [3, model_h, model_w] RGB in [0,1] from uint8 [H,W,3] RGB (H, W = plan.src_h, plan.src_w),
    written into `out` when given."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'expected a uint8 [H,W,3] RGB image, got {rgb.dtype} {rgb.shape}')
    if rgb.shape[:2] != (plan.src_h, plan.src_w):
        raise ValueError(f'image is {rgb.shape[1]}x{rgb.shape[0]}, the crop plan is for {plan.src_w}x{plan.src_h}')
    win = rgb[plan.y0:plan.y0 + plan.crop_h, plan.x0:plan.x0 + plan.crop_w]
    if (plan.crop_h, plan.crop_w) != (plan.model_h, plan.model_w):
        win = cv2.resize(win, (plan.model_w, plan.model_h),
                         interpolation=resize_interpolation(plan.crop_h, plan.crop_w, plan.model_h, plan.model_w))
    if out is None:
        out = np.empty((3, plan.model_h, plan.model_w), np.float32)
    np.multiply(np.moveaxis(win, 2, 0), np.float32(1.0 / 255.0), out=out, casting='unsafe')
    return out


def to_model_batch(rgbs: list[np.ndarray], plans: list[CropPlan]) -> np.ndarray:
    """float32 [N,3,model_h,model_w] from N uint8 RGB images and their plans (same model size)."""
    if len(rgbs) != len(plans) or not rgbs:
        raise ValueError(f'need one plan per image and at least one image (got {len(rgbs)} images, {len(plans)} plans)')
    out = np.empty((len(rgbs), 3, plans[0].model_h, plans[0].model_w), np.float32)
    for i, (im, p) in enumerate(zip(rgbs, plans)):
        if (p.model_h, p.model_w) != out.shape[2:]:
            raise ValueError(f'plans disagree on the model size: {p.model_h}x{p.model_w} vs {out.shape[2:]}')
        to_model_input(im, p, out[i])
    return out
