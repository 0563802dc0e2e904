"""Recordings as a robot writes them, made from the synthetic generator's bags (dynadepth_ros.synth, --bag):
the camera as a jpeg CompressedImage under `<ns>/image_raw/compressed` with `<ns>/camera_info`, `/odom` and
`/tf_static`; the instance masks only when asked (a robot with a segmentation node); never GT depth or lidar.
`rewrite_as_robot` can also break a recording in the ways a user's can be broken (stamps that jump back, a
camera that stands still, no camera_info, too few frames)."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from dynadepth_ros.recording.bag_reader import BagReader

TS = get_typestore(Stores.ROS2_KILTED)
T = TS.types
NS = '/front'


def synthetic_bags(out: Path, sequences: int = 3, frames: int = 14, height: int = 64, width: int = 192,
                   seed: int = 0) -> list[Path]:
    """The generator's bags (all topics) of `sequences` test-split sequences."""
    from dynadepth_ros.synth import generate_split

    seqs = generate_split(out, 'test', sequences, frames, height, width, seed, bag=True, storage='mcap',
                          progress=False, workers=1)
    return [Path(s) / 'bag' for s in seqs]


def rewrite_as_robot(src: Path, dst: Path, *, masks: bool = False, compressed: bool = True, frames: int | None = None,
                     camera_info: bool = True, backwards_at: int | None = None, static: bool = False,
                     odom: bool = True, depth: bool = False, start_offset_s: float = 0.0,
                     second_camera: bool = False, second_odom: bool = False) -> Path:
    """Copy `src` (a synthetic bag) to `dst` as a robot would record it (see the module docstring)."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shift = int(start_offset_s * 1e9)
    with BagReader(src) as reader, Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}

        def conn(topic, msgtype):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=TS)
            return conns[topic]

        def put(topic, msgtype, t, msg):
            w.write(conn(topic, msgtype), t, TS.serialize_cdr(msg, msgtype))

        def restamp(msg, t):
            msg.header.stamp = T['builtin_interfaces/msg/Time'](sec=t // 10**9, nanosec=t % 10**9)

        n_image = 0
        first_rgb = None
        for topic, t, msg in reader.messages():
            t = t + shift
            if topic == '/tf_static':
                put('/tf_static', 'tf2_msgs/msg/TFMessage', t, msg)
            elif topic == '/odom' and odom:
                restamp(msg, msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec + shift)
                if static:
                    msg.pose.pose.position.x = msg.pose.pose.position.y = msg.pose.pose.position.z = 0.0
                    o = msg.pose.pose.orientation
                    o.x = o.y = o.z = 0.0
                    o.w = 1.0
                put('/odom', 'nav_msgs/msg/Odometry', t, msg)
                if second_odom:
                    put('/wheel/odom', 'nav_msgs/msg/Odometry', t, msg)
            elif topic == '/camera/camera_info' and camera_info:
                if frames is not None and n_image > frames:
                    continue
                restamp(msg, t)
                put(f'{NS}/camera_info', 'sensor_msgs/msg/CameraInfo', t, msg)
                if second_camera:
                    put('/rear/camera_info', 'sensor_msgs/msg/CameraInfo', t, msg)
            elif topic == '/camera/instance_mask' and masks:
                if frames is not None and n_image > frames:
                    continue
                restamp(msg, t)
                put(f'{NS}/instance_mask', 'sensor_msgs/msg/Image', t, msg)
            elif topic == '/camera/depth_gt' and depth:
                restamp(msg, t)
                put(f'{NS}/depth', 'sensor_msgs/msg/Image', t, msg)
            elif topic == '/camera/image_raw':
                if frames is not None and n_image >= frames:
                    continue
                stamp = t
                if backwards_at is not None and n_image == backwards_at:
                    stamp = t - 350_000_000          # the camera clock jumps back 0.35 s once
                rgb = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
                if static:
                    first_rgb = rgb if first_rgb is None else first_rgb
                    rgb = first_rgb
                if compressed:
                    ok, jpg = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                    hdr = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](
                        sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=msg.header.frame_id)
                    put(f'{NS}/image_raw/compressed', 'sensor_msgs/msg/CompressedImage', t,
                        T['sensor_msgs/msg/CompressedImage'](header=hdr, format='jpeg', data=jpg.reshape(-1)))
                else:
                    msg.data = rgb.reshape(-1)
                    restamp(msg, stamp)
                    put(f'{NS}/image_raw', 'sensor_msgs/msg/Image', t, msg)
                if second_camera:
                    msg.data = rgb.reshape(-1)
                    restamp(msg, stamp)
                    put('/rear/image_raw', 'sensor_msgs/msg/Image', t, msg)
                n_image += 1
    return dst
