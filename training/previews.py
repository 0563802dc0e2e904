"""PNG previews of what a model predicts, and a plot of the metrics log.

A stage's loss returns named preview tensors; `save_preview` shows the first batch element of
each as a labelled panel in one PNG:
    3 channels  → RGB image in [0,1] (e.g. a target or a warped source)
    2 channels  → flow in pixels, colour-coded (hue = direction, brightness = magnitude)
    1 channel   → names containing 'depth': inverse depth with the magma colour map (dynadepth_ros.colorize);
                  'disp': disparity, magma; 'mask'/'valid': grey; anything else: viridis (min–max)
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import cv2
import numpy as np

from dynadepth_ros.atomic_files import atomic_path, write_bytes_atomic
from dynadepth_ros.colorize import colorize_depth

LABEL_HEIGHT = 14


def _to_numpy(t) -> np.ndarray:
    if hasattr(t, 'detach'):
        t = t.detach().float().cpu().numpy()
    a = np.asarray(t, dtype=np.float32)
    if a.ndim == 4:
        a = a[0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f'preview tensors must be [B,C,H,W], [C,H,W] or [H,W], got shape {a.shape}')
    return a


def _colour_map(values: np.ndarray, name: str, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """float [H,W] → uint8 RGB [H,W,3] through a matplotlib colour map (robust 2–98 % range)."""
    from matplotlib import colormaps

    finite = np.isfinite(values)
    if lo is None or hi is None:
        if finite.any():
            lo, hi = np.percentile(values[finite], [2, 98])
        else:
            lo, hi = 0.0, 1.0
    if hi - lo < 1e-12:
        hi = lo + 1e-12
    x = np.clip((np.where(finite, values, lo) - lo) / (hi - lo), 0, 1)
    rgb = colormaps[name](x)[..., :3]
    return (rgb * 255).astype(np.uint8)


def colourise_depth(depth: np.ndarray) -> np.ndarray:
    """depth float [H,W] metres (<= 0 or NaN invalid) → uint8 RGB [H,W,3]: inverse depth on magma over the
    frame's robust (2–98 %) inverse-depth range, near = bright (dynadepth_ros.colorize.colorize_depth)."""
    depth = np.asarray(depth, np.float32)
    with np.errstate(divide='ignore', invalid='ignore'):
        inv = 1.0 / depth[np.isfinite(depth) & (depth > 0)]
    if not inv.size:
        return np.zeros(depth.shape + (3,), np.uint8)
    lo, hi = np.percentile(inv, [2, 98])
    hi = max(float(hi), float(lo) * (1 + 1e-6), 1e-12)
    return colorize_depth(depth, 1.0 / hi, 1.0 / max(float(lo), 1e-12), scale='inverse', colormap='magma',
                          rgb=True)


def colourise_flow(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """flow float [2,H,W] pixels → uint8 RGB [H,W,3]: hue = direction, value = magnitude.

    Zero flow is black; `max_magnitude` (default: the frame's 99th percentile, at least 1 px)
    is full brightness.
    """
    fx, fy = np.nan_to_num(flow[0]), np.nan_to_num(flow[1])
    mag = np.hypot(fx, fy)
    if max_magnitude is None:
        max_magnitude = max(1.0, float(np.percentile(mag, 99)))
    ang = (np.degrees(np.arctan2(fy, fx)) % 360.0) / 2.0      # OpenCV hue is 0..180
    hsv = np.zeros(flow.shape[1:] + (3,), dtype=np.uint8)
    hsv[..., 0] = ang.astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / max_magnitude * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def panel(name: str, tensor) -> np.ndarray:
    """One preview tensor → uint8 RGB [H,W,3] chosen by channel count and name (module docstring)."""
    a = _to_numpy(tensor)
    c = a.shape[0]
    lname = name.lower()
    if c == 3:
        return (np.clip(a.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
    if c == 2:
        return colourise_flow(a)
    if c != 1:
        raise ValueError(f'preview {name!r} has {c} channels; use 1 (map), 2 (flow) or 3 (RGB)')
    m = a[0]
    if 'depth' in lname:
        return colourise_depth(m)
    if 'disp' in lname:
        return _colour_map(m, 'magma')
    if 'mask' in lname or 'valid' in lname:
        g = (np.clip(m, 0, 1) * 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    return _colour_map(m, 'viridis')


def compose(panels: dict[str, np.ndarray], columns: int = 2) -> np.ndarray:
    """Labelled panels (uint8 RGB, any sizes) in a grid → one uint8 RGB image."""
    if not panels:
        raise ValueError('nothing to compose: no preview panels')
    h = max(p.shape[0] for p in panels.values())
    w = max(p.shape[1] for p in panels.values())
    cells = []
    for name, p in panels.items():
        cell = np.zeros((h + LABEL_HEIGHT, w, 3), dtype=np.uint8)
        cell[LABEL_HEIGHT:LABEL_HEIGHT + p.shape[0], :p.shape[1]] = p
        cv2.putText(cell, name, (2, LABEL_HEIGHT - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        cells.append(cell)
    columns = max(1, min(columns, len(cells)))
    rows = math.ceil(len(cells) / columns)
    blank = np.zeros_like(cells[0])
    cells += [blank] * (rows * columns - len(cells))
    return np.concatenate([np.concatenate(cells[r * columns:(r + 1) * columns], axis=1) for r in range(rows)], axis=0)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """uint8 RGB [H,W,3] → PNG, written atomically."""
    ok, buf = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f'could not encode preview {path}')
    write_bytes_atomic(path, buf.tobytes())


def save_preview(path: str | os.PathLike, previews: dict, columns: int = 2) -> Path:
    """Named preview tensors → one labelled PNG at `path`."""
    write_png(path, compose({k: panel(k, v) for k, v in previews.items()}, columns))
    return Path(path)


def plot_metrics(csv_path: str | os.PathLike, png_path: str | os.PathLike, max_panels: int = 24) -> Path | None:
    """Curves of every numeric column of a metrics CSV (one panel per metric, train and val; dotted
    lines where a new phase starts)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return None
    with csv_path.open(newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    skip = {'step', 'phase', 'split', 'time', 'epoch'}
    names = [k for k in rows[0].keys() if k not in skip]
    series: dict[str, dict[str, tuple[list, list]]] = {}
    for r in rows:
        for k in names:
            v = r.get(k, '')
            if v in ('', None):
                continue
            try:
                y = float(v)
            except ValueError:
                continue
            xs, ys = series.setdefault(k, {}).setdefault(r.get('split', 'train'), ([], []))
            xs.append(int(r['step']))
            ys.append(y)
    names = [k for k in names if k in series][:max_panels]
    starts, last, last_step = [], None, None          # a phase's last step is always logged
    for r in rows:
        if r.get('split', 'train') != 'train':
            continue
        if last is not None and r.get('phase') != last:
            starts.append(last_step)
        last, last_step = r.get('phase'), int(r['step'])
    if not names:
        return None
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, names):
        for split, (xs, ys) in sorted(series[k].items()):
            ax.plot(xs, ys, label=split, lw=1)
        for x in starts:
            ax.axvline(x, color='grey', lw=0.6, ls=':')
        ax.set_title(k, fontsize=9)
        ax.tick_params(labelsize=7)
        if len(series[k]) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis('off')
    fig.tight_layout()
    png_path = Path(png_path)
    try:
        with atomic_path(png_path) as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
    return png_path
