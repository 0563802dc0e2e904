"""Benchmark: the depth node's own per-frame overhead, with a model that costs almost nothing (the contract test
model at 192x640: one Slice, Mul, Add; ~0.5 ms), so what is measured is transport in, executor, decode,
pre/post-processing, message build and publish — not the (noisy, load-dependent) network.

    .venv/bin/python test/bench/bench_overhead.py [--rounds 4] [--rate 30] [--variant executor:=events ...] [TREE ...]

Each TREE is a checkout of this repository whose depth_node is started (PYTHONPATH=TREE) in turn, round after
round, against the same client (default: this checkout), e.g. an older commit exported with `git archive` for a
before/after comparison in one run; each --variant (node parameters) is run with every TREE. Printed per run:
client stamp→receive p50/p90/p99 of 640x192 rgb8 images published at --rate Hz (stamp = publish time), and the
node's own stamp→publish minus inference p50 per round (/diagnostics overhead_p50_ms).
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
from bench_env import REPO, node_variant  # noqa: E402
from bench_node import WORK, Client, bench_image  # noqa: E402  (also sets the ROS environment)
from test_node_graph import depth_node_cmd  # noqa: E402

sys.path.insert(0, str(REPO / 'test'))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('trees', nargs='*', type=Path, default=[REPO])
    ap.add_argument('--rounds', type=int, default=4)
    ap.add_argument('--rate', type=float, default=30.0)
    ap.add_argument('--seconds', type=float, default=5.0)
    ap.add_argument('--variant', action='append', default=[], metavar='[LABEL=]NAME:=VALUE[,NAME:=VALUE]',
                    help='node parameters to compare (repeatable), each run with every TREE; default: the defaults')
    args = ap.parse_args()
    variants = [node_variant(v) for v in args.variant] or [node_variant('')]
    runs = [(f'{tree} [{label}]' if len(variants) > 1 else str(tree), tree, params)
            for tree in args.trees for label, params in variants]
    from contract_model import make_contract_model
    model = make_contract_model(WORK / 'contract_192x640.onnx', height=192, width=640)
    print(f'model {model} (near-zero inference); 640x192 rgb8 at {args.rate:g} Hz; {args.rounds} rounds; '
          f'load average {" ".join(f"{v:.2f}" for v in os.getloadavg())}')
    client = Client()
    msg = bench_image()
    lat = {name: [] for name, _, _ in runs}
    inner = {name: [] for name, _, _ in runs}
    try:
        for _ in range(args.rounds):
            for name, tree, params in runs:
                cmd = depth_node_cmd() + [
                    '--ros-args', '-p', f'model_path:={model}', '-p', 'backend:=onnxruntime',
                    '-p', 'intra_op_threads:=2', '-r', '__node:=bench_dynadepth', '-r', 'image:=/bench/image',
                    '-r', 'depth:=/bench/depth'] + params
                proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(tree)),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    end = time.monotonic() + 30
                    while client.pub.get_subscription_count() == 0 and time.monotonic() < end:
                        time.sleep(0.05)
                    client.run(10.0, 1.5, msg)                              # warm-up
                    got = client.run(args.rate, args.seconds, msg)
                    time.sleep(1.2)
                    lat[name] += [(a - b) / 1e6 for a, b in got]
                    inner[name].append(float(client.diag.get('overhead_p50_ms', 'nan')))
                finally:
                    proc.terminate()
                    proc.wait(15)
                while client.pub.get_subscription_count() > 0:
                    time.sleep(0.05)
    finally:
        client.close()
    for name, _, _ in runs:
        a = np.array(lat[name])
        print(f'{name}: {len(a)} frames, stamp→receive p50 {np.percentile(a, 50):.2f} ms, p90 '
              f'{np.percentile(a, 90):.2f} ms, p99 {np.percentile(a, 99):.2f} ms; inside the node (stamp→publish - '
              f'inference) p50 per round {", ".join(f"{v:.2f}" for v in inner[name])} ms')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
