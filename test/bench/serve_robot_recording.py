"""Measurement (issue 17 §3): models served by depth_node with a robot's recording replayed into it, each next to
the others in one run, scored against the generator's depth.

    .venv/bin/python test/bench/serve_robot_recording.py --model stage1=runs/x/scene/scene.onnx \
        --model final=runs/x/final/final.onnx [--seed 4242] [--frames 60] [--rate 0.5] [--out out/serve]

1. Renders one synthetic test sequence at 192x640 with its bag (`dynadepth_ros.synth`, seed --seed: a world no
   run trained on) and rewrites the bag as a robot records it (test/robot_recordings.py: jpeg CompressedImage on
   /front/image_raw/compressed, /front/camera_info, /odom, /tf_static; no masks, no depth).
2. Per model: starts depth_node (ONNX Runtime, image_transport:=compressed, remapped to the robot's topics),
   replays the robot bag into it with dynadepth-replay at --rate, recording /depth, and stops the node.
3. Scores each recorded /depth with dynadepth-eval-bag against the generator's own bag (its depth topic) with
   the sequence's moving flags: AbsRel all / static / dynamic, metric and median-scaled, and how many frames the
   node answered.
Prints one table; writes <out>/<label>/eval/report.json and <out>/summary.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import bench_env  # noqa: F401  (first: sys.path and the ROS environment)
from bench_env import REPO


def run_model(label: str, model: Path, robot_bag: Path, gen_bag: Path, sequence: Path, out: Path, rate: float) -> dict:
    from dynadepth_ros.demo import replay_through_node

    bin_dir = Path(sys.executable).parent
    d = out / label
    rec = d / 'depth_bag'
    t0 = time.perf_counter()
    try:
        replay_through_node(robot_bag, rec, ['-p', f'model_path:={model}', '-p', 'backend:=onnxruntime',
                                             '-p', 'image_transport:=compressed', '-r', 'image:=/front/image_raw',
                                             '-r', 'camera_info:=/front/camera_info'],
                            ['/front/image_raw/compressed', '/front/camera_info'], d, rate=rate)
    except RuntimeError as exc:
        raise SystemExit(f'{label}: {exc}')
    wall = time.perf_counter() - t0
    ev = subprocess.run([str(bin_dir / 'dynadepth-eval-bag'), str(gen_bag), '--prediction-bag', str(rec),
                         '--prediction-topic', '/depth', '--moving-ids-from', str(sequence), '--out', str(d / 'eval')],
                        capture_output=True, text=True, timeout=900)
    if ev.returncode != 0:
        raise SystemExit(f'{label}: evaluation failed: {ev.stdout[-800:]} {ev.stderr[-800:]}')
    report = json.loads((d / 'eval' / 'report.json').read_text())
    replay = json.loads((d / 'replay_summary.json').read_text())
    return {'model': str(model), 'report': str(d / 'eval' / 'report.json'), 'wall_s': wall, 'replay': replay,
            'metrics': report['metrics'], 'frames_scored': len(report.get('frames') or [])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', action='append', required=True, metavar='LABEL=MODEL.onnx')
    ap.add_argument('--seed', type=int, default=4242)
    ap.add_argument('--frames', type=int, default=60)
    ap.add_argument('--rate', type=float, default=0.5)
    ap.add_argument('--out', type=Path, default=REPO / 'out' / 'serve')
    a = ap.parse_args(argv)
    models = []
    for m in a.model:
        label, sep, path = m.partition('=')
        if not sep or not Path(path).is_file():
            raise SystemExit(f'--model {m!r}: expected LABEL=MODEL.onnx of an existing file')
        models.append((label, Path(path).resolve()))
    from dynadepth_ros.synth import generate_split
    from robot_recordings import rewrite_as_robot

    a.out.mkdir(parents=True, exist_ok=True)
    gen = a.out / 'generated'
    seqs = sorted(gen.glob('test/*/bag')) if gen.is_dir() else []
    if not seqs:
        seqs = [Path(s) / 'bag' for s in generate_split(gen, 'test', 1, a.frames, 192, 640, a.seed, bag=True,
                                                         storage='mcap', progress=False, workers=1)]
    gen_bag = seqs[0]
    robot = rewrite_as_robot(gen_bag, a.out / 'robot_bag')
    print(f'robot recording {robot} (jpeg, no masks, no depth) from {gen_bag} (seed {a.seed}, {a.frames} frames)')
    rows = {}
    for label, model in models:
        rows[label] = run_model(label, model, robot, gen_bag, gen_bag.parent, a.out, a.rate)
    (a.out / 'summary.json').write_text(json.dumps(rows, indent=1))
    print(f'{a.frames} frames replayed at rate {a.rate}; AbsRel metric / median-scaled against the generator\'s depth')
    print('| model | depth frames scored | all | static | dynamic |')
    print('|---|---|---|---|---|')
    for label, r in rows.items():
        m = r['metrics']

        def f(region):
            return '{:.3f} / {:.3f}'.format(m['metric'][region]['abs_rel'], m['median_scaled'][region]['abs_rel'])
        print(f'| {label} | {r["frames_scored"]} | {f("all")} | {f("static")} | {f("dynamic")} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
