"""`python -m dynadepth_ros.demo --out DIR`: the project demo.

For now it shows the synthetic data the pipeline trains and evaluates on: it generates a short
sequence with its rosbag2, prints what is in it (objects by class, moving/static, frames with a
lead car, bag topics and message counts, timings) and writes a preview PNG (RGB | depth |
instance mask for a few frames, including lead-car frames).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from .dataset_layout import Sequence


DEPTH_LABEL = 'GT depth, log scale 2-100 m (sky = invalid, black)'


def colorize_depth(depth: np.ndarray, near: float = 2.0, far: float = 100.0) -> np.ndarray:
    """uint8 RGB [H,W,3] from depth float32 [H,W] metres: log depth from `near` (bright) to `far`
    (dark purple) on the magma colour map; invalid (0, sky) = black."""
    valid = depth > 0
    rel = np.log(np.clip(depth, near, far) / near) / np.log(far / near)
    scaled = np.where(valid, 1.0 - 0.82 * rel, 0.0)
    img = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)[:, :, ::-1].copy()
    img[~valid] = 0
    return img


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


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    scale = max(0.35, img.shape[0] / 480)
    cv2.putText(out, text, (5, int(16 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (5, int(16 * scale / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


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
        rows.append(np.concatenate([_label(f.rgb, tag), _label(colorize_depth(f.depth), DEPTH_LABEL),
                                    _label(colorize_mask(f.mask), 'instance ids')], axis=1))
        rows.append(np.full((3, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def write_png_atomic(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp.png')
    if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f'could not write {tmp}')
    os.replace(tmp, path)


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m dynadepth_ros.demo', description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', type=Path, default=Path('out/demo'), help='output directory (default out/demo)')
    ap.add_argument('--frames', type=int, default=60, help='frames of the synthetic sequence (default 60)')
    ap.add_argument('--height', type=int, default=192)
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    args = ap.parse_args(argv)
    try:
        info = run_synthetic_demo(args.out, args.frames, args.height, args.width, args.seed, args.storage)
    except ValueError as e:
        print(f'demo: error: {e}', file=sys.stderr)
        return 2
    print_summary(info)
    return 0


if __name__ == '__main__':
    sys.exit(main())
