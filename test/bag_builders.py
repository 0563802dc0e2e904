"""Small rosbag2 recordings with known content for the evaluation / replay / bag-reader tests.

The scene is built so the contract model's prediction (depth = offset + gain * red/255, see
contract_model.py) is known exactly: `scene_arrays(i)` gives the RGB image, the model's depth,
the GT depth and the instance mask of frame i; the GT differs from the prediction by a per-region
factor so metric and median-scaled numbers differ in a checkable way.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from contract_model import expected_depth

H, W = 64, 192
FPS = 10.0
T0_NS = 1_700_000_000 * 1_000_000_000
INTRINSICS = (0.58, 1.92, 0.5, 0.5)          # the contract model's default training intrinsics
CAM_FRAME = 'camera_optical'
LIDAR_FRAME = 'lidar'


def camera_K(h: int = H, w: int = W) -> np.ndarray:
    fx, fy, cx, cy = INTRINSICS
    return np.array([[fx * w, 0, cx * w], [0, fy * h, cy * h], [0, 0, 1]], dtype=np.float64)


def scene_arrays(i: int, h: int = H, w: int = W) -> dict:
    """rgb uint8 [H,W,3], pred float32 (the contract model's output), gt float32 (NaN = invalid),
    labels uint16 (1 = car moving right, 2 = parked car), moving ids {1}."""
    rng = np.random.default_rng(100 + i)
    red = rng.integers(20, 250, size=(h, w), dtype=np.uint8)
    rgb = np.stack([red, rng.integers(0, 255, (h, w), dtype=np.uint8), np.full((h, w), 40, np.uint8)], axis=2)
    pred = expected_depth(red)
    labels = np.zeros((h, w), np.uint16)
    x = 10 + 12 * i
    labels[20:40, x:x + 30] = 1           # moving object, moves right over time
    labels[30:50, 140:170] = 2            # parked object
    gt = pred * np.float32(1.2)            # background: prediction 20 % too near
    gt[labels == 1] = pred[labels == 1] * np.float32(0.7)
    gt[labels == 2] = pred[labels == 2] * np.float32(1.1)
    gt[:4] = np.nan                        # "sky" rows: no GT
    return {'rgb': rgb, 'pred': pred, 'gt': gt.astype(np.float32), 'labels': labels, 'moving': {1}}


@dataclass
class BagSpec:
    frames: int = 6
    storage: str = 'mcap'
    with_mask: bool = True
    with_camera_info: bool = True
    with_gt_depth: bool = True
    with_lidar: bool = False
    gt_offset_ns: int = 0                  # GT stamps shifted by this much
    drop_gt: tuple = ()                    # frame indices without a GT message
    bad_image_encoding: tuple = ()         # frames whose image is sent as 'nv21' (an encoding the package does not decode)
    corrupt_image: tuple = ()              # frames whose image CDR is cut short (header intact, data missing)
    extra_gt: int = 0                      # GT messages with stamps matching no image
    image_topic: str = '/camera/image_raw'


def _types():
    ts = get_typestore(Stores.ROS2_KILTED)
    return ts, ts.types


def _header(T, stamp_ns: int, frame: str):
    return T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9,
                                                                         nanosec=stamp_ns % 10**9), frame_id=frame)


def image_msg(T, stamp_ns: int, array: np.ndarray, encoding: str, frame: str = CAM_FRAME):
    a = np.ascontiguousarray(array)
    h, w = a.shape[:2]
    return T['sensor_msgs/msg/Image'](header=_header(T, stamp_ns, frame), height=h, width=w, encoding=encoding,
                                      is_bigendian=0, step=a.nbytes // h, data=a.reshape(-1).view(np.uint8))


def camera_info_msg(T, stamp_ns: int, K: np.ndarray, h: int, w: int):
    P = np.zeros((3, 4))
    P[:, :3] = K
    R = np.eye(3).reshape(-1)
    return T['sensor_msgs/msg/CameraInfo'](
        header=_header(T, stamp_ns, CAM_FRAME), height=h, width=w, distortion_model='plumb_bob',
        d=np.zeros(5), k=K.reshape(-1), r=R, p=P.reshape(-1), binning_x=0, binning_y=0,
        roi=T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


# lidar → camera: lidar x forward, y left, z up; camera optical: x right, y down, z forward;
# lidar origin 0.3 m above the camera (camera y = +0.3 is below, so lidar at camera y = -0.3)
T_CAM_LIDAR = np.array([[0, -1, 0, 0.0], [0, 0, -1, -0.3], [1, 0, 0, 0.1], [0, 0, 0, 1]], dtype=np.float64)


def lidar_points_from_gt(gt: np.ndarray, K: np.ndarray, step: int = 3) -> np.ndarray:
    """float32 [N,3] lidar-frame points sampled from a GT depth image on every `step`-th pixel."""
    from dynadepth_ros.camera import backproject, transform_points
    pts_cam = backproject(np.nan_to_num(gt, nan=0.0), K)[::step, ::step].reshape(-1, 3)
    pts_cam = pts_cam[pts_cam[:, 2] > 0]
    return transform_points(np.linalg.inv(T_CAM_LIDAR), pts_cam).astype(np.float32)


def pointcloud_msg(T, stamp_ns: int, pts: np.ndarray):
    PF = T['sensor_msgs/msg/PointField']
    n = pts.shape[0]
    data = np.zeros((n, 4), np.float32)
    data[:, :3] = pts
    data[:, 3] = 1.0
    fields = [PF(name=c, offset=4 * k, datatype=7, count=1) for k, c in enumerate(('x', 'y', 'z', 'intensity'))]
    return T['sensor_msgs/msg/PointCloud2'](header=_header(T, stamp_ns, LIDAR_FRAME), height=1, width=n,
                                            fields=fields, is_bigendian=False, point_step=16, row_step=16 * n,
                                            data=data.reshape(-1).view(np.uint8), is_dense=True)


def _quat(R: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation matrix (trace method, w >= 0 branch sufficient for our fixed matrices)."""
    tr = np.trace(R)
    if tr > 0:
        s = 2 * np.sqrt(tr + 1)
        return ((R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4)
    i = int(np.argmax(np.diag(R)))
    j, k = (i + 1) % 3, (i + 2) % 3
    s = 2 * np.sqrt(1 + R[i, i] - R[j, j] - R[k, k])
    q = np.zeros(4)
    q[i] = s / 4
    q[j] = (R[j, i] + R[i, j]) / s
    q[k] = (R[k, i] + R[i, k]) / s
    q[3] = (R[k, j] - R[j, k]) / s
    return tuple(q)


def tf_message(T, stamp_ns: int, transforms: dict) -> object:
    """tf2_msgs/TFMessage from {(parent, child): 4x4 T_parent_child}."""
    out = []
    for (parent, child), M in transforms.items():
        x, y, z, w = _quat(M[:3, :3])
        out.append(T['geometry_msgs/msg/TransformStamped'](
            header=_header(T, stamp_ns, parent), child_frame_id=child,
            transform=T['geometry_msgs/msg/Transform'](
                translation=T['geometry_msgs/msg/Vector3'](x=M[0, 3], y=M[1, 3], z=M[2, 3]),
                rotation=T['geometry_msgs/msg/Quaternion'](x=x, y=y, z=z, w=w))))
    return T['tf2_msgs/msg/TFMessage'](transforms=out)


def write_eval_bag(path, spec: BagSpec | None = None) -> Path:
    """Write a bag per `spec` and return its path (replaced if it exists)."""
    spec = spec or BagSpec()
    ts, T = _types()
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    plugin = StoragePlugin.MCAP if spec.storage == 'mcap' else StoragePlugin.SQLITE3
    K = camera_K()
    with Writer(path, version=9, storage_plugin=plugin) as w:
        def conn(topic, typ):
            return w.add_connection(topic, typ, typestore=ts)
        c_img = conn(spec.image_topic, 'sensor_msgs/msg/Image')
        c_info = conn('/camera/camera_info', 'sensor_msgs/msg/CameraInfo') if spec.with_camera_info else None
        c_mask = conn('/camera/instance_mask', 'sensor_msgs/msg/Image') if spec.with_mask else None
        c_gt = conn('/camera/depth_gt', 'sensor_msgs/msg/Image') if spec.with_gt_depth else None
        c_lidar = conn('/lidar/points', 'sensor_msgs/msg/PointCloud2') if spec.with_lidar else None
        if spec.with_lidar:
            c_tf = conn('/tf_static', 'tf2_msgs/msg/TFMessage')
            # chain: base_link → camera_optical and base_link → lidar
            T_base_cam = np.eye(4)
            T_base_cam[:3, 3] = (1.5, 0.0, 1.2)
            T_base_cam[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)
            T_base_lidar = T_base_cam @ T_CAM_LIDAR
            msg = tf_message(T, T0_NS, {('base_link', CAM_FRAME): T_base_cam, ('base_link', LIDAR_FRAME): T_base_lidar})
            w.write(c_tf, T0_NS, ts.serialize_cdr(msg, 'tf2_msgs/msg/TFMessage'))

        def put(c, t_ns, msg):
            w.write(c, t_ns, ts.serialize_cdr(msg, c.msgtype))

        for i in range(spec.frames):
            s = scene_arrays(i)
            st = T0_NS + int(i * 1e9 / FPS)
            if i in spec.bad_image_encoding:
                put(c_img, st, image_msg(T, st, s['rgb'][..., :2].copy(), 'nv21'))
            elif i in spec.corrupt_image:
                raw = bytes(ts.serialize_cdr(image_msg(T, st, s['rgb'], 'rgb8'), c_img.msgtype))
                w.write(c_img, st, raw[:len(raw) // 2])
            else:
                put(c_img, st, image_msg(T, st, s['rgb'], 'rgb8'))
            if c_info:
                put(c_info, st, camera_info_msg(T, st, K, H, W))
            if c_mask:
                put(c_mask, st, image_msg(T, st, s['labels'], '16UC1'))
            gst = st + spec.gt_offset_ns
            if c_gt and i not in spec.drop_gt:
                put(c_gt, gst + 1000, image_msg(T, gst, s['gt'], '32FC1'))
            if c_lidar and i not in spec.drop_gt:
                put(c_lidar, gst + 2000, pointcloud_msg(T, gst, lidar_points_from_gt(s['gt'], K)))
        for k in range(spec.extra_gt):
            st = T0_NS + int((spec.frames + 5 + k) * 1e9 / FPS)
            if c_gt:
                put(c_gt, st, image_msg(T, st, scene_arrays(0)['gt'], '32FC1'))
    return path


def write_depth_recording(path, stamps_ns, depths, topic: str = '/depth', storage: str = 'mcap',
                          images=None, image_topic: str = '/camera/image_raw', latency_ns: int = 5_000_000) -> Path:
    """A bag as a recorder of the live node would write: depth (32FC1) per stamp, optionally the images,
    image received at the stamp and depth `latency_ns` later."""
    ts, T = _types()
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        c_d = w.add_connection(topic, 'sensor_msgs/msg/Image', typestore=ts)
        c_i = w.add_connection(image_topic, 'sensor_msgs/msg/Image', typestore=ts) if images is not None else None
        for k, (st, d) in enumerate(zip(stamps_ns, depths)):
            if c_i is not None:
                w.write(c_i, st, ts.serialize_cdr(image_msg(T, st, images[k], 'rgb8'), 'sensor_msgs/msg/Image'))
            w.write(c_d, st + latency_ns, ts.serialize_cdr(image_msg(T, st, d, '32FC1'), 'sensor_msgs/msg/Image'))
    return path
