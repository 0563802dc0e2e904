"""Evaluation report files: report.json (machine-readable), report.md (for people) and PNG plots.

    write_report(out_dir, report, samples)
      out_dir/report.json          the report dict (metrics.<median_scaled|metric>.<all|static|dynamic>.<metric>, counts, ...)
      out_dir/report.md            the same as tables, with the plots embedded
      out_dir/frames.csv           per-frame AbsRel and median scale over time
      out_dir/error_by_distance.png   AbsRel and RMSE per GT-distance bin (all / static / dynamic)
      out_dir/abs_rel_over_time.png   per-frame AbsRel against the frame stamp
      out_dir/samples.png          strips RGB | prediction | GT | AbsRel error for a few frames

Every file is written to a temporary name and renamed into place, so a reader never sees half a report.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np

from dynadepth_ros.atomic_files import write_bytes_atomic
from dynadepth_ros.colorize import colorize, colorize_depth
from dynadepth_ros.metrics import MAX_DEPTH, METRIC_NAMES, MODES

REGIONS = ('all', 'static', 'dynamic')
PLOTS = ('error_by_distance.png', 'abs_rel_over_time.png', 'samples.png')



def _json_safe(obj):
    """Floats NaN/inf → None, numpy scalars/arrays → Python, tuples → lists (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def distribution(values_ms) -> dict:
    """{'count', 'mean', 'p50', 'p90', 'p99', 'max', 'min'} of a list of milliseconds."""
    v = np.asarray(list(values_ms), dtype=np.float64)
    if v.size == 0:
        return {'count': 0}
    return {'count': int(v.size), 'mean': float(v.mean()), 'min': float(v.min()),
            'p50': float(np.percentile(v, 50)), 'p90': float(np.percentile(v, 90)),
            'p99': float(np.percentile(v, 99)), 'max': float(v.max())}


# ---- tables --------------------------------------------------------------------------------
def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return '–'
    if isinstance(v, float):
        return f'{v:.{digits}f}'
    return str(v)


def metrics_table_md(metrics: dict) -> str:
    head = '| mode | region | frames | ' + ' | '.join(METRIC_NAMES) + ' |'
    lines = [head, '|' + '---|' * (3 + len(METRIC_NAMES))]
    for mode in MODES:
        for region in REGIONS:
            m = (metrics.get(mode) or {}).get(region)
            if m is None:
                lines.append(f'| {mode} | {region} | 0 | ' + ' | '.join('–' for _ in METRIC_NAMES) + ' |')
            else:
                lines.append(f'| {mode} | {region} | {m["frames"]} | ' + ' | '.join(_fmt(m[k]) for k in METRIC_NAMES) + ' |')
    return '\n'.join(lines)


def format_summary(report: dict) -> str:
    """Plain-text summary for the console: status, counts, the metrics table, speed."""
    from dynadepth_ros.metrics import format_table

    c = report.get('counts', {})
    metrics = {m: {r: v for r, v in (report.get('metrics', {}).get(m) or {}).items() if v is not None} for m in MODES}
    lines = [f'status: {report.get("status")}' + (f' ({report["error"]})' if report.get('error') else ''),
             f'frames: {c.get("evaluated", 0)} evaluated of {c.get("planned", 0)} planned; pairs {c.get("pairs", 0)}, '
             f'unmatched {c.get("unmatched", {})}, skipped {c.get("skipped", {})}',
             format_table(metrics)]
    t = report.get('timing', {})
    if t.get('frames_per_s') is not None:
        lines.append(f'speed: {t["frames_per_s"]:.1f} frames/s ({t.get("loop_seconds", t["seconds"]):.1f} s '
                     f'evaluating, {t["seconds"]:.1f} s in total)')
    lat = report.get('latency_ms')
    if lat and lat.get('count'):
        lines.append(f'latency image→depth: p50 {lat["p50"]:.1f} ms, p90 {lat["p90"]:.1f} ms, max {lat["max"]:.1f} ms '
                     f'({lat["count"]} frames)')
    return '\n'.join(lines)


def report_markdown(report: dict, plots: list[str]) -> str:
    c = report.get('counts', {})
    src = report.get('source', {})
    model = report.get('model', {})
    settings = report.get('settings', {})
    out = ['# dynadepth evaluation report', '']
    status = report.get('status')
    out.append(f'- status: **{status}**' + (f' — {report["error"]}' if report.get('error') else ''))
    out.append(f'- created: {report.get("created")} by {report.get("tool")} {report.get("version")}')
    if 'bag' in src:
        out.append(f'- bag: `{src["bag"]}`; ground truth: {src.get("gt")} (`{src.get("topics", {}).get("gt")}`)')
    if 'dataset' in src:
        out.append(f'- dataset: `{src["dataset"]}` ({src.get("layout")}, split {src.get("split")})')
    if 'path' in model:
        meta = model.get('metadata') or {}
        out.append(f'- model: `{model["path"]}` on {model.get("backend")} (metric: {meta.get("metric")}, '
                   f'input {meta.get("input_width")}x{meta.get("input_height")})')
    elif model.get('prediction_topic'):
        out.append(f'- prediction: recorded topic `{model["prediction_topic"]}` from `{model.get("prediction_bag")}`')
    out.append(f'- depth range: ({settings.get("min_depth")}, {settings.get("max_depth")}) m; '
               f'dynamic pixels: {report.get("dynamic_definition")}')
    out += ['', '## Counts', '',
            f'- frames evaluated: {c.get("evaluated", 0)} of {c.get("planned", 0)} planned '
            f'({c.get("pairs", 0)} image/GT pairs)',
            f'- unmatched: {c.get("unmatched") or "none"}',
            f'- skipped: {c.get("skipped") or "none"}']
    for ex in c.get('skip_examples', [])[:5]:
        out.append(f'  - {ex}')
    t = report.get('timing', {})
    if t.get('frames_per_s') is not None:
        inf = t.get('inference_ms_mean')
        out.append(f'- speed: {t["frames_per_s"]:.2f} frames/s ({t.get("loop_seconds", t["seconds"]):.1f} s '
                   f'evaluating, {t["seconds"]:.1f} s in total'
                   + (f', inference {inf:.1f} ms/frame' if inf else '') + ')')
    out += ['', '## Metrics', '', 'Per frame, then averaged over frames (Eigen). Median-scaled: one ratio '
            'median(GT)/median(prediction) per frame from all valid pixels, applied to every region.', '',
            metrics_table_md(report.get('metrics', {}))]
    scale = report.get('scale') or {}
    if scale.get('median_gt_over_pred') is not None:
        out += ['', f'Median scale GT/prediction: {scale["median_gt_over_pred"]:.4f} '
                    f'(std {scale["std"]:.4f} over {scale["frames"]} frames).']
    bd = report.get('by_distance') or {}
    if bd.get('bins'):
        out += ['', '## By distance (AbsRel, all pixels)', '',
                '| bin (m) | ' + ' | '.join(f'{m} frames | {m} abs_rel | {m} rmse' for m in MODES) + ' |',
                '|' + '---|' * (1 + 3 * len(MODES))]
        for i, (lo, hi) in enumerate(bd['bins']):
            cells = []
            for m in MODES:
                v = bd.get(m, {}).get('all', [None] * len(bd['bins']))[i]
                cells += ['0', '–', '–'] if v is None else [str(v['frames']), _fmt(v['abs_rel']), _fmt(v['rmse'], 3)]
            out.append(f'| {lo:g}–{hi:g} | ' + ' | '.join(cells) + ' |')
    lat = report.get('latency_ms')
    if lat and lat.get('count'):
        out += ['', '## Latency (image → depth, receive times in the recording)', '',
                f'p50 {lat["p50"]:.1f} ms, p90 {lat["p90"]:.1f} ms, p99 {lat["p99"]:.1f} ms, max {lat["max"]:.1f} ms, '
                f'mean {lat["mean"]:.1f} ms over {lat["count"]} frames.']
    if plots:
        out += ['', '## Plots', '']
        out += [f'![{p}]({p})' for p in plots]
    return '\n'.join(out) + '\n'


# ---- plots ---------------------------------------------------------------------------------
def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=100, bbox_inches='tight')
    return buf.getvalue()


