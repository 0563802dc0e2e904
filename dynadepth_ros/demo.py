"""`python -m dynadepth_ros.demo --out DIR`: the project demo (what `make demo` runs).

1. Generates a short synthetic driving sequence with its rosbag2 (camera, camera_info, instance
   masks, GT depth, odometry, lidar, tf_static), prints what is in it and writes a preview PNG
   (RGB | depth | instance mask, including lead-car frames).
2. The method's claim on it: the bundled stage-1 model (the baseline, or --baseline) and the bundled
   final model (or --model) side by side with the node's inference core: AbsRel / δ<1.25 on dynamic,
   lead-car, static and all pixels next to the mean-depth baseline, inference time, and a PNG strip
   RGB | stage 1 | final | GT | errors on the frames with a car ahead (DIR/stage1_vs_final.png,
   DIR/comparison.md/.json).
3. Evaluates the final model on the bag offline (bag → same core as the node): all / static / dynamic
   metrics, plots and samples under DIR/eval_offline.
4. Runs it live: starts `depth_node`, replays the bag into it over ROS 2 with `dynadepth-replay`,
   records the published depth, and evaluates the recording (DIR/eval_live), which must give the
   offline metrics, plus the stamp→publish latency.

Steps 2-4 need a model: without a bundled one, pass --model or use --skip-model.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from .atomic_files import write_png_atomic
from .datasets.layout import Sequence
from .figure_style import DEPTH_LABEL, caption, depth_figure


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """uint8 RGB [H,W,3] from an instance id map: a stable colour per id, background black, with outlines."""
    ids = mask.astype(np.uint32)
    h = (ids * np.uint32(2654435761)) >> np.uint32(8)
    hsv = np.stack([(h % 180).astype(np.uint8), np.full(ids.shape, 200, np.uint8),
                    (150 + (h >> np.uint32(8)) % 100).astype(np.uint8)], axis=-1)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    img[mask == 0] = 0
    edge = np.zeros(mask.shape, bool)
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    img[edge & (mask > 0)] = 255
    return img


def make_preview(seq: Sequence, indices: list[int], lead_id: int | None = None) -> np.ndarray:
    """uint8 RGB image: one row per frame index, columns RGB | colourised depth | instance mask."""
    rows = []
    for i in indices:
        f = seq.frame(i)
        moving = sum(x.moving for x in f.instances)
        lead = next((x for x in f.instances if x.id == lead_id), None)
        tag = f'frame {i}: {len(f.instances)} objects, {moving} moving'
        if lead is not None:
            tag += f', lead car {lead.box["center_cam"][2]:.1f} m'
        rows.append(np.concatenate([caption(f.rgb, tag), caption(depth_figure(f.depth), DEPTH_LABEL),
                                    caption(colorize_mask(f.mask), 'instance ids')], axis=1))
        rows.append(np.full((3, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def bag_summary(bag_dir: Path) -> dict[str, tuple[str, int]]:
    """topic -> (message type, message count) of a rosbag2 directory."""
    from rosbags.rosbag2 import Reader
    with Reader(bag_dir) as rd:
        return {c.topic: (c.msgtype, c.msgcount) for c in rd.connections}


def summarize(seq: Sequence) -> dict:
    """Objects by class, moving/static counts and lead-car frames of a synthetic sequence."""
    meta = json.loads((seq.path / 'synth.json').read_text())
    classes: dict[int, str] = {}
    ever_moving: set[int] = set()
    for i in range(len(seq)):
        for inst in seq.instances(i):
            classes[inst.id] = inst.cls
            if inst.moving:
                ever_moving.add(inst.id)
    return {'frames': len(seq), 'objects_by_class': dict(sorted(Counter(classes.values()).items())),
            'moving_objects': len(ever_moving), 'static_objects': len(classes) - len(ever_moving),
            'lead_car_frames': int(sum(meta['lead_frames'])), 'lead_id': meta['lead_id'],
            'lead_frame_flags': meta['lead_frames']}


def pick_preview_frames(seq: Sequence, rows: int, lead_flags: list[bool]) -> list[int]:
    """One frame from each of `rows` equal stretches of the sequence: the one with the most moving
    objects in view (a lead-car frame preferred), so the preview shows the dynamic cases."""
    score = [(sum(x.moving for x in seq.instances(i)) + 100 * bool(lead_flags[i]), -i) for i in range(len(seq))]
    edges = np.linspace(0, len(seq), rows + 1).round().astype(int)
    return [-max(score[a:b])[1] for a, b in zip(edges[:-1], edges[1:]) if b > a]


def run_synthetic_demo(out: Path, frames: int = 60, height: int = 192, width: int = 640, seed: int = 0,
                       storage: str = 'mcap', preview_rows: int = 4) -> dict:
    """Generate one synthetic sequence (+ bag) under `out`, write out/preview.png, return a summary dict."""
    from .synth import generate_split
    from .synth.generate import last_timings
    t0 = time.perf_counter()
    (path,) = generate_split(out, 'test', sequences=1, frames=frames, height=height, width=width, seed=seed,
                             bag=True, storage=storage, lead_car_fraction=1.0, workers=1, skip_existing=False)
    wall = time.perf_counter() - t0
    seq = Sequence(path)
    info = summarize(seq)
    info['bag'] = bag_summary(path / 'bag')
    info['timings_s'] = {k: round(v, 2) for k, v in last_timings().items()}
    info['wall_s'] = round(wall, 2)
    info['sequence'] = str(path)
    picks = pick_preview_frames(seq, preview_rows, info['lead_frame_flags'])
    info['preview'] = str(out / 'preview.png')
    write_png_atomic(out / 'preview.png', make_preview(seq, picks, info['lead_id']))
    return info


def print_summary(info: dict) -> None:
    print(f'sequence: {info["sequence"]}')
    print(f'frames: {info["frames"]} at 10 Hz')
    print('objects by class: ' + ', '.join(f'{k} {v}' for k, v in info['objects_by_class'].items()))
    print(f'moving objects: {info["moving_objects"]}, static objects: {info["static_objects"]}')
    print(f'frames with a lead car within 30 m: {info["lead_car_frames"]}/{info["frames"]}')
    print('bag topics:')
    for topic, (msgtype, count) in sorted(info['bag'].items()):
        print(f'  {topic:26s} {msgtype:28s} {count:5d} messages')
    t = info['timings_s']
    print(f'timings: world {t.get("build", 0):.2f} s, render {t.get("render", 0):.2f} s, write folder '
          f'{t.get("write", 0):.2f} s, lidar {t.get("lidar", 0):.2f} s, bag {t.get("bag", 0):.2f} s; '
          f'{info["frames"] / max(info["wall_s"], 1e-9):.1f} frames/s overall')
    print(f'preview: {info["preview"]}')


def _print_metrics(title: str, report: dict) -> None:
    from .metrics import format_table
    print(f'\n{title}: {report["counts"].get("evaluated", "?")} frames evaluated')
    print(format_table({mode: {r: dict(m, frames=m.get('frames', 0)) for r, m in report['metrics'][mode].items()
                               if m is not None} for mode in ('median_scaled', 'metric')}))


def _eval_bag_logged(args: list[str], log: Path) -> int:
    """dynadepth-eval-bag with its console output in `log` (the demo prints the tables itself)."""
    import contextlib

    from .recording import eval_bag
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, 'w') as f, contextlib.redirect_stdout(f):
        return eval_bag.main(args + ['--no-progress'])


def replay_through_node(bag: Path, rec: Path, node_args: list[str], wait_topics: list[str], log_dir: Path, *,
                        rate: float = 0.5, record_topics=('/depth',)) -> None:
    """Start `depth_node --ros-args NODE_ARGS`, replay `bag` into it with dynadepth-replay at `rate` (after the
    node subscribed to `wait_topics`), record `record_topics` into `rec` (replaced), stop the node (SIGINT).
    The node's log and the replay summary go to log_dir (depth_node.log, replay_summary.json); RuntimeError
    with the replay's error output when it fails."""
    import shutil

    bin_dir = Path(sys.executable).parent
    if rec.exists():
        shutil.rmtree(rec)
    log_dir.mkdir(parents=True, exist_ok=True)
    node_log = open(log_dir / 'depth_node.log', 'w')
    node = subprocess.Popen([str(bin_dir / 'depth_node'), '--ros-args', *node_args],
                            stdout=node_log, stderr=subprocess.STDOUT)
    try:
        res = subprocess.run([str(bin_dir / 'dynadepth-replay'), str(bag), '--rate', str(rate), '--record', str(rec),
                              '--record-topics', *record_topics, '--wait-subscribers', *wait_topics, '--linger', '2.0',
                              '--summary', str(log_dir / 'replay_summary.json')], capture_output=True, text=True,
                             timeout=600)
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        node_log.close()
    if res.returncode != 0:
        raise RuntimeError(f'replay through the live node failed: {res.stderr.strip()[-2000:]}\n'
                           f'(node log: {log_dir / "depth_node.log"})')


