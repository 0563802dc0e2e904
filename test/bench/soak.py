"""Soak: the depth node fed a looped synthetic bag for SOAK_MINUTES (default 30); not part of CI.

    make soak SOAK_MINUTES=30
    .venv/bin/python test/bench/soak.py [--minutes 30] [--model M.onnx] [--frames 60] [--rate 1.0] [--threads N]

Builds a synthetic rosbag2 with the bag builders of the replay tests (test/bag_builders.py: a 192x64 rgb8 camera
image, its camera_info and a 16UC1 instance mask per frame at 10 Hz), starts `depth_node` (the installed entry
point; the bundled model unless --model) and `dynadepth-replay --loop` as separate processes, and watches them
from this process. Each pass of the bag starts again at its first stamp, so stamps jump backwards once per loop
(the node restarts mask pairing). Printed at the end:

  node RSS      after the warm-up (--warmup s after the first depth image) and at the end, growth in %, the
                highest after the warm-up and the first (sampled every 5 s)
  frames        images published by the replayer / received by the node (the rest lost on the best-effort sensor
                QoS) / depth published / dropped (latest frame wins) / bad; depth images received here
  objects       objects messages / masked frames that got depth (every frame of the bag has a mask), unpaired
  errors/skips  the node's /diagnostics counters (errors, bad frames and masks, masks dropped, camera_info
                refused, QoS mismatches, stamp jumps vs loops)
  latency       image→depth in this process (the replayed image and the node's depth received here, matched by
                stamp): p50/p99 over the run after the warm-up. The recorded stamps are years old, so the node's own
                stamp→publish latency on /diagnostics is meaningless here; its inference time is printed too.

Exit status 1 when the node died or published no depth.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import bench_env  # noqa: F401  (sys.path and the ROS environment, before rclpy is imported)

NODE_NAME = 'soak_dynadepth'
IMAGE, INFO, MASK = '/camera/image_raw', '/camera/camera_info', '/camera/instance_mask'


def rss_mb(pid: int) -> float | None:
    """Resident set size of process `pid` in MB (None when it is gone)."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class Monitor:
    """This process's view: replayed images, the node's depth and objects, and its /diagnostics."""

    def __init__(self):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from test_node_graph import Graph         # the tests' client node, spinning in a thread
        from visualization_msgs.msg import MarkerArray

        self.graph = Graph()
        node = self.graph.node
        self.lock = threading.Lock()
        self.image_seen: dict[int, int] = {}        # stamp ns → receive time ns of the newest image with it
        self.latencies: list[float] = []             # ms, image→depth, after the warm-up
        self.images = self.depth = self.objects = 0
        self.first_depth = None
        self.measuring = False
        self.diag: dict = {}
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)   # room for a starved monitor
        node.create_subscription(Image, IMAGE, self._on_image, qos)
        node.create_subscription(Image, '/depth', self._on_depth, qos)
        node.create_subscription(MarkerArray, '/objects', self._on_objects, qos)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)

    @staticmethod
    def _stamp(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _on_image(self, msg):
        with self.lock:
            self.images += 1
            self.image_seen[self._stamp(msg)] = time.monotonic_ns()

    def _on_depth(self, msg):
        now = time.monotonic_ns()
        with self.lock:
            self.depth += 1
            if self.first_depth is None:
                self.first_depth = time.monotonic()
            sent = self.image_seen.get(self._stamp(msg))
            if self.measuring and sent is not None:
                self.latencies.append((now - sent) / 1e6)

    def _on_objects(self, msg):
        with self.lock:
            self.objects += 1

    def _on_diag(self, arr):
        for st in arr.status:
            if st.name == f'{NODE_NAME}: depth':
                values = {kv.key: kv.value for kv in st.values}
                level = st.level[0] if isinstance(st.level, (bytes, bytearray)) else int(st.level)
                values['_level'] = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}.get(level, str(level))
                values['_message'] = st.message
                with self.lock:
                    self.diag = values

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.diag)

    def close(self):
        self.graph.close()


def stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 20.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def settled(mon: Monitor, timeout: float = 15.0) -> dict:
    """The node's /diagnostics once its counters stop changing (input stopped), or the last one after timeout."""
    keys = ('frames_in', 'frames_out', 'objects_published', 'objects_unpaired', 'masks_in')
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        time.sleep(1.5)                       # more than the node's diagnostics period (1 s)
        d = mon.snapshot()
        now = tuple(d.get(k) for k in keys)
        if now == last:
            return d
        last = now
    return mon.snapshot()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--minutes', type=float, default=float(os.environ.get('SOAK_MINUTES', '30')),
                    help='how long to replay (default: $SOAK_MINUTES or 30)')
    ap.add_argument('--model', type=Path, help='ONNX model for the node (default: the bundled model)')
    ap.add_argument('--frames', type=int, default=60, help='frames in the synthetic bag (10 Hz; > 15 so that '
                                                           'each loop jumps back by more than 1 s)')
    ap.add_argument('--rate', type=float, default=1.0, help='replay speed factor')
    ap.add_argument('--threads', type=int, help='intra_op_threads of the node (default: the node default)')
    ap.add_argument('--warmup', type=float, default=20.0, help='seconds after the first depth image before the '
                                                              'start RSS is taken and latencies are kept')
    ap.add_argument('--work', type=Path, default=Path(tempfile.gettempdir()) / 'dynadepth_soak')
    args = ap.parse_args()
    from bag_builders import BagSpec, write_eval_bag

    args.work.mkdir(parents=True, exist_ok=True)
    bag = write_eval_bag(args.work / 'bag', BagSpec(frames=args.frames, with_gt_depth=False))
    print(f'soak: {args.minutes:g} min, synthetic bag {bag} ({args.frames} frames of 192x64 rgb8 + camera_info + '
          f'16UC1 mask at 10 Hz, replayed in a loop at rate {args.rate:g}); model '
          f'{args.model or "bundled"}; load average {" ".join(f"{x:.2f}" for x in os.getloadavg())} on '
          f'{os.cpu_count()} cores', flush=True)
    exe = Path(sys.prefix) / 'bin'
    node_cmd = [str(exe / 'depth_node'), '--ros-args', '-r', f'__node:={NODE_NAME}', '-r', f'image:={IMAGE}',
                '-r', f'camera_info:={INFO}', '-r', f'instance_mask:={MASK}', '-p', 'backend:=onnxruntime']
    if args.model:
        node_cmd += ['-p', f'model_path:={args.model.resolve()}']
    if args.threads is not None:
        node_cmd += ['-p', f'intra_op_threads:={args.threads}']
    summary_path = args.work / 'replay_summary.json'
    summary_path.unlink(missing_ok=True)
    replay_cmd = [str(exe / 'dynadepth-replay'), str(bag), '--loop', '--rate', str(args.rate),
                  '--wait-subscribers', IMAGE, INFO, MASK, '--wait-timeout', '60', '--summary', str(summary_path)]
    node_log = open(args.work / 'node.log', 'w')
    replay_log = open(args.work / 'replay.log', 'w')
    node = subprocess.Popen(node_cmd, stdout=node_log, stderr=subprocess.STDOUT)
    mon = Monitor()
    replay = None
    rss = []                                  # (seconds since start, MB)
    rss_start = None
    t_end = None
    try:
        replay = subprocess.Popen(replay_cmd, stdout=replay_log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        while mon.first_depth is None:
            if node.poll() is not None or time.monotonic() - t0 > 120:
                print(f'no depth from the node after {time.monotonic() - t0:.0f} s; see {args.work}/node.log')
                return 1
            time.sleep(0.2)
        t_warm = mon.first_depth + args.warmup
        t_end = mon.first_depth + args.minutes * 60.0
        last_report = time.monotonic()
        while time.monotonic() < t_end and node.poll() is None and replay.poll() is None:
            now = time.monotonic()
            if rss_start is None and now >= t_warm:
                rss_start = rss_mb(node.pid)
                with mon.lock:
                    mon.measuring = True
            mb = rss_mb(node.pid)
            if mb is not None:
                rss.append((now - mon.first_depth, mb))
            if now - last_report >= 60:
                d = mon.snapshot()
                print(f'  {(now - mon.first_depth) / 60:5.1f} min: RSS {mb:.1f} MB, images seen here {mon.images}, '
                      f'node: frames in {d.get("frames_in")} / depth {d.get("frames_out")} / dropped '
                      f'{d.get("dropped_frames")}, '
                      f'objects {d.get("objects_published")}, errors {d.get("errors")}', flush=True)
                last_report = now
            time.sleep(5.0 if t_end - time.monotonic() > 5 else 0.5)
        running = mon.snapshot()              # status and inference time while frames flowed
        stop(replay, signal.SIGTERM)          # then let the node finish and report what it has
        diag = settled(mon)
        rss_end = rss_mb(node.pid)
    finally:
        if replay is not None:
            stop(replay, signal.SIGTERM)
        node_alive = node.poll() is None
        node_rc = stop(node)
        mon.close()
        node_log.close()
        replay_log.close()
    replayed = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return report(args, diag, running, replayed, mon, rss, rss_start, rss_end, node_alive, node_rc)


def report(args, d, running, replayed, mon, rss, rss_start, rss_end, node_alive, node_rc) -> int:
    def n(key):
        return int(d.get(key, 0) or 0)

    published = replayed.get('published', {})
    loops = replayed.get('loops', 0)
    ran = rss[-1][0] / 60 if rss else 0.0
    print(f'SOAK {ran:.1f} min of depth ({args.minutes:g} asked), {loops} loops of the {args.frames}-frame bag; '
          f'node {"alive" if node_alive else f"DIED (exit status {node_rc})"}, stopped with SIGINT: status {node_rc}')
    if rss_start and rss_end:
        peak = max(mb for t, mb in rss if t >= args.warmup)
        print(f'RSS node after warm-up {rss_start:.1f} MB, at the end {rss_end:.1f} MB: growth '
              f'{100 * (rss_end - rss_start) / rss_start:+.1f} % (highest after warm-up {peak:.1f} MB, at the first '
              f'depth {rss[0][1]:.1f} MB; {len(rss)} samples)')
    else:
        print('RSS not measured (the run ended before the warm-up)')
    masked = n('frames_out')
    lost = f'{published[IMAGE] - n("frames_in")}' if IMAGE in published else '?'
    print(f'FRAMES images published {published.get(IMAGE, "?")} (received here {mon.images}), received by the node '
          f'{n("frames_in")} (not received: {lost}, best-effort sensor QoS), depth '
          f'published {n("frames_out")} (received here {mon.depth}), dropped {n("dropped_frames")} (latest frame '
          f'wins), bad {n("bad_frames")}')
    share = f'{100 * n("objects_published") / masked:.1f} %' if masked else 'n/a'
    print(f'OBJECTS {n("objects_published")} objects messages for {masked} masked frames with depth ({share}; '
          f'received here {mon.objects}), unpaired {n("objects_unpaired")}; masks received {n("masks_in")}, '
          f'dropped {n("masks_dropped")}, bad {n("bad_masks")}')
    print(f'ERRORS errors {n("errors")}, bad frames {n("bad_frames")}, bad masks {n("bad_masks")}, camera_info '
          f'refused for {n("camera_info_errors")} frames, QoS mismatches {n("qos_incompatible_events")}, stamp '
          f'jumps back {n("stamp_jumps_back")} (loops - 1 = {max(loops - 1, 0)}); /diagnostics level before the end '
          f'{running.get("_level")}' + ('' if running.get('_level') == 'OK' else f' ({running.get("_message")!r})'))
    if mon.latencies:
        lat = np.asarray(mon.latencies)
        print(f'LATENCY image→depth (both received here) p50 {np.percentile(lat, 50):.1f} ms, p99 '
              f'{np.percentile(lat, 99):.1f} ms over {lat.size} frames after the warm-up; node inference p50 '
              f'{running.get("inference_p50_ms")} ms (its last 5 s before the end)')
    print(f'load average at the end {" ".join(f"{x:.2f}" for x in os.getloadavg())}; logs in {args.work}')
    return 0 if node_alive and n('frames_out') > 0 else 1


if __name__ == '__main__':
    raise SystemExit(main())