def plot_error_by_distance(report: dict) -> bytes | None:
    bd = report.get('by_distance') or {}
    bins = bd.get('bins') or []
    if not bins:
        return None
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    mids = [(lo + hi) / 2 for lo, hi in bins]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    drew = False
    for col, mode in enumerate(MODES):
        for row, metric in enumerate(('abs_rel', 'rmse')):
            ax = axes[row, col]
            for region, style in zip(REGIONS, ('o-', 's--', '^:')):
                vals = [None if v is None else v[metric] for v in bd.get(mode, {}).get(region, [])]
                if any(v is not None for v in vals):
                    ax.plot(mids, [np.nan if v is None else v for v in vals], style, label=region)
                    drew = True
            ax.set_title(f'{mode}: {metric}')
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel('ground-truth distance (m, bin centre)')
            ax.set_ylabel('AbsRel' if metric == 'abs_rel' else 'RMSE (m)')
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
    fig.suptitle('Error by distance')
    data = _figure_png(fig)
    plt.close(fig)
    return data if drew else None


def plot_abs_rel_over_time(report: dict) -> bytes | None:
    frames = report.get('frames') or []
    if not frames:
        return None
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    t0 = frames[0]['stamp']
    t = np.array([f['stamp'] - t0 for f in frames])
    fig, ax = plt.subplots(figsize=(11, 4))
    for key, style in (('median_scaled.all.abs_rel', '-'), ('metric.all.abs_rel', '-'),
                       ('median_scaled.dynamic.abs_rel', ':'), ('metric.dynamic.abs_rel', ':')):
        vals = np.array([np.nan if f.get(key) is None else f[key] for f in frames], dtype=float)
        if np.isfinite(vals).any():
            ax.plot(t, vals, style, marker='.', markersize=3, label=key.replace('.abs_rel', ''))
    ax.set_xlabel('time since first frame (s)')
    ax.set_ylabel('AbsRel')
    ax.set_title('AbsRel per frame')
    ax.grid(alpha=0.3)
    ax.legend()
    data = _figure_png(fig)
    plt.close(fig)
    return data


