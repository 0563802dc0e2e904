"""rosbag2 writer for one synthetic sequence (rosbags, no ROS installation needed).

Topics (design section 6): /camera/image_raw (rgb8), /camera/camera_info, /camera/instance_mask
(16UC1), /camera/depth_gt (32FC1 metres, NaN invalid), /odom (nav_msgs/Odometry, odom -> base_link),
/lidar/points (PointCloud2 x,y,z,intensity float32, frame `lidar`), /tf_static (base_link ->
camera_optical, base_link -> lidar; transient-local QoS so players latch it).
Header stamps are START_NS + i * 100 ms; each message's bag timestamp equals its header stamp.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from ..atomic_files import CloseOrAbort
from .rig import quaternion_xyzw

START_NS = 1_700_000_000 * 10**9          # fixed start time of every synthetic bag
CAMERA_FRAME = 'camera_optical'
LIDAR_FRAME = 'lidar'
BASE_FRAME = 'base_link'
ODOM_FRAME = 'odom'
TOPICS = {
    'image': '/camera/image_raw',
    'camera_info': '/camera/camera_info',
    'instance_mask': '/camera/instance_mask',
    'depth_gt': '/camera/depth_gt',
    'odom': '/odom',
    'points': '/lidar/points',
    'tf_static': '/tf_static',
}
STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}

_TS = get_typestore(Stores.ROS2_KILTED)
_T = _TS.types
_ZERO = QosTime(0, 0)


def _qos(durability: QosDurability, reliability: QosReliability = QosReliability.RELIABLE, depth: int = 10) -> Qos:
    return Qos(QosHistory.KEEP_LAST, depth, reliability, durability, _ZERO, _ZERO, QosLiveliness.AUTOMATIC,
               _ZERO, False)


def stamp_ns(index: int, fps: float = 10.0) -> int:
    """Header / bag timestamp of frame `index`, integer nanoseconds."""
    return START_NS + int(round(index * 1e9 / fps))


def _header(t_ns: int, frame: str):
    return _T['std_msgs/msg/Header'](stamp=_T['builtin_interfaces/msg/Time'](sec=t_ns // 10**9, nanosec=t_ns % 10**9),
                                     frame_id=frame)


def _transform_stamped(t_ns: int, parent: str, child: str, T: np.ndarray):
    qx, qy, qz, qw = quaternion_xyzw(T[:3, :3])
    tr = _T['geometry_msgs/msg/Transform'](
        translation=_T['geometry_msgs/msg/Vector3'](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
        rotation=_T['geometry_msgs/msg/Quaternion'](x=qx, y=qy, z=qz, w=qw))
    return _T['geometry_msgs/msg/TransformStamped'](header=_header(t_ns, parent), child_frame_id=child, transform=tr)


def _image(t_ns: int, arr: np.ndarray, encoding: str):
    h, w = arr.shape[:2]
    data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return _T['sensor_msgs/msg/Image'](header=_header(t_ns, CAMERA_FRAME), height=h, width=w, encoding=encoding,
                                       is_bigendian=0, step=len(data) // h, data=data)


def camera_info_msg(t_ns: int, K: np.ndarray, height: int, width: int):
    K = np.asarray(K, np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = _T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return _T['sensor_msgs/msg/CameraInfo'](
        header=_header(t_ns, CAMERA_FRAME), height=int(height), width=int(width), distortion_model='plumb_bob',
        d=np.zeros(5), k=K.reshape(-1).copy(), r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0,
        roi=roi)


def odometry_msg(t_ns: int, T_odom_base: np.ndarray, linear_body: np.ndarray, angular_body: np.ndarray):
    """nav_msgs/Odometry: pose of base_link in odom, twist in base_link (m/s, rad/s)."""
    qx, qy, qz, qw = quaternion_xyzw(T_odom_base[:3, :3])
    V3 = _T['geometry_msgs/msg/Vector3']
    pose = _T['geometry_msgs/msg/Pose'](
        position=_T['geometry_msgs/msg/Point'](x=float(T_odom_base[0, 3]), y=float(T_odom_base[1, 3]),
                                               z=float(T_odom_base[2, 3])),
        orientation=_T['geometry_msgs/msg/Quaternion'](x=qx, y=qy, z=qz, w=qw))
    cov = np.diag([1e-4] * 6).reshape(-1)                     # ground truth: tiny, non-zero covariance
    twist = _T['geometry_msgs/msg/Twist'](linear=V3(x=float(linear_body[0]), y=float(linear_body[1]),
                                                    z=float(linear_body[2])),
                                          angular=V3(x=float(angular_body[0]), y=float(angular_body[1]),
                                                     z=float(angular_body[2])))
    return _T['nav_msgs/msg/Odometry'](
        header=_header(t_ns, ODOM_FRAME), child_frame_id=BASE_FRAME,
        pose=_T['geometry_msgs/msg/PoseWithCovariance'](pose=pose, covariance=cov.copy()),
        twist=_T['geometry_msgs/msg/TwistWithCovariance'](twist=twist, covariance=cov.copy()))


def pointcloud_msg(t_ns: int, points: np.ndarray):
    """PointCloud2 from float32 [N,4] (x, y, z, intensity) in the lidar frame."""
    pts = np.ascontiguousarray(points, dtype=np.float32)
    PF = _T['sensor_msgs/msg/PointField']
    fields = [PF(name=name, offset=4 * k, datatype=PF.FLOAT32, count=1)
              for k, name in enumerate(('x', 'y', 'z', 'intensity'))]
    n = len(pts)
    return _T['sensor_msgs/msg/PointCloud2'](header=_header(t_ns, LIDAR_FRAME), height=1, width=n, fields=fields,
                                             is_bigendian=False, point_step=16, row_step=16 * n,
                                             data=pts.reshape(-1).view(np.uint8), is_dense=True)


class SequenceBagWriter(CloseOrAbort):
    """Writes one sequence's rosbag2 directory at `path` (which must not exist yet).

    Use as a context manager or call close(); on an exception the partial bag is aborted."""

    def __init__(self, path: str | os.PathLike, storage: str, K: np.ndarray, height: int, width: int,
                 T_base_camera: np.ndarray, T_base_lidar: np.ndarray, fps: float = 10.0):
        if storage not in STORAGES:
            raise ValueError(f'unknown bag storage {storage!r}; use one of {sorted(STORAGES)}')
        self.path = Path(path)
        self.K, self.height, self.width, self.fps = np.asarray(K, float), int(height), int(width), float(fps)
        self._w = Writer(self.path, version=9, storage_plugin=STORAGES[storage])
        self._w.open()
        volatile = _qos(QosDurability.VOLATILE)
        types = {
            'image': 'sensor_msgs/msg/Image', 'camera_info': 'sensor_msgs/msg/CameraInfo',
            'instance_mask': 'sensor_msgs/msg/Image', 'depth_gt': 'sensor_msgs/msg/Image',
            'odom': 'nav_msgs/msg/Odometry', 'points': 'sensor_msgs/msg/PointCloud2',
            'tf_static': 'tf2_msgs/msg/TFMessage',
        }
        self._conn = {}
        for key, msgtype in types.items():
            qos = _qos(QosDurability.TRANSIENT_LOCAL, depth=1) if key == 'tf_static' else volatile
            self._conn[key] = self._w.add_connection(TOPICS[key], msgtype, typestore=_TS, offered_qos_profiles=[qos])
        t0 = stamp_ns(0, fps)
        tf = _T['tf2_msgs/msg/TFMessage'](transforms=[
            _transform_stamped(t0, BASE_FRAME, CAMERA_FRAME, T_base_camera),
            _transform_stamped(t0, BASE_FRAME, LIDAR_FRAME, T_base_lidar)])
        self._write('tf_static', t0, tf)
        self.counts = {k: 0 for k in types}
        self.counts['tf_static'] = 1

    def _write(self, key: str, t_ns: int, msg) -> None:
        self._w.write(self._conn[key], t_ns, _TS.serialize_cdr(msg, msg.__msgtype__))

    def write_frame(self, index: int, rgb: np.ndarray, depth: np.ndarray, mask: np.ndarray,
                    T_odom_base: np.ndarray, linear_body: np.ndarray, angular_body: np.ndarray,
                    points: np.ndarray | None) -> None:
        """rgb uint8 [H,W,3]; depth float32 [H,W] metres (0 = invalid, written as NaN); mask uint16 [H,W];
        pose float64 [4,4]; twist in base_link; points float32 [N,4] in the lidar frame (or None)."""
        t = stamp_ns(index, self.fps)
        self._write('image', t, _image(t, rgb, 'rgb8'))
        self._write('camera_info', t, camera_info_msg(t, self.K, self.height, self.width))
        self._write('instance_mask', t, _image(t, mask.astype(np.uint16), '16UC1'))
        d = np.where(depth > 0, depth, np.float32(np.nan)).astype(np.float32)
        self._write('depth_gt', t, _image(t, d, '32FC1'))
        self._write('odom', t, odometry_msg(t, T_odom_base, linear_body, angular_body))
        for key in ('image', 'camera_info', 'instance_mask', 'depth_gt', 'odom'):
            self.counts[key] += 1
        if points is not None:
            self._write('points', t, pointcloud_msg(t, points))
            self.counts['points'] += 1

    def close(self) -> None:
        self._w.close()

    def abort(self) -> None:
        self._w.abort()
