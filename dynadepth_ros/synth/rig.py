"""The ego vehicle's sensor rig: frames, extrinsics and intrinsics.

base_link: on the ground under the middle of the ego car, x forward, y left, z up (REP 103).
camera_optical: REP 103 optical frame (x right, y down, z forward), 1.5 m above the ground, tilted
down by CAMERA_PITCH. lidar: x forward, y left, z up, mounted above (and behind) the camera.
"""
from __future__ import annotations

import numpy as np

from ..camera import intrinsics_matrix

CAMERA_XYZ = (0.9, 0.0, 1.5)        # camera_optical origin in base_link, metres
CAMERA_PITCH = np.deg2rad(1.5)      # downward tilt of the optical axis, rad
LIDAR_XYZ = (0.2, 0.0, 1.75)        # lidar origin in base_link, metres (25 cm above the camera)
EGO_SIZE = (4.6, 1.85, 1.5)         # length, width, height of the ego car, metres

# Columns are the optical axes (x right, y down, z forward) expressed in base_link (x fwd, y left, z up).
R_BASE_OPTICAL = np.array([[0.0, 0.0, 1.0],
                           [-1.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0]])


def synth_intrinsics(height: int, width: int, focal_scale: float = 1.0) -> np.ndarray:
    """float64 [3,3] K: square pixels, fx = fy = 0.58 W x focal_scale (at 1: KITTI-like ~82 deg
    horizontal field of view; at 192x640 fy = 1.93 H), principal point at the image centre."""
    if not 0.5 <= focal_scale <= 2.0:
        raise ValueError(f'focal_scale must be in [0.5, 2], got {focal_scale}')
    f = 0.58 * width * focal_scale
    return intrinsics_matrix(f, f, width / 2.0, height / 2.0)


def T_base_camera(height: float = CAMERA_XYZ[2], pitch: float = CAMERA_PITCH) -> np.ndarray:
    """float64 [4,4] camera_optical -> base_link: the camera `height` m above the ground, its optical
    axis tilted down by `pitch` rad (negative: up)."""
    if not 0.5 <= height <= 4.0:
        raise ValueError(f'camera height must be in [0.5, 4] m, got {height}')
    if abs(pitch) > np.deg2rad(20):
        raise ValueError(f'camera pitch must be within +-20 deg, got {np.rad2deg(pitch):.1f} deg')
    c, s = np.cos(pitch), np.sin(pitch)
    pitch_down = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])   # rotation about base y (nose down)
    T = np.eye(4)
    T[:3, :3] = pitch_down @ R_BASE_OPTICAL
    T[:3, 3] = (CAMERA_XYZ[0], CAMERA_XYZ[1], height)
    return T


def T_base_lidar(height: float = LIDAR_XYZ[2]) -> np.ndarray:
    """float64 [4,4] lidar -> base_link (level, no rotation), `height` m above the ground."""
    T = np.eye(4)
    T[:3, 3] = (LIDAR_XYZ[0], LIDAR_XYZ[1], height)
    return T


def pose_matrix(x: float, y: float, z: float, yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """float64 [4,4] from position and ZYX Euler angles (yaw about z, then pitch about y, roll about x)."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    T = np.eye(4)
    T[:3, :3] = np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                          [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                          [-sp, cp * sr, cp * cr]])
    T[:3, 3] = (x, y, z)
    return T


def quaternion_xyzw(R: np.ndarray) -> tuple[float, float, float, float]:
    """Unit quaternion (x, y, z, w) of a rotation matrix, w >= 0."""
    R = np.asarray(R, float)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        w, x, y, z = 0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        w, x, y, z = (R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        w, x, y, z = (R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        w, x, y, z = (R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return tuple(float(v) for v in q)