def run_model_demo(out: Path, sequence: Path, model: Path) -> tuple[dict, dict]:
    """Offline and live evaluation of `model` on the sequence's bag; returns the two report dicts."""
    bag = sequence / 'bag'
    offline = out / 'eval_offline'
    rc = _eval_bag_logged([str(bag), '--model', str(model), '--moving-ids-from', str(sequence), '--out', str(offline),
                           '--backend', 'onnxruntime'], out / 'eval_offline.log')
    if rc != 0:
        raise RuntimeError(f'offline evaluation failed (exit {rc}); see {offline}/report.json and {out}/eval_offline.log')
    rec = out / 'live_depth_bag'
    # half speed: the node is latest-frame-wins, so on a busy 2-core machine full rate would drop frames
    replay_through_node(bag, rec, ['-p', f'model_path:={model}', '-p', 'backend:=onnxruntime',
                                   '-r', 'image:=/camera/image_raw', '-r', 'camera_info:=/camera/camera_info',
                                   '-r', 'instance_mask:=/camera/instance_mask'],
                        ['/camera/image_raw', '/camera/camera_info'], out, rate=0.5,
                        record_topics=['/depth', '/camera/image_raw'])
    live = out / 'eval_live'
    rc = _eval_bag_logged([str(bag), '--prediction-bag', str(rec), '--prediction-topic', '/depth',
                           '--moving-ids-from', str(sequence), '--out', str(live)], out / 'eval_live.log')
    if rc != 0:
        raise RuntimeError(f'live evaluation failed (exit {rc}); see {live}/report.json and {out}/eval_live.log')
    return (json.loads((offline / 'report.json').read_text()), json.loads((live / 'report.json').read_text()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m dynadepth_ros.demo', description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, default=Path('out/demo'), help='output directory (default out/demo)')
    ap.add_argument('--frames', type=int, default=60, help='frames of the synthetic sequence (default 60)')
    ap.add_argument('--height', type=int, default=192)
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    ap.add_argument('--model', type=Path, help='ONNX model (default: the bundled final model)')
    ap.add_argument('--baseline', type=Path,
                    help='model to compare against (default: the bundled stage-1 model, when present)')
    ap.add_argument('--skip-model', action='store_true', help='only generate and summarise the synthetic data')
    args = ap.parse_args(argv)
    try:
        info = run_synthetic_demo(args.out, args.frames, args.height, args.width, args.seed, args.storage)
    except ValueError as e:
        print(f'demo: error: {e}', file=sys.stderr)
        return 2
    print_summary(info)
    if args.skip_model:
        return 0
    from .inference import BackendError, default_model_path
    try:
        model = args.model or default_model_path()
    except BackendError as e:
        print(f'demo: error: {e}; or run with --skip-model', file=sys.stderr)
        return 2
    from .model_format import read_metadata
    meta = read_metadata(model)
    print(f'\nmodel: {model} (stage {meta.stage}, {"metric" if meta.metric else "relative"}, '
          f'input {meta.input_width}x{meta.input_height}, trained on {meta.dataset})')
    baseline = args.baseline
    if baseline is None:
        from .inference import baseline_model_path
        try:
            baseline = baseline_model_path()
        except BackendError:
            baseline = None
    if baseline is not None:
        from .model_comparison import (OBJECT_SCALE_NOTE, comparison_table, compare_on_sequence, object_scale_table,
                                       to_json, write_strip)
        names = (read_metadata(baseline).stage or 'baseline', meta.stage or 'model')
        if names[0] == names[1]:
            names = (f'{names[0]} (baseline)', names[1])
        t0 = time.perf_counter()
        cmp = compare_on_sequence(Path(info['sequence']), {names[0]: baseline, names[1]: model})
        strip = write_strip(cmp, names[0], names[1], args.out / 'stage1_vs_final.png')
        md = (f'# {names[0]} vs {names[1]} on {cmp["sequence"]} ({cmp["frames"]} frames, {cmp["lead_frames"]} '
              f'with a car ahead; not trained on: test split)\n\n## metric depth\n\n'
              + comparison_table(cmp, *names) + '\n\n## median-scaled\n\n'
              + comparison_table(cmp, *names, mode='median_scaled') + '\n\n## per-object scale\n\n'
              + OBJECT_SCALE_NOTE + '\n\n' + object_scale_table(cmp, *names))
        (args.out / 'comparison.md').write_text(md)
        (args.out / 'comparison.json').write_text(json.dumps(to_json(cmp), indent=1))
        print(f'\n{names[0]} ({baseline.name}) vs {names[1]} ({model.name}), metric depth, dynamic pixels first '
              f'(lead = the car ahead in the ego lane):')
        print(comparison_table(cmp, *names))
        print('\nper-object scale (median over each object of prediction / GT; moving / static = 1 when moving '
              'objects get the scene\'s scale):')
        print(object_scale_table(cmp, *names), end='')
        for n in names:
            t = cmp['models'][n]['inference_ms']
            print(f'{n}: {t["p50"]:.1f} ms per frame (p50, inference core on {cmp["models"][n]["backend"]}, '
                  f'preprocess + model + postprocess)')
        print(f'strip: {strip}; tables: {args.out / "comparison.md"} ({time.perf_counter() - t0:.0f} s)')
    try:
        offline, live = run_model_demo(args.out, Path(info['sequence']), model)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f'demo: error: {e}', file=sys.stderr)
        return 1
    _print_metrics('offline evaluation (ONNX Runtime, same core as the node)', offline)
    _print_metrics('live evaluation (depth_node over ROS 2, recorded)', live)
    lat = live.get('latency_ms') or {}
    if lat:
        print(f'\nlive stamp→publish latency: p50 {lat.get("p50", float("nan")):.1f} ms, '
              f'p99 {lat.get("p99", float("nan")):.1f} ms over {lat.get("count", 0)} frames')
    print(f'reports: {args.out / "eval_offline" / "report.md"}, {args.out / "eval_live" / "report.md"}; '
          f'strips: {args.out / "eval_offline" / "samples.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
