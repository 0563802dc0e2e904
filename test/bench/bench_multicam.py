"""Benchmark: 2 cameras served by ONE depth node (cameras:=[cam0,cam1], one model, batched) vs TWO depth nodes
(one camera each, a model copy and backend each), same model, same input, same machine, one run, CPU.

    .venv/bin/python test/bench/bench_multicam.py [--model M.onnx] [--seconds 8] [--rounds 3] [--threads 2]

Model: the ResNet18 DepthNet of bench_node.py (random weights, 192x640) unless --model. Input: 640x192 rgb8 on
both cameras. Both set-ups run at the same time (idle when not measured) in their own namespaces; rounds
interleave them, so a background load affects both alike.

  flood   both cameras publish at `--flood-hz` (default 30, above what 2 cores sustain): depth frames/s received
          per camera (latest-frame-wins drops the rest) = the throughput each camera gets.
  paced   both cameras publish at `--paced-hz` (default 4): stamp→receive latency p50/p99 per camera, measured in
          this process (stamp = publish time).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_node import WORK, RosClient, bench_image, bench_model, stamp_ns  # noqa: E402  (also sets the ROS environment, as bench_node)
from test_node_graph import depth_node_cmd  # noqa: E402

CAMS = ('cam0', 'cam1')
SETUPS = {'one node, 2 cameras': '/mc_one', 'two nodes, 1 camera each': '/mc_two'}


def node_cmd(model: Path, threads: int, ns: str, name: str, cameras: tuple[str, ...] | None) -> list[str]:
    cmd = depth_node_cmd() + [
        '--ros-args', '-p', f'model_path:={model}', '-p', 'backend:=onnxruntime',
        '-p', f'intra_op_threads:={threads}', '-r', f'__node:={name}', '-r', f'__ns:={ns}']
    if cameras:
        cmd += ['-p', f'cameras:=[{",".join(cameras)}]']
    return cmd


class Client(RosClient):
    """Publishes both cameras of every set-up, records (receive ns, stamp ns) per depth topic."""

    def __init__(self):
        from sensor_msgs.msg import Image

        super().__init__('bench_multicam_client')
        self.recv: dict[str, list[tuple[int, int]]] = {}
        self.pubs = {}
        for ns in SETUPS.values():
            for cam in CAMS:
                topic = f'{ns}/{cam}'
                self.pubs[topic] = self.node.create_publisher(Image, f'{topic}/image', self.qos)
                self.recv[topic] = []
                self.node.create_subscription(Image, f'{topic}/depth', lambda m, t=topic: self._on_depth(t, m),
                                              self.qos)
        self.start()

    def _on_depth(self, topic, msg):
        now = time.time_ns()
        with self.lock:
            self.recv[topic].append((now, stamp_ns(msg)))

    def connected(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in self.pubs.values()) and all(
            self.node.count_publishers(f'{t}/depth') > 0 for t in self.pubs)

    def run(self, ns: str, rate_hz: float, seconds: float, msg) -> dict[str, list[tuple[int, int]]]:
        """Publish both cameras of set-up `ns` at rate_hz for `seconds` (a new stamp per frame, the two cameras
        with the same stamp, like a synchronised rig); the depth received per camera."""
        topics = [f'{ns}/{cam}' for cam in CAMS]
        with self.lock:
            for t in topics:
                self.recv[t].clear()
        self.publish_paced([self.pubs[t] for t in topics], msg, rate_hz, seconds)
        time.sleep(1.5)
        with self.lock:
            return {t: list(self.recv[t]) for t in topics}


def fps(recv: list[tuple[int, int]]) -> float:
    t = np.array([a for a, _ in recv], np.float64) / 1e9
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', type=Path, help='design §3 ONNX model (default: export a ResNet18 DepthNet)')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--seconds', type=float, default=8.0, help='duration of each phase')
    ap.add_argument('--threads', type=int, default=2, help='ONNX Runtime threads of the 2-camera node')
    ap.add_argument('--single-threads', type=int, help='ONNX Runtime threads of each 1-camera node (default --threads)')
    ap.add_argument('-p', '--param', action='append', default=[], help='extra parameter name:=value of every node')
    ap.add_argument('--flood-hz', type=float, default=30.0)
    ap.add_argument('--paced-hz', type=float, default=4.0)
    args = ap.parse_args()
    work = WORK
    model = bench_model(args.model)
    load = os.getloadavg()
    print(f'model {model}; 2 cameras of 640x192 rgb8; ONNX Runtime CPU, {args.threads} threads in the 2-camera '
          f'node, {args.single_threads or args.threads} in each 1-camera node; parameters {args.param}; '
          f'flood {args.flood_hz:g} Hz, paced {args.paced_hz:g} Hz per camera; {args.rounds} interleaved rounds')
    print(f'load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores')

    one, two = SETUPS.values()
    single = args.single_threads or args.threads
    extra = [a for p in args.param for a in ('-p', p)]
    cmds = [node_cmd(model, args.threads, one, 'bench_multi', CAMS) + extra] + [
        node_cmd(model, single, f'{two}/{cam}', f'bench_single_{cam}', None) + extra for cam in CAMS]
    logs = [open(work / f'multicam_node{i}.log', 'w') for i in range(len(cmds))]
    procs = [subprocess.Popen(c, stdout=log, stderr=subprocess.STDOUT) for c, log in zip(cmds, logs)]
    client = Client()
    results = {label: {cam: {'fps': [], 'lat': []} for cam in CAMS} for label in SETUPS}
    try:
        msg = bench_image()
        deadline = time.monotonic() + 90
        while not client.connected() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not client.connected():
            raise SystemExit('the depth nodes did not come up; see ' + str(work / 'multicam_node0.log'))
        for ns in SETUPS.values():
            client.run(ns, 5.0, 2.0, msg)                                     # warm-up
        for r in range(args.rounds):
            line = [f'round {r + 1}:']
            for label, ns in SETUPS.items():
                flood = client.run(ns, args.flood_hz, args.seconds, msg)
                paced = client.run(ns, args.paced_hz, args.seconds, msg)
                for cam in CAMS:
                    t = f'{ns}/{cam}'
                    results[label][cam]['fps'].append(fps(flood[t]))
                    results[label][cam]['lat'] += [(a - b) / 1e6 for a, b in paced[t]]
                line.append(f'{label}: ' + ', '.join(f'{cam} {fps(flood[f"{ns}/{cam}"]):.2f} frames/s'
                                                      for cam in CAMS))
            print(' | '.join(line), flush=True)
    finally:
        client.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
    print()
    print(f'| set-up | camera | frames/s (flood {args.flood_hz:g} Hz, median of rounds) | '
          f'stamp→receive p50 (paced {args.paced_hz:g} Hz) | p99 |')
    print('|---|---|---|---|---|')
    for label in SETUPS:
        for cam in CAMS:
            v = results[label][cam]
            lat = np.array(v['lat'])
            p50 = np.percentile(lat, 50) if lat.size else float('nan')
            p99 = np.percentile(lat, 99) if lat.size else float('nan')
            print(f'| {label} | {cam} | {np.median(v["fps"]):.2f} | {p50:.1f} ms | {p99:.1f} ms |')
    for label in SETUPS:
        tot = sum(np.median(results[label][cam]['fps']) for cam in CAMS)
        print(f'TOTAL {label}: {tot:.2f} depth frames/s over both cameras')
    load = os.getloadavg()
    print(f'load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
