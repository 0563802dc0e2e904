"""Benchmark: the depth node end to end over ROS vs the raw backend, same model and input, one run, CPU.

    .venv/bin/python test/bench/bench_node.py [--model M.onnx] [--seconds 10] [--threads 2] [--variant ...]

Model: a ResNet18 U-Net (training/networks/depth.py, random weights, 192x640) exported with the training
export (torch only in this script), unless --model is given. Input: 640x192 rgb8.

  raw backend   ONNX Runtime CPU session run on a preprocessed [1,3,192,640] batch in a loop (frames/s, ms),
                measured at the start of every round (the machine is shared).
  node, flood   images published at 2x the raw rate: output frames/s at saturation (latest-frame-wins drops
                the excess) → throughput ratio node / raw (goal >= 0.95).
  node, paced   images published at 0.5x the raw rate: stamp→receive latency p50/p99 in this process (stamp
                = publish time) and the node's own stamp→publish latency from /diagnostics; overhead = node
                p50 - raw backend p50; the node's own part (stamp→publish - inference) goal <= 3 ms.
  --variant     several node configurations side by side in each round (node restarted per variant).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench_env import node_variant  # noqa: F401  (first: sys.path and the ROS environment, before rclpy)
from test_node_graph import depth_node_cmd  # noqa: E402


def export_resnet18(path: Path) -> Path:
    import torch

    from dynadepth_ros.model_format import ModelMetadata
    from training.export import export_depth_onnx
    from training.networks.depth import DepthNet

    torch.manual_seed(0)
    torch.set_num_threads(2)
    net = DepthNet(depth=18, min_depth=0.1, max_depth=100.0, init_depth=15.0).eval()
    meta = ModelMetadata(input_height=192, input_width=640, min_depth=0.1, max_depth=100.0, metric=True,
                         intrinsics=(0.58, 1.92, 0.5, 0.5), stage='final', dataset='bench-random-weights',
                         config_hash='bench', version='bench')
    info = export_depth_onnx(net, path, meta, max_batch=4)
    print(f'exported ResNet18 DepthNet ({sum(p.numel() for p in net.parameters()) / 1e6:.1f} M params) to {path} '
          f'in {info["seconds"]:.1f} s')
    return path


WORK = Path(tempfile.gettempdir()) / 'dynadepth_bench'


def bench_model(model: Path | None) -> Path:
    """`model`, or the ResNet18 DepthNet exported once into the bench work directory (WORK, created)."""
    WORK.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = WORK / 'resnet18_192x640.onnx'
        if not model.exists():
            export_resnet18(model)
    return model


def bench_image():
    """The benchmark input: a 640x192 rgb8 sensor_msgs/Image of seeded noise."""
    from sensor_msgs.msg import Image

    rgb = np.random.default_rng(1).integers(0, 256, (192, 640, 3), dtype=np.uint8)
    msg = Image(height=192, width=640, encoding='rgb8', step=640 * 3, data=rgb.tobytes())
    msg.header.frame_id = 'bench_optical'
    return msg


class RawBackend:
    """The raw backend: the ONNX Runtime CPU session run on a preprocessed [1,3,192,640] batch."""

    def __init__(self, model: Path, threads: int, spinning: bool = True):
        from dynadepth_ros.inference import DepthEstimator
        from dynadepth_ros.inference.preprocess import to_model_batch

        self.est = DepthEstimator(model, backend='onnxruntime', intra_op_threads=threads, max_batch=1,
                                  intra_op_spinning=spinning)
        self.rgb = np.random.default_rng(0).integers(0, 256, (192, 640, 3), dtype=np.uint8)
        self.batch = to_model_batch([self.rgb], [self.est.plan_for(192, 640)])
        for _ in range(3):
            self.est._backend.run(self.batch)

    def measure(self, seconds: float) -> list[float]:
        """Per-run times (ms) of backend.run for `seconds`."""
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            self.est._backend.run(self.batch)
            times.append((time.perf_counter() - t0) * 1e3)
        return times


def stamp_ns(msg) -> int:
    """The header stamp of `msg` in nanoseconds."""
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


class RosClient:
    """The benchmarks' side of the ROS graph: one node spun in a background thread, a lock for what the callbacks
    record, reliable keep-last-10 QoS, and publishing on a fixed schedule. Subclasses create their publishers and
    subscriptions in __init__, then call start()."""

    def __init__(self, name: str):
        import rclpy
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node(name)
        self.lock = threading.Lock()
        self.qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)

    def start(self) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        # close() ends this loop before it shuts the executor down (doing that while this thread waits inside
        # executor.spin() can crash the process, seen with the tests' client on Jazzy)
        while not self._stop.is_set() and self.rclpy.ok():
            self.executor.spin_once(timeout_sec=0.05)

    @staticmethod
    def publish_paced(pubs: list, msg, rate_hz: float, seconds: float) -> None:
        """Publish `msg` on every publisher of `pubs` at rate_hz for `seconds`, restamped with the wall time at each
        tick (all publishers get the same stamp, like a synchronised rig)."""
        period = 1.0 / rate_hz
        t_next = time.perf_counter()
        end = t_next + seconds
        while time.perf_counter() < end:
            ns = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = ns // 1_000_000_000, ns % 1_000_000_000
            for pub in pubs:
                pub.publish(msg)
            t_next += period
            delay = t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def close(self):
        self._stop.set()
        self.thread.join(5)       # a spin thread still running at interpreter exit aborts it ('terminate called')
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown()


class Client(RosClient):
    """Publishes the bench image, records (receive ns, stamp ns) of every depth and the node's /diagnostics."""

    def __init__(self):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image

        super().__init__('bench_node_client')
        self.recv: list[tuple[int, int]] = []          # (receive time ns, stamp ns)
        self.diag: dict = {}
        self.pub = self.node.create_publisher(Image, '/bench/image', self.qos)
        self.node.create_subscription(Image, '/bench/depth', self._on_depth, self.qos)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        self.start()

    def _on_depth(self, msg):
        now = time.time_ns()
        with self.lock:
            self.recv.append((now, stamp_ns(msg)))

    def _on_diag(self, arr):
        for st in arr.status:
            if st.name == 'bench_dynadepth: depth':
                self.diag = {kv.key: kv.value for kv in st.values}

    def run(self, rate_hz: float, seconds: float, msg) -> list[tuple[int, int]]:
        with self.lock:
            self.recv.clear()
        self.publish_paced([self.pub], msg, rate_hz, seconds)
        time.sleep(1.0)
        with self.lock:
            return list(self.recv)


