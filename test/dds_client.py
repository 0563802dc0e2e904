"""A ROS 2 client process for the FastDDS tests, with whatever FastDDS settings its environment gives it (the
tests start it WITHOUT FASTDDS_DEFAULT_PROFILES_FILE, i.e. default FastDDS): it publishes rgb8 camera frames
like a camera driver (reliable, REP 2003) to `<ns>/image` and counts what comes back on `<ns>/depth` through a
reliable and a best-effort subscription, and on `<ns>/depth/camera_info`. Prints one JSON line.

    python dds_client.py --ns /dd_dds --frames 20 --rate 5 --width 1280 --height 720
"""
import argparse
import json
import time

import numpy as np
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--ns', required=True)
    ap.add_argument('--frames', type=int, default=20)
    ap.add_argument('--rate', type=float, default=5.0)
    ap.add_argument('--width', type=int, default=1280)
    ap.add_argument('--height', type=int, default=720)
    ap.add_argument('--discovery-timeout', type=float, default=30.0)
    ap.add_argument('--linger', type=float, default=5.0, help='seconds to wait for the last frames')
    a = ap.parse_args()
    rclpy.init()
    node = rclpy.create_node('dd_default_client')
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    best_effort = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
    got = {'reliable': [], 'best_effort': [], 'camera_info': []}

    def stamp(m):
        return m.header.stamp.sec * 10**9 + m.header.stamp.nanosec

    def on_depth(key):
        def cb(m):
            arr = np.frombuffer(bytes(m.data), '<f4').reshape(m.height, m.width)
            got[key].append({'stamp': stamp(m), 'h': m.height, 'w': m.width,
                             'centre': float(arr[m.height // 2, m.width // 2]),
                             'latency_ms': (time.time_ns() - stamp(m)) / 1e6})
        return cb

    def on_info(m):
        got['camera_info'].append({'stamp': stamp(m), 'w': m.width, 'h': m.height})

    subs = [node.create_subscription(Image, f'{a.ns}/depth', on_depth('reliable'), reliable),
            node.create_subscription(Image, f'{a.ns}/depth', on_depth('best_effort'), best_effort),
            node.create_subscription(CameraInfo, f'{a.ns}/depth/camera_info', on_info, reliable)]
    pub = node.create_publisher(Image, f'{a.ns}/image', reliable)

    def spin_for(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.01)

    rgb = np.zeros((a.height, a.width, 3), np.uint8)

    def frame(red):
        ns = time.time_ns()
        rgb[..., 0] = red
        msg = Image(height=a.height, width=a.width, encoding='rgb8', step=a.width * 3, data=rgb.tobytes())
        msg.header.stamp.sec, msg.header.stamp.nanosec = ns // 10**9, ns % 10**9
        msg.header.frame_id = 'cam_optical'
        pub.publish(msg)
        return ns
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.discovery_timeout and not (
            pub.get_subscription_count() > 0 and all(s.get_publisher_count() > 0 for s in subs)):
        rclpy.spin_once(node, timeout_sec=0.05)
    matched = {'image': pub.get_subscription_count(), 'depth': subs[0].get_publisher_count(),
               'camera_info': subs[2].get_publisher_count(), 'after_s': round(time.monotonic() - t0, 2)}
    # warm-up: our readers seeing the node's writers does not mean the node's writers have matched our readers;
    # send frames until one depth and one camera_info came back, then count from a clean slate
    warmup = 0
    end = time.monotonic() + a.discovery_timeout
    while time.monotonic() < end and not (got['reliable'] and got['camera_info']):
        frame(20)
        warmup += 1
        spin_for(0.5)
    matched['warmup_frames'] = warmup
    spin_for(0.5)
    sent = []
    for i in range(a.frames):
        sent.append({'stamp': frame(40 + 7 * i), 'red': 40 + 7 * i})
        spin_for(1.0 / a.rate)
    end = time.monotonic() + a.linger
    while time.monotonic() < end and min(len(got['reliable']), len(got['camera_info'])) < len(sent):
        rclpy.spin_once(node, timeout_sec=0.05)
    counted = {s['stamp'] for s in sent}          # a late warm-up frame is not one of ours
    print(json.dumps({'matched': matched, 'sent': sent,
                      **{k: [m for m in v if m['stamp'] in counted] for k, v in got.items()}}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == '__main__':
    main()