def sample_strip(rgb: np.ndarray, pred: np.ndarray, gt: np.ndarray, max_depth: float, height: int = 160) -> np.ndarray:
    """uint8 [h, 4w, 3] RGB strip: image | prediction | GT | AbsRel error (0..0.5), all at GT size."""
    h, w = gt.shape
    rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA) if rgb.shape[:2] != (h, w) else rgb
    gt_valid = np.where(np.isfinite(gt) & (gt > 0) & (gt < max_depth), gt, np.nan).astype(np.float32)
    if np.isfinite(gt_valid).mean() < 0.3:   # sparse (lidar) GT: thicken points so they show
        gt_show = cv2.dilate(np.nan_to_num(gt_valid, nan=0.0), np.ones((3, 3), np.uint8))
        gt_show = np.where(gt_show > 0, gt_show, np.nan)
    else:
        gt_show = gt_valid
    finite = np.concatenate([gt_valid[np.isfinite(gt_valid)], pred[np.isfinite(pred)]])
    hi = max(float(np.percentile(finite, 95)), 1e-6) if finite.size else max_depth
    with np.errstate(invalid='ignore', divide='ignore'):
        err = np.abs(pred - gt_valid) / gt_valid
    tiles = [rgb, colorize_depth(pred, 0.0, hi, scale='linear', colormap='magma', rgb=True),
             colorize_depth(gt_show, 0.0, hi, scale='linear', colormap='magma', rgb=True),
             colorize(err, 0.0, 0.5, 'jet', rgb=True)]
    strip = np.concatenate(tiles, axis=1)
    scale = height / h
    return cv2.resize(strip, (int(round(strip.shape[1] * scale)), height), interpolation=cv2.INTER_NEAREST)


def samples_png(samples: list[dict], max_depth: float) -> bytes | None:
    if not samples:
        return None
    rows = []
    for s in samples:
        strip = sample_strip(s['rgb'], s['pred'], s['gt'], max_depth)
        label = f'{s["key"]}   RGB | prediction (metric) | GT | AbsRel 0..0.5'
        cv2.putText(strip, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(strip)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    ok, buf = cv2.imencode('.png', cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return buf.tobytes() if ok else None


def write_frames_csv(path: Path, frames: list[dict]) -> None:
    buf = io.StringIO()
    keys = ['key', 'stamp', 'scale', 'valid_pixels'] + [f'{m}.{r}.abs_rel' for m in MODES for r in REGIONS]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction='ignore')
    w.writeheader()
    for f in frames:
        w.writerow({k: ('' if f.get(k) is None else f[k]) for k in keys})
    write_bytes_atomic(path, buf.getvalue().encode())


def write_report(out_dir, report: dict, samples: list[dict] | None = None) -> list[Path]:
    """Write report.json, report.md, frames.csv and the PNG plots; returns the files written.

    A plot that fails is noted in report['plot_errors'] instead of losing the report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_depth = float((report.get('settings') or {}).get('max_depth', MAX_DEPTH))
    written, plots, errors = [], [], {}
    for name, make in (('error_by_distance.png', lambda: plot_error_by_distance(report)),
                       ('abs_rel_over_time.png', lambda: plot_abs_rel_over_time(report)),
                       ('samples.png', lambda: samples_png(samples or [], max_depth))):
        try:
            data = make()
        except Exception as exc:  # a plot must never cost the numbers
            errors[name] = f'{type(exc).__name__}: {exc}'
            continue
        if data:
            write_bytes_atomic(out / name, data)
            plots.append(name)
            written.append(out / name)
    report['plots'] = plots
    if errors:
        report['plot_errors'] = errors
    write_frames_csv(out / 'frames.csv', report.get('frames') or [])
    write_bytes_atomic(out / 'report.json', json.dumps(_json_safe(report), indent=1, allow_nan=False).encode())
    write_bytes_atomic(out / 'report.md', report_markdown(report, plots).encode())
    return written + [out / 'frames.csv', out / 'report.json', out / 'report.md']
