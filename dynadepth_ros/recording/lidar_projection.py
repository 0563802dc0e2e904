"""Lidar PointCloud2 → sparse z-depth image in a camera (ground truth for evaluation).

Points are moved into the camera optical frame with the static extrinsics from /tf_static,
projected with the camera_info K, and rounded to the nearest pixel centre (integer pixel
coordinates are centres, as in dynadepth_ros.camera); where several points land on one pixel the
nearest (smallest z) wins. Pixels without a point are NaN. Motion during the sweep is ignored.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from dynadepth_ros.camera import project, transform_points

# sensor_msgs/PointField datatypes → numpy
_POINTFIELD_DTYPES = {1: np.int8, 2: np.uint8, 3: np.int16, 4: np.uint16, 5: np.int32, 6: np.uint32,
                      7: np.float32, 8: np.float64}


class LidarProjectionError(ValueError):
    """A point cloud or transform that cannot be projected; the message says why."""


def pointcloud_xyz(msg) -> np.ndarray:
    """float64 [N,3] finite x, y, z of a sensor_msgs/PointCloud2 (any point layout, padded rows)."""
    fields = {f.name: f for f in msg.fields}
    missing = [n for n in ('x', 'y', 'z') if n not in fields]
    if missing:
        raise LidarProjectionError(f'PointCloud2 has no field {missing}; fields are {sorted(fields)}')
    h, w = int(msg.height), int(msg.width)
    step, row_step = int(msg.point_step), int(msg.row_step)
    data = msg.data
    buf = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else np.frombuffer(bytes(data), np.uint8)
    if h * w == 0:
        return np.zeros((0, 3))
    if row_step < w * step or buf.size < row_step * (h - 1) + w * step:
        raise LidarProjectionError(f'PointCloud2 {w}x{h} with point_step {step}, row_step {row_step} needs '
                                   f'{row_step * h} bytes, message has {buf.size}')
    rows = np.lib.stride_tricks.as_strided(buf, shape=(h, w * step), strides=(row_step, 1))
    pts = np.ascontiguousarray(rows).reshape(h * w, step)
    cols = []
    for name in ('x', 'y', 'z'):
        f = fields[name]
        if f.datatype not in _POINTFIELD_DTYPES:
            raise LidarProjectionError(f'PointCloud2 field {name} has unknown datatype {f.datatype}')
        dt = np.dtype(_POINTFIELD_DTYPES[f.datatype]).newbyteorder('>' if msg.is_bigendian else '<')
        if f.offset + dt.itemsize > step:
            raise LidarProjectionError(f'PointCloud2 field {name} at offset {f.offset} lies outside point_step {step}')
        cols.append(pts[:, f.offset:f.offset + dt.itemsize].copy().view(dt)[:, 0].astype(np.float64))
    xyz = np.stack(cols, axis=1)
    return xyz[np.all(np.isfinite(xyz), axis=1)]


def find_transform(transforms: dict[tuple[str, str], np.ndarray], target: str, source: str) -> np.ndarray:
    """float64 [4,4] T_target_source through a chain of static transforms {(parent, child): T_parent_child}.

    Raises LidarProjectionError naming the known frames when target and source are not connected.
    """
    target, source = target.lstrip('/'), source.lstrip('/')
    if target == source:
        return np.eye(4)
    edges: dict[str, list[tuple[str, np.ndarray]]] = {}
    for (parent, child), T in transforms.items():
        edges.setdefault(parent, []).append((child, np.linalg.inv(T)))  # parent → child: T_child_parent
        edges.setdefault(child, []).append((parent, T))                 # child → parent: T_parent_child
    # breadth-first search from source; T_frame_source accumulates along the path
    seen = {source: np.eye(4)}
    queue = deque([source])
    while queue:
        frame = queue.popleft()
        for nxt, T_next_frame in edges.get(frame, []):
            if nxt in seen:
                continue
            seen[nxt] = T_next_frame @ seen[frame]
            if nxt == target:
                return seen[nxt]
            queue.append(nxt)
    frames = sorted({f for pair in transforms for f in pair})
    raise LidarProjectionError(f'no static transform chain from {source!r} to {target!r} in /tf_static; '
                               f'known frames: {frames or "none (the bag has no /tf_static)"}')


def project_points_to_depth(points_cam: np.ndarray, K: np.ndarray, height: int, width: int,
                            min_depth: float = 1e-3) -> np.ndarray:
    """float32 [H,W] z-depth (metres, NaN = no point) from camera-frame points [N,3]; nearest wins."""
    depth = np.full((height, width), np.nan, dtype=np.float32)
    pts = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    pts = pts[pts[:, 2] > min_depth]
    if pts.size == 0:
        return depth
    uv, z = project(pts, K)
    col = np.floor(uv[:, 0] + 0.5)
    row = np.floor(uv[:, 1] + 0.5)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    col, row, z = col[inside].astype(np.int64), row[inside].astype(np.int64), z[inside]
    flat = row * width + col
    order = np.lexsort((z, flat))                 # by pixel, then nearest first
    flat, z = flat[order], z[order]
    first = np.ones(flat.size, dtype=bool)
    first[1:] = flat[1:] != flat[:-1]
    depth.reshape(-1)[flat[first]] = z[first].astype(np.float32)
    return depth


def lidar_depth_image(cloud_msg, T_cam_lidar: np.ndarray, K: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [H,W] sparse z-depth (metres, NaN invalid) of a PointCloud2 seen from the camera."""
    return project_points_to_depth(transform_points(T_cam_lidar, pointcloud_xyz(cloud_msg)), K, height, width)
