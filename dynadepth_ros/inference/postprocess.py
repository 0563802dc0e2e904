"""Model output → REP 118 depth (metres, NaN invalid) at the output geometry; camera intrinsics rescaling.

Order of operations on one image:
  1. `clean_depth`: non-finite or non-positive model output → NaN (invalid); the rest is clamped to the
     model's [min_depth, max_depth] (metadata), the range the network was trained to represent.
  2. Focal-length compensation (`focal_scale`, metric models only): a metric network trained with focal
     f_train (metadata intrinsics at the model input) that sees a camera whose focal at the model input is
     f_cam predicts depth f_train/f_cam too small/large; depth is multiplied by f_cam / f_train (geometric
     mean of the x and y ratios, since a resize may scale the two axes slightly differently). A camera focal
     outside FOCAL_RATIO_RANGE (0.1x..10x) of the training focal is refused (CameraInfoError) as implausible.
  3. `to_output_geometry`: the (cropped) model window is resized onto the output image (the source image
     geometry scaled to output_size), interpolating inverse depth (as monodepth2 does for disparity);
     pixels outside the crop window are NaN.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from dynadepth_ros.camera import scale_intrinsics
from dynadepth_ros.inference.preprocess import CropPlan, resize_interpolation


class CameraInfoError(ValueError):
    """camera_info that cannot describe the image; the message says why and what to check."""


def clean_depth(raw: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """float32 copy of raw depth [...] with non-finite/non-positive → NaN and the rest clipped to [min, max]."""
    out = np.array(raw, dtype=np.float32, copy=True)
    bad = ~np.isfinite(out) | (out <= 0)
    np.clip(out, min_depth, max_depth, out=out)
    out[bad] = np.nan
    return out


# A camera focal length (at the model input) outside this multiple of the model's training focal is refused:
# fx = 1e300 gives all-inf depth, 1e6 absurd ranges, 1e-300 all NaN; a real lens swap stays well inside.
FOCAL_RATIO_RANGE = (0.1, 10.0)


def focal_ratios(K_model: np.ndarray, train_intrinsics, model_h: int, model_w: int) -> tuple[float, float]:
    """(fx_cam / fx_train, fy_cam / fy_train) at the model input.

    K_model: float64 [3,3] camera intrinsics at the model input (CropPlan.model_intrinsics);
    train_intrinsics: normalised (fx/W, fy/H, cx/W, cy/H) from the model metadata.
    CameraInfoError naming fx or fy when a focal is not finite and positive or outside FOCAL_RATIO_RANGE.
    """
    lo, hi = FOCAL_RATIO_RANGE
    ratios = []
    for name, f, f_train in (('fx', float(K_model[0, 0]), float(train_intrinsics[0]) * model_w),
                             ('fy', float(K_model[1, 1]), float(train_intrinsics[1]) * model_h)):
        if not np.isfinite(f) or f <= 0:
            raise CameraInfoError(f'camera_info has {name}={f:g} at the model input; is the camera calibrated?')
        ratio = f / f_train
        if not lo <= ratio <= hi:
            raise CameraInfoError(
                f'camera_info {name} is {ratio:.3g}x the focal length the model was trained with ({name}={f:g} px '
                f'vs {f_train:g} px at the model input); focal lengths outside {lo:g}x..{hi:g}x of the model\'s are '
                f'implausible (wrong units, another camera\'s calibration, or an uncalibrated driver?)')
        ratios.append(ratio)
    return ratios[0], ratios[1]


def focal_scale(K_model: np.ndarray, train_intrinsics, model_h: int, model_w: int) -> float:
    """f_cam / f_train at the model input: sqrt((fx_cam/fx_train) * (fy_cam/fy_train)).

    K_model: float64 [3,3] camera intrinsics at the model input (CropPlan.model_intrinsics);
    train_intrinsics: normalised (fx/W, fy/H, cx/W, cy/H) from the model metadata.
    CameraInfoError for a focal that is not positive and finite or implausible (see focal_ratios).
    """
    rx, ry = focal_ratios(K_model, train_intrinsics, model_h, model_w)
    return float(np.sqrt(rx * ry))


def to_output_geometry(depth_model: np.ndarray, plan: CropPlan, out_h: int, out_w: int) -> np.ndarray:
    """float32 [out_h, out_w] metres from depth_model float32 [model_h, model_w] (NaN = invalid).

    The crop window of `plan`, scaled to the output size, receives the resized depth; the rest is NaN.
    """
    x0, y0, x1, y1 = plan.output_window(out_h, out_w)
    out = np.full((out_h, out_w), np.nan, np.float32)
    win_h, win_w = y1 - y0, x1 - x0
    if (win_h, win_w) == depth_model.shape:
        out[y0:y1, x0:x1] = depth_model
        return out
    with np.errstate(divide='ignore', invalid='ignore'):
        disp = np.float32(1.0) / depth_model        # NaN stays NaN
    interp = resize_interpolation(depth_model.shape[0], depth_model.shape[1], win_h, win_w)
    disp = cv2.resize(disp, (win_w, win_h), interpolation=interp)
    with np.errstate(divide='ignore', invalid='ignore'):
        out[y0:y1, x0:x1] = np.float32(1.0) / disp
    return out


@dataclass(frozen=True)
class CameraCalibration:
    """The geometric content of a sensor_msgs/CameraInfo, as numpy (no rclpy).

    width/height: calibrated resolution; K float64 [3,3]; P float64 [3,4]; R float64 [3,3]; D distortion
    coefficients; binning 0 or 1 = none; roi (x_offset, y_offset, width, height, do_rectify), zeros = full image.
    """

    width: int
    height: int
    K: np.ndarray
    P: np.ndarray
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    D: tuple = ()
    distortion_model: str = 'plumb_bob'
    binning_x: int = 0
    binning_y: int = 0
    roi: tuple = (0, 0, 0, 0, False)

    def image_size(self) -> tuple[int, int]:
        """(h, w) of the images this calibration describes, after ROI and binning."""
        bx, by = max(self.binning_x, 1), max(self.binning_y, 1)
        rw, rh = (self.roi[2], self.roi[3]) if self.roi[2] > 0 and self.roi[3] > 0 else (self.width, self.height)
        return rh // by, rw // bx


_K_NAMES = {(0, 0): 'fx', (0, 1): 'skew', (0, 2): 'cx', (1, 1): 'fy', (1, 2): 'cy'}


def _check_fields(calib: CameraCalibration, K: np.ndarray, P: np.ndarray) -> None:
    """CameraInfoError naming the first field of calib that cannot describe any image."""
    for (r, c), v in np.ndenumerate(K):
        if not np.isfinite(v):
            name = _K_NAMES.get((r, c), f'K[{r},{c}]')
            raise CameraInfoError(f'camera_info has {name}={v:g} (k[{3 * r + c}]); is the camera calibrated?')
    for name, v in (('fx', K[0, 0]), ('fy', K[1, 1])):
        if v <= 0:
            raise CameraInfoError(f'camera_info has {name}={v:g}; is the camera calibrated?')
    for (r, c), v in np.ndenumerate(P):
        if not np.isfinite(v):
            raise CameraInfoError(f'camera_info has P[{r},{c}]={v:g} (p[{4 * r + c}]); fix the projection matrix '
                                  f'or publish all zeros to use K')
    x, y, rw, rh = calib.roi[:4]
    if rw > 0 and rh > 0 and calib.width > 0 and calib.height > 0 and (x + rw > calib.width or
                                                                          y + rh > calib.height):
        raise CameraInfoError(f'camera_info roi (x_offset={x}, y_offset={y}, width={rw}, height={rh}) lies outside '
                              f'the calibrated {calib.width}x{calib.height} image')
    if rw <= 0 or rh <= 0:
        rw, rh = calib.width, calib.height
    for name, b, side in (('binning_x', calib.binning_x, rw), ('binning_y', calib.binning_y, rh)):
        if b > 1 and side > 0 and b > side:
            raise CameraInfoError(f'camera_info has {name}={b}, more than the {side} px it bins; '
                                  f'is {name} set (0 or 1 = no binning)?')


def image_calibration(calib: CameraCalibration, image_h: int, image_w: int,
                      resize_aspect_tolerance: float = 0.01) -> tuple[CameraCalibration, str | None]:
    """(calibration of the image as received — ROI and binning applied, P filled from K when all zero —, note).

    When the image size differs from what camera_info describes but the aspect ratio agrees (within
    `resize_aspect_tolerance`), the image is taken as a plain resize and K/P are scaled, and `note` says so;
    otherwise CameraInfoError. Also CameraInfoError naming the field for fx/fy <= 0, a non-finite K or P entry,
    an ROI outside the calibrated image or a binning larger than the image it bins.
    """
    K = np.asarray(calib.K, np.float64).reshape(3, 3)
    P = np.asarray(calib.P, np.float64).reshape(3, 4)
    _check_fields(calib, K, P)
    note = None
    if not np.any(P):
        P = np.hstack([K, np.zeros((3, 1))])
        note = 'camera_info P is all zero; using P = [K | 0]'
    K, P = K.copy(), P.copy()
    if calib.roi[2] > 0 and calib.roi[3] > 0:
        K[0, 2] -= calib.roi[0]
        K[1, 2] -= calib.roi[1]
        P[0, 2] -= calib.roi[0]
        P[1, 2] -= calib.roi[1]
    bx, by = max(calib.binning_x, 1), max(calib.binning_y, 1)
    K, P = scale_intrinsics(K, 1.0 / bx, 1.0 / by), scale_intrinsics(P, 1.0 / bx, 1.0 / by)
    exp_h, exp_w = calib.image_size()
    if (exp_h, exp_w) != (image_h, image_w):
        if exp_h <= 0 or exp_w <= 0:
            raise CameraInfoError(f'camera_info has size {calib.width}x{calib.height}; fill width/height '
                                  f'(the image is {image_w}x{image_h})')
        if abs((image_w / image_h) / (exp_w / exp_h) - 1.0) > resize_aspect_tolerance:
            raise CameraInfoError(
                f'camera_info describes {exp_w}x{exp_h} images but the image is {image_w}x{image_h} (other aspect '
                f'ratio); publish the camera_info that matches the image (e.g. image_proc resize/crop)')
        sx, sy = image_w / exp_w, image_h / exp_h
        K, P = scale_intrinsics(K, sx, sy), scale_intrinsics(P, sx, sy)
        msg = f'camera_info describes {exp_w}x{exp_h} images but the image is {image_w}x{image_h}; ' \
              f'assuming a plain resize and scaling K, P'
        note = msg if note is None else note + '; ' + msg
    out = replace(calib, width=image_w, height=image_h, K=K, P=P, binning_x=0, binning_y=0, roi=(0, 0, 0, 0, False))
    return out, note


def rescale_calibration(calib: CameraCalibration, out_h: int, out_w: int) -> CameraCalibration:
    """The calibration of an image-sized calibration (see image_calibration) resized to out_h x out_w.

    K and P rows 0/1 scale by out_w/width and out_h/height (P's Tx = -fx*B scales with fx); D and R are
    unchanged (D acts on normalised coordinates); binning 0 and ROI zero (the output is a full image).
    """
    sx, sy = out_w / calib.width, out_h / calib.height
    return replace(calib, width=out_w, height=out_h, K=scale_intrinsics(calib.K, sx, sy),
                   P=scale_intrinsics(calib.P, sx, sy), binning_x=0, binning_y=0, roi=(0, 0, 0, 0, False))