def start_node(cmd: list[str], client: Client, log_path: Path):
    """Start the depth node `cmd`, wait until it subscribes to the bench image, warm it up (5 Hz, 2 s)."""
    log = open(log_path, 'w')
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 60
    while client.pub.get_subscription_count() == 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f'depth_node did not start (exit {proc.poll()}); see {log_path}')
        time.sleep(0.05)
    client.run(5.0, 2.0, bench_image())
    return proc


def stop_node(proc, client: Client) -> None:
    proc.terminate()
    proc.wait(15)
    end = time.monotonic() + 10
    while client.pub.get_subscription_count() > 0 and time.monotonic() < end:
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', type=Path, help='design §3 ONNX model (default: export a ResNet18 DepthNet)')
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds of raw / node flood / node paced')
    ap.add_argument('--seconds', type=float, default=6.0,
                    help='duration of each phase in a round (>= 5 so the node\'s 5 s diagnostics window sees only it)')
    ap.add_argument('--threads', type=int, default=2, help='ONNX Runtime threads (raw and node)')
    ap.add_argument('--spinning', choices=('on', 'off', 'default'), default='default',
                    help='ONNX Runtime thread spinning (raw and node): on, off, or the node\'s default')
    ap.add_argument('--variant', action='append', default=[], metavar='[LABEL=]NAME:=VALUE[,NAME:=VALUE]',
                    help='a node configuration to compare (repeatable; each round runs every variant after the raw '
                         'backend, the node restarted per variant), e.g. --variant executor:=events '
                         '--variant executor:=single_threaded; default: one node with its default parameters')
    args = ap.parse_args()
    work = WORK
    model = bench_model(args.model)
    variants = [node_variant(v) for v in args.variant] or [node_variant('')]
    load = os.getloadavg()
    print(f'model {model}; input 640x192 rgb8; ONNX Runtime CPU, {args.threads} threads')
    print(f'load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores '
          f'(shared machine: phases are interleaved, {args.rounds} rounds)')

    from dynadepth_ros.node import PARAMETERS
    spinning = {'on': True, 'off': False}.get(args.spinning, PARAMETERS['intra_op_spinning'][0])
    print(f'ONNX Runtime thread spinning: {"on" if spinning else "off"} ({args.spinning}), raw backend and node')
    raw = RawBackend(model, args.threads, spinning)
    base = depth_node_cmd() + [
        '--ros-args', '-p', f'model_path:={model}', '-p', 'backend:=onnxruntime', '-p', f'intra_op_threads:={args.threads}',
        '-p', f'intra_op_spinning:={str(spinning).lower()}',
        '-r', '__node:=bench_dynadepth', '-r', 'image:=/bench/image', '-r', 'depth:=/bench/depth']
    client = Client()
    msg = bench_image()
    rows = {label: [] for label, _ in variants}
    raw_rows = []
    proc = None
    try:
        if len(variants) == 1:                                            # one node for all rounds
            proc = start_node(base + variants[0][1], client, work / 'node.log')
        for r in range(args.rounds):
            t_raw = np.array(raw.measure(args.seconds))
            raw_fps = 1e3 / t_raw.mean()
            raw_rows.append(dict(raw_fps=raw_fps, raw_p50=float(np.percentile(t_raw, 50))))
            print(f'round {r + 1}: raw {raw_fps:.2f} frames/s (p50 {raw_rows[-1]["raw_p50"]:.1f} ms)')
            for label, params in variants:
                if len(variants) > 1:
                    proc = start_node(base + params, client, work / f'node-{len(rows[label])}.log')
                try:
                    flood = client.run(2.0 * raw_fps, args.seconds, msg)
                    recv_t = np.array([a for a, _ in flood], np.float64) / 1e9
                    node_fps = (len(recv_t) - 1) / (recv_t[-1] - recv_t[0]) if len(recv_t) > 1 else 0.0
                    d_flood = dict(client.diag)
                    paced = client.run(0.5 * raw_fps, args.seconds, msg)
                    time.sleep(1.2)
                    d_paced = dict(client.diag)
                finally:
                    if len(variants) > 1:
                        stop_node(proc, client)
                        proc = None
                lat = [(a - b) / 1e6 for a, b in paced]
                row = dict(raw_rows[-1], node_fps=node_fps, lat=lat,
                           node_inf_p50=float(d_paced.get('inference_p50_ms', 'nan')),
                           node_pub_p50=float(d_paced.get('latency_p50_ms', 'nan')),
                           node_overhead_p50=float(d_paced.get('overhead_p50_ms', 'nan')),
                           dropped=d_flood.get('dropped_frames'))
                rows[label].append(row)
                print(f'  {label}: node flood {node_fps:.2f} frames/s (ratio {node_fps / raw_fps:.3f}, dropped '
                      f'{row["dropped"]}) | node paced stamp→receive p50 {np.percentile(lat, 50):.1f} ms, node '
                      f'inference p50 {row["node_inf_p50"]:.1f} ms, stamp→publish p50 {row["node_pub_p50"]:.1f} ms, '
                      f'per-frame overhead p50 {row["node_overhead_p50"]:.1f} ms')
    finally:
        if proc is not None:
            stop_node(proc, client)
        client.close()
        raw.est.close()
    raw_fps = float(np.median([r['raw_fps'] for r in raw_rows]))
    raw_p50 = float(np.median([r['raw_p50'] for r in raw_rows]))
    print(f'SUMMARY raw backend {raw_fps:.2f} frames/s (p50 {raw_p50:.1f} ms), median of {len(raw_rows)} rounds')
    for label, vrows in rows.items():
        lat = np.concatenate([r['lat'] for r in vrows])
        node_fps = float(np.median([r['node_fps'] for r in vrows]))
        ratio = float(np.median([r['node_fps'] / r['raw_fps'] for r in vrows]))
        node_p50, node_p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        inner = float(np.median([r['node_overhead_p50'] for r in vrows]))
        per_round = ', '.join(f"{r['node_fps'] / r['raw_fps']:.3f}" for r in vrows)
        print(f'[{label}] node {node_fps:.2f} frames/s, stamp→receive p50 {node_p50:.1f} ms, p99 {node_p99:.1f} ms '
              f'({len(lat)} frames)')
        print(f'[{label}] RATIO throughput node/raw = {ratio:.3f} (median of rounds; per round {per_round}; '
              f'goal >= 0.95)')
        print(f'[{label}] LATENCY overhead p50: node end to end {node_p50:.1f} - raw backend {raw_p50:.1f} = '
              f'{node_p50 - raw_p50:.1f} ms; per frame inside the node (stamp→publish - inference: transport in, '
              f'decode, pre/post, publish) {inner:.1f} ms (median of rounds; goal <= 3 ms)')
    load = os.getloadavg()
    print(f'load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
