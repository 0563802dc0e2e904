"""`python -m training bundle --run-dir runs/cpu-small`: install a finished run's models as the package's
bundled models (what the node uses when model_path is empty) with their training report.

    dynadepth_ros/models/dynadepth.onnx          the final network (stage 4): the node's default
    dynadepth_ros/models/dynadepth_stage1.onnx   its stage-1 network: the baseline `make demo` compares
    dynadepth_ros/models/training_report.md/json  how they were made and what they measured
    dynadepth_ros/models/dynadepth_int8.onnx     with --int8: the INT8 copy of the final network (the run's
                                                 final/final_int8.onnx: `export.int8: true` or `python -m
                                                 training quantize`), checked to be made from that final model;
                                                 or, when the run has the distill stage, its distilled network's
                                                 (distill/distill_int8.onnx, distilled from that final model)

Both ONNX files are validated (design §3 metadata, stages 'final' and 'scene', the same input size)
and the final one must come from that stage-1 model (its manifest's upstream hash). Files are
written atomically; the report quotes the manifests (config hashes, steps, wall time, export check)
and the evaluation tables the run wrote (compare_test.md, dsa/method_eval_val.md).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from dynadepth_ros.atomic_files import atomic_path, write_json_atomic, write_text_atomic
from dynadepth_ros.atomic_files import file_sha256
from dynadepth_ros.inference.estimator import BUNDLED_BASELINE, BUNDLED_INT8, BUNDLED_MODEL
from dynadepth_ros.model_format import read_metadata

MAX_BUNDLE_BYTES = 32 * 1024 * 1024


class BundleError(RuntimeError):
    """The run cannot be bundled (missing stage, mismatched models, too large)."""


def _manifest(run_dir: Path, stage: str) -> dict:
    try:
        return json.loads((run_dir / stage / 'manifest.json').read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f'{run_dir / stage} has no finished stage {stage!r} ({exc}); run '
                          f'`python -m training run --run-dir {run_dir} ...` first') from exc


def _int8_model(run_dir: Path, final_onnx: Path, final_manifest: dict) -> tuple[Path, dict]:
    """The run's INT8 final model and its quantization record: distill/distill_int8.onnx (the final network
    distilled into an INT8-friendly one, training.stages.distill) when the run has it and it was distilled from
    this final model (its manifest returned as 'distill_manifest'), else final/final_int8.onnx (None there),
    checked to be the INT8 copy of final_onnx."""
    distilled = run_dir / 'distill' / 'distill_int8.onnx'
    source, dm = final_onnx, None
    if distilled.is_file():
        dm = _manifest(run_dir, 'distill')
        if dm.get('upstream', {}).get('final') != final_manifest.get('config_hash'):
            raise BundleError(f'--int8: {distilled} was distilled from another final model than {final_onnx}; run the '
                              f'distill stage again (python -m training run ... --set distill.decoder=...)')
        int8, source = distilled, run_dir / 'distill' / 'distill.onnx'
    else:
        int8 = run_dir / 'final' / 'final_int8.onnx'
    if not int8.is_file():
        raise BundleError(f'--int8: {int8} does not exist; make it with `python -m training run ... --set '
                          f'export.int8=true` or `python -m training quantize {final_onnx} --calib DATA --out {int8}`')
    meta = read_metadata(int8)
    try:
        info = json.loads(meta.quantization)
    except ValueError:
        info = {}
    if meta.precision != 'int8' or info.get('float_model_sha256') != file_sha256(source):
        raise BundleError(f'--int8: {int8} is not the INT8 copy of {source} (precision {meta.precision}, made from '
                          f'{str(info.get("float_model_sha256"))[:16]}); quantize that model again')
    return int8, {'metadata': {k: v for k, v in meta.to_props().items() if k != 'dynadepth.quantization'},
                  'quantization': info, 'distill_manifest': dm}


def bundle(run_dir: str | Path, dest: Path | None = None, command: str = '', int8: bool = False) -> dict:
    """Copy the run's final and stage-1 ONNX models (and with `int8` the final model's INT8 copy) into the package
    (or `dest`) with a report."""
    run_dir = Path(run_dir)
    final_m, scene_m = _manifest(run_dir, 'final'), _manifest(run_dir, 'scene')
    if final_m.get('upstream', {}).get('scene') != scene_m.get('config_hash'):
        raise BundleError(f'{run_dir}/final was trained from another stage-1 model than {run_dir}/scene '
                          f'(upstream {final_m.get("upstream")}, scene {scene_m.get("config_hash")}); rerun the final stage')
    final_onnx, scene_onnx = run_dir / 'final' / 'final.onnx', run_dir / 'scene' / 'scene.onnx'
    fm, sm = read_metadata(final_onnx), read_metadata(scene_onnx)
    if fm.stage != 'final' or sm.stage != 'scene':
        raise BundleError(f'expected stages final and scene, got {fm.stage!r} and {sm.stage!r}')
    if (fm.input_height, fm.input_width) != (sm.input_height, sm.input_width):
        raise BundleError('the final and stage-1 models have different input sizes')
    int8_src, int8_info = _int8_model(run_dir, final_onnx, final_m) if int8 else (None, None)
    size = final_onnx.stat().st_size + scene_onnx.stat().st_size + (int8_src.stat().st_size if int8 else 0)
    if size > MAX_BUNDLE_BYTES:
        raise BundleError(f'the {"three" if int8 else "two"} models take {size / 2**20:.1f} MiB; the package bundles at most '
                          f'{MAX_BUNDLE_BYTES / 2**20:.0f} MiB (use a smaller width_mult)')
    model, baseline = (dest / BUNDLED_MODEL.name, dest / BUNDLED_BASELINE.name) if dest else (BUNDLED_MODEL, BUNDLED_BASELINE)
    model.parent.mkdir(parents=True, exist_ok=True)
    int8_dst = (dest / BUNDLED_INT8.name if dest else BUNDLED_INT8) if int8 else None
    for src, dst in ((final_onnx, model), (scene_onnx, baseline)) + (((int8_src, int8_dst),) if int8 else ()):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    report = {
        'bundled_at': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'run_dir': str(run_dir), 'command': command,
        'models': {model.name: {'stage': 'final', 'metadata': fm.to_props(), 'bytes': model.stat().st_size,
                                'config_hash': final_m.get('config_hash'), 'training': final_m.get('training'),
                                'export_check': (final_m.get('onnx') or {}).get('check')},
                   baseline.name: {'stage': 'scene', 'metadata': sm.to_props(), 'bytes': baseline.stat().st_size,
                                   'config_hash': scene_m.get('config_hash'), 'training': scene_m.get('training'),
                                   'export_check': (scene_m.get('onnx') or {}).get('check')}},
    }
    if int8:
        report['models'][int8_dst.name] = {'stage': 'final', 'precision': 'int8', 'bytes': int8_dst.stat().st_size,
                                           'metadata': int8_info['metadata'], 'quantization': int8_info['quantization'],
                                           'distilled': int8_info['distill_manifest'] is not None}
    tables = {}
    for name, rel in (('stage 1 vs final, test split', 'compare_test.md'),
                      ('the method on the val split', 'dsa/method_eval_val.md')):
        p = run_dir / rel
        if p.is_file():
            tables[name] = p.read_text()
    report['evaluations'] = list(tables)
    lines = [f'# Bundled models: {run_dir.name}', '',
             f'- `{model.name}`: final network (stage 4), {model.stat().st_size / 1e6:.1f} MB, input '
             f'{fm.input_width}x{fm.input_height}, {"metric" if fm.metric else "relative"}, trained on {fm.dataset}, '
             f'config {final_m.get("config_hash")}',
             f'- `{baseline.name}`: its stage-1 network (the baseline), {baseline.stat().st_size / 1e6:.1f} MB, config '
             f'{scene_m.get("config_hash")}', '']
    if int8:
        chk = int8_info['quantization'].get('check') or {}
        what = ('the final network distilled into a ReLU / zero-padding decoder (distill stage), in INT8'
                if int8_info['distill_manifest'] else 'its INT8 copy')
        lines.insert(-1, f'- `{int8_dst.name}`: {what} ({int8_info["quantization"].get("target")} layout, '
                         f'{int8_dst.stat().st_size / 1e6:.1f} MB), calibrated on '
                         f'{int8_info["quantization"].get("calibration_frames")} frames of '
                         f'{int8_info["quantization"].get("source")}; against '
                         f'{"its float model" if int8_info["distill_manifest"] else "the final model"} on '
                         f'{chk.get("frames")} held-out frames: mean relative difference '
                         f'{chk.get("abs_rel_vs_fp32", float("nan")):.4f}, largest {chk.get("max_abs_diff_m", float("nan")):.3g} m')
    if command:
        lines += ['Made with:', '', '```', command, f'python -m training bundle --run-dir {run_dir}' + (' --int8' if int8 else ''),
                  '```', '']
    distill_m = int8_info['distill_manifest'] if int8 else None
    for key, m in (('final', final_m), ('stage 1', scene_m)) + ((('distill', distill_m),) if distill_m else ()):
        t = m.get('training') or {}
        lines.append(f'- {key}: {t.get("steps")} steps of batch {t.get("batch_size")}, '
                     f'{t.get("seconds_per_step") or 0:.2f} s/step, export max relative difference to torch '
                     f'{((m.get("onnx") or {}).get("check") or {}).get("max_rel_diff", float("nan")):.1e}')
    if distill_m and (distill_m.get('agreement_val') or {}).get('frames'):
        a = distill_m['agreement_val']
        lines.append(f'- distilled ({(distill_m.get("training") or {}).get("decoder")} decoder) against the final '
                     f'network on {a["frames"]} val frames: mean |log ratio| {a["mean_abs_log_ratio"]:.4f}, '
                     f'{100 * a["within_5pct"]:.1f} % of the pixels within 5 %')
    for name, text in tables.items():
        lines += ['', f'## {name}', '', text.strip()]
    write_text_atomic(model.parent / 'training_report.md', '\n'.join(lines) + '\n')
    write_json_atomic(model.parent / 'training_report.json', report, indent=1)
    for name in ('training_report.md', 'training_report.json'):      # package data: readable by every user
        (model.parent / name).chmod(0o644)
    out = {'model': str(model), 'baseline': str(baseline), 'report': str(model.parent / 'training_report.md'),
           'bytes': size}
    if int8:
        out['int8'] = str(int8_dst)
    return out
