"""The node's geometric outputs as plain numpy (no rclpy, no torch).

* `camera_matrix`: the pinhole intrinsics of an image from its calibration — from P, as image_geometry's
  PinholeCameraModel reads them (fx=P[0], cx=P[2], fy=P[5], cy=P[6]; right for rectified images, which is
  what depth_image_proc assumes), or from K (the raw camera).
* `model_calibration`: the calibration published on depth/camera_info when no camera_info was received,
  from the intrinsics the depth was computed with (the model's training intrinsics mapped to the output).
* `organized_cloud` / `pack_rgb`: an organized XYZ(+RGB) cloud from a depth image, laid out as
  depth_image_proc's point_cloud_xyz / point_cloud_xyzrgb (float32 x, y, z in the optical frame, NaN for
  invalid depth, colour packed as float32 `rgb` = 0x00RRGGBB).
"""
from __future__ import annotations

import numpy as np

from dynadepth_ros.camera import backproject, intrinsics_matrix
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


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """float32 [H,W] whose bits are 0x00RRGGBB, from uint8 [H,W,3] RGB (the PCL / depth_image_proc `rgb` field)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'expected uint8 [H,W,3] RGB, got {rgb.dtype} {rgb.shape}')
    c = rgb.astype(np.uint32)
    return ((c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]).view(np.float32)


def cloud_dtype(with_rgb: bool) -> np.dtype:
    """The point layout: little-endian float32 x, y, z (, rgb), 12 or 16 bytes per point."""
    return np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4')] + ([('rgb', '<f4')] if with_rgb else []))


def organized_cloud(depth: np.ndarray, K: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
    """Structured array [H,W] of cloud_dtype(rgb is not None): X=(u-cx)Z/fx, Y=(v-cy)Z/fy, Z=depth (metres,
    camera optical frame); x, y, z all NaN where the depth is not finite and positive. rgb: uint8 [H,W,3] at the
    depth's size, or None."""
    depth = np.asarray(depth, np.float32)
    if rgb is not None and rgb.shape[:2] != depth.shape:
        raise ValueError(f'rgb {rgb.shape[:2]} and depth {depth.shape} differ in size')
    xyz = backproject(depth, np.asarray(K, np.float64))
    xyz[~(np.isfinite(depth) & (depth > 0))] = np.nan
    out = np.empty(depth.shape, cloud_dtype(rgb is not None))
    out['x'], out['y'], out['z'] = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    if rgb is not None:
        out['rgb'] = pack_rgb(rgb)
    return out
