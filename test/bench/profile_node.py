"""Where the depth node's time goes per frame: perf_counter spans around each step and cProfile of the worker
thread and of the executor thread, in a depth_node process driven over ROS like bench_node.py.

    .venv/bin/python test/bench/profile_node.py [--model M.onnx] [--rate 10] [--seconds 15] [--threads 2]

The node runs in its own process with the spans patched in (the package is not changed); on exit it writes
the span table (per frame: count, mean, p50, p99 in ms) and the top cProfile entries (cumulative time) of both
threads to the log printed at the end.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_node import WORK, bench_image, bench_model  # noqa: E402  (also sets the ROS environment, as bench_node)

# runs inside the node process: wrap the steps with spans, profile the worker and executor threads
_INJECT = r'''
import atexit, cProfile, io, pstats, sys, threading, time
from collections import defaultdict
import numpy as np
from dynadepth_ros import node, ros_messages
from dynadepth_ros.inference import estimator as est_mod

SPANS = defaultdict(list)

def span(name, fn):
    def wrapped(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            SPANS[name].append((time.perf_counter() - t0) * 1e3)
    return wrapped

ros_messages.image_to_rgb = span('decode (image_to_rgb)', ros_messages.image_to_rgb)
est_mod.to_model_batch = span('preprocess (to_model_batch)', est_mod.to_model_batch)
est_mod.clean_depth = span('postprocess: clean_depth', est_mod.clean_depth)
est_mod.to_output_geometry = span('postprocess: to_output_geometry', est_mod.to_output_geometry)
ros_messages.depth_to_msg = span('message build: depth_to_msg', ros_messages.depth_to_msg)
ros_messages.calibration_to_camera_info = span('message build: camera_info', ros_messages.calibration_to_camera_info)
N = node.DepthNode
_orig_frames = N._handle_frames
def _handle_frames(self, frames):
    now = self.get_clock().now().nanoseconds       # the bench stamps with the publish time
    SPANS['stamp → worker start (transport in, executor, hand-over)'].append(
        (now - ros_messages.stamp_ns(frames[0][2].header)) / 1e6)
    return _orig_frames(self, frames)
N._handle_frames = span('worker: whole frame (_handle_frames)', _handle_frames)
N._publish_depth = span('worker: _publish_depth (build + publish + extras)', N._publish_depth)
N._image_intrinsics = span('intrinsics (_image_intrinsics)', N._image_intrinsics)
N._on_image = span('executor: _on_image callback', N._on_image)
_orig_conf = N.on_configure
def on_configure(self, state):
    r = _orig_conf(self, state)
    b = self.estimator._backend
    b.run = span('inference (backend.run)', b.run)
    return r
N.on_configure = on_configure
_orig_sub = N._subscribe
def _subscribe(self, cam):
    _orig_sub(self, cam)
    for k in ('depth', 'info'):
        p = cam.pubs[k]
        p.publish = span(f'publish: {k}', p.publish)
N._subscribe = _subscribe

PROF = {}
_orig_loop = N._work_loop
def _work_loop(self):
    pr = PROF.setdefault('worker', cProfile.Profile())
    pr.enable()
    try:
        return _orig_loop(self)
    finally:
        pr.disable()
N._work_loop = _work_loop
_orig_spin = node.spin_node
def spin_node(*a, **k):                 # the executor thread, whichever executor (parameter `executor`)
    pr = PROF.setdefault('executor', cProfile.Profile())
    pr.enable()
    try:
        return _orig_spin(*a, **k)
    finally:
        pr.disable()
node.spin_node = spin_node

def report():
    out = ['SPANS (ms per call): name | calls | mean | p50 | p99']
    for name, v in sorted(SPANS.items(), key=lambda kv: -np.mean(kv[1]) * len(kv[1])):
        a = np.array(v[len(v) // 10:] or v)          # skip the warm-up tenth
        out.append(f'  {name:55s} {len(v):6d} {a.mean():8.3f} {np.percentile(a, 50):8.3f} {np.percentile(a, 99):8.3f}')
    for key, pr in PROF.items():
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats('tottime').print_stats(25)
        out.append(f'CPROFILE {key} (sorted by own time)\n' + s.getvalue())
    sys.stdout.write('\n'.join(out) + '\n')
    sys.stdout.flush()
atexit.register(report)
sys.exit(node.main())
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', type=Path)
    ap.add_argument('--rate', type=float, default=10.0, help='images per second published')
    ap.add_argument('--seconds', type=float, default=15.0)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('-p', '--param', action='append', default=[], help='extra node parameter name:=value')
    args = ap.parse_args()
    work = WORK
    model = bench_model(args.model)
    from bench_node import Client

    log_path = work / 'profile_node.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen([sys.executable, '-c', _INJECT, '--ros-args', '-p', f'model_path:={model}',
                                 '-p', 'backend:=onnxruntime', '-p', f'intra_op_threads:={args.threads}',
                                 *[a for p in args.param for a in ('-p', p)],
                                 '-r', '__node:=bench_dynadepth', '-r', 'image:=/bench/image',
                                 '-r', 'depth:=/bench/depth'], stdout=log, stderr=subprocess.STDOUT)
    client = Client()
    try:
        msg = bench_image()
        deadline = time.monotonic() + 60
        while client.pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        got = client.run(args.rate, args.seconds, msg)
        lat = [(a - b) / 1e6 for a, b in got]
        print(f'{len(got)} depth frames at {args.rate:g} Hz; stamp→receive p50 {np.percentile(lat, 50):.1f} ms, '
              f'p99 {np.percentile(lat, 99):.1f} ms; node: {client.diag}')
    finally:
        client.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    print(log_path.read_text()[-20000:])
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
