"""Model output → REP 118 depth (metres, NaN invalid) at the output geometry; camera intrinsics rescaling.

Order of operations on one image:
  1. `clean_depth`: non-finite or non-positive model output → NaN (invalid); the rest is clamped to the
     model's [min_depth, max_depth] (metadata), the range the network was trained to represent.
  2. Focal-length compensation (`focal_scale`, metric models only): a metric network trained with focal
     f_train (metadata intrinsics at the model input) that sees a camera whose focal at the model input is
     f_cam predicts depth f_train/f_cam too small/large; depth is multiplied by f_cam / f_train (geometric
     mean of the x and y ratios, since a resize may scale the two axes slightly differently).
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


def focal_scale(K_model: np.ndarray, train_intrinsics, model_h: int, model_w: int) -> float:
    """f_cam / f_train at the model input: sqrt((fx_cam/fx_train) * (fy_cam/fy_train)).

    K_model: float64 [3,3] camera intrinsics at the model input (CropPlan.model_intrinsics);
    train_intrinsics: normalised (fx/W, fy/H, cx/W, cy/H) from the model metadata.
    """
    fx, fy = float(K_model[0, 0]), float(K_model[1, 1])
    if not (np.isfinite(fx) and np.isfinite(fy)) or fx <= 0 or fy <= 0:
        raise CameraInfoError(f'camera_info has fx={fx:g}, fy={fy:g} at the model input; is the camera calibrated?')
    fx_t, fy_t = float(train_intrinsics[0]) * model_w, float(train_intrinsics[1]) * model_h
    return float(np.sqrt((fx / fx_t) * (fy / fy_t)))


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


def image_calibration(calib: CameraCalibration, image_h: int, image_w: int,
                      resize_aspect_tolerance: float = 0.01) -> tuple[CameraCalibration, str | None]:
    """(calibration of the image as received — ROI and binning applied, P filled from K when all zero —, note).

    When the image size differs from what camera_info describes but the aspect ratio agrees (within
    `resize_aspect_tolerance`), the image is taken as a plain resize and K/P are scaled, and `note` says so;
    otherwise CameraInfoError. Also CameraInfoError for fx/fy <= 0 or non-finite K.
    """
    K = np.asarray(calib.K, np.float64).reshape(3, 3)
    P = np.asarray(calib.P, np.float64).reshape(3, 4)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CameraInfoError(f'camera_info has fx={K[0, 0]:g}, fy={K[1, 1]:g}; is the camera calibrated?')
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
