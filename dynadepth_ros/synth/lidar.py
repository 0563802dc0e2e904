"""A 64-beam spinning lidar sampled from the same scene as the camera.

Beam pattern modelled on the HDL-64E used by KITTI: 32 upper beams from +2.0 to -8.33 deg every
1/3 deg, 32 lower beams from -8.83 to -24.33 deg every 1/2 deg; 900 azimuth steps (0.4 deg). Each
scan is taken instantaneously at the frame time (no motion skew) and ranges are exact (no noise),
so projected points land on the ground-truth depth.
"""
from __future__ import annotations

import numpy as np

from .render import LidarRays, Scene

MAX_RANGE = 120.0     # metres; farther hits give no return
N_AZIMUTH = 900


def hdl64_elevations() -> np.ndarray:
    """float64 [64] beam elevations in rad, descending."""
    upper = 2.0 - np.arange(32) / 3.0
    lower = -8.83 - 0.5 * np.arange(32)
    return np.deg2rad(np.concatenate([upper, lower]))


def lidar_rays(T_world_lidar: np.ndarray, n_azimuth: int = N_AZIMUTH) -> LidarRays:
    return LidarRays(hdl64_elevations(), n_azimuth, T_world_lidar)


def scan(scene: Scene, T_world_lidar: np.ndarray, reflectivity: np.ndarray,
         n_azimuth: int = N_AZIMUTH) -> np.ndarray:
    """Points float32 [N,4] (x, y, z in the lidar frame, metres; intensity in [0,1]).

    reflectivity: float32 [n_materials] diffuse albedo per material (intensity = albedo x |cos|).
    Points are ordered beam by beam (top beam first), azimuth increasing, misses dropped.
    """
    rays = lidar_rays(T_world_lidar, n_azimuth)
    g = scene.cast(rays, surface=False)
    hit = (g.prim >= 0) & (g.t < MAX_RANGE)
    r = g.t[hit]
    xl, yl, zl = (a[hit] for a in rays.local)
    inten = reflectivity[scene.material[g.prim[hit]]] * g.cos[hit]
    return np.stack([xl * r, yl * r, zl * r, np.clip(inten, 0, 1)], axis=1).astype(np.float32)
