"""Rigid poses at arbitrary times from a time series of poses (odometry → camera frame stamps).

Translation is interpolated linearly, rotation by quaternion slerp. Times outside the series
(beyond `tolerance_s`) get no pose.
"""
from __future__ import annotations

import numpy as np


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) with w >= 0 of a rotation matrix [3,3] (Shepperd's method)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """Rotation matrix [3,3] of a quaternion (x, y, z, w) (normalised here)."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions (x,y,z,w) at fraction a in [0,1] (shortest arc)."""
    q0, q1 = np.asarray(q0, float), np.asarray(q1, float)
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly identical: linear is exact enough and avoids dividing by sin(~0)
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - a) * theta) * q0 + np.sin(a * theta) * q1) / np.sin(theta)


def interpolate_poses(times: np.ndarray, poses: np.ndarray, query: np.ndarray,
                      tolerance_s: float = 0.0) -> list[np.ndarray | None]:
    """Pose [4,4] at each query time, or None outside [times[0]-tol, times[-1]+tol].

    times: float64 [N] seconds (any order; sorted here); poses: float64 [N,4,4]. Queries within
    the tolerance outside the series take the nearest end pose.
    """
    times = np.asarray(times, dtype=np.float64)
    poses = np.asarray(poses, dtype=np.float64)
    if times.size == 0:
        return [None] * len(query)
    order = np.argsort(times, kind='stable')
    times, poses = times[order], poses[order]
    quats = np.array([rotation_to_quaternion(P[:3, :3]) for P in poses])
    out: list[np.ndarray | None] = []
    for t in np.asarray(query, dtype=np.float64):
        if t < times[0] - tolerance_s or t > times[-1] + tolerance_s:
            out.append(None)
            continue
        if t <= times[0]:
            out.append(poses[0].copy())
            continue
        if t >= times[-1]:
            out.append(poses[-1].copy())
            continue
        k = int(np.searchsorted(times, t, side='right'))  # times[k-1] <= t < times[k]
        t0, t1 = times[k - 1], times[k]
        a = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
        T = np.eye(4)
        T[:3, :3] = quaternion_to_rotation(slerp(quats[k - 1], quats[k], a))
        T[:3, 3] = (1 - a) * poses[k - 1][:3, 3] + a * poses[k][:3, 3]
        out.append(T)
    return out
