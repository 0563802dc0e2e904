"""The node's geometric outputs as plain numpy (no rclpy, no torch).

* `camera_matrix`: the pinhole intrinsics of an image from its calibration — from P, as image_geometry's
  PinholeCameraModel reads them (fx=P[0], cx=P[2], fy=P[5], cy=P[6]; right for rectified images, which is
  what depth_image_proc assumes), or from K (the raw camera).
* `model_calibration`: the calibration published on depth/camera_info when no camera_info was received,
  from the intrinsics the depth was computed with (the model's training intrinsics mapped to the output).
"""
from __future__ import annotations

import numpy as np

from dynadepth_ros.camera import intrinsics_matrix
from dynadepth_ros.inference.postprocess import CameraCalibration

INTRINSICS_SOURCES = ('P', 'K')


def camera_matrix(calib: CameraCalibration, source: str = 'P') -> np.ndarray:
    """float64 [3,3] intrinsics of the image `calib` describes: from P (source 'P', unless P's left 3x3 block is
    all zero: then K) or from K (source 'K'). Skew and P's Tx are ignored, as image_geometry does."""
    if source not in INTRINSICS_SOURCES:
        raise ValueError(f'intrinsics source must be one of {INTRINSICS_SOURCES}, got {source!r}')
    P = np.asarray(calib.P, np.float64).reshape(3, 4)
    if source == 'P' and np.any(P[:, :3]):
        return intrinsics_matrix(P[0, 0], P[1, 1], P[0, 2], P[1, 2])
    K = np.asarray(calib.K, np.float64).reshape(3, 3)
    return intrinsics_matrix(K[0, 0], K[1, 1], K[0, 2], K[1, 2])


def model_calibration(K: np.ndarray, width: int, height: int) -> CameraCalibration:
    """Calibration of a width x height image with intrinsics K [3,3] and nothing else known: P = [K | 0],
    R = identity, no distortion (plumb_bob, five zeros), no binning or ROI."""
    K = np.asarray(K, np.float64).reshape(3, 3)
    return CameraCalibration(width=int(width), height=int(height), K=K.copy(), P=np.hstack([K, np.zeros((3, 1))]),
                             R=np.eye(3), D=(0.0,) * 5, distortion_model='plumb_bob')
