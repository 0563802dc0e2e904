"""`dynadepth-model-info MODEL.onnx`: print and validate a model's dynadepth metadata (design §3).

Exit status: 0 valid, 2 invalid (the message says what is wrong and what to do), 1 other errors.

    dynadepth-model-info model.onnx                 # metadata, interface, file hash
    dynadepth-model-info model.onnx --json          # the same as JSON
    dynadepth-model-info model.onnx --run           # also run ONNX Runtime CPU once on a probe image
    dynadepth-model-info model.onnx --set dynadepth.metric=true --set dynadepth.max_depth=80
                                                    # add/replace metadata keys (validated, written atomically)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dynadepth_ros.model_format import PREFIX, REQUIRED_KEYS, ModelFormatError, ModelMetadata, read_metadata, write_metadata


def _interface(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    return {
        'opset': max((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), default=0),
        'inputs': {i.name: dims(i) for i in model.graph.input},
        'outputs': {o.name: dims(o) for o in model.graph.output},
        'producer': f'{model.producer_name} {model.producer_version}'.strip(),
        'props': {p.key: p.value for p in model.metadata_props},
    }


def _check_shape(path: Path, meta: ModelMetadata, info: dict) -> None:
    """ModelFormatError when the graph's fixed input size contradicts the metadata."""
    dims = info['inputs'].get('image') or []
    if len(dims) != 4 or dims[1] not in (3, 0, '') or any(
            isinstance(d, int) and d > 0 and d != want for d, want in zip(dims[2:], (meta.input_height, meta.input_width))):
        raise ModelFormatError(f'{path}: input image has shape {dims}, the metadata says '
                               f'[N, 3, {meta.input_height}, {meta.input_width}]; fix dynadepth.input_height/width '
                               f'or re-export')


def _set_props(path: Path, assignments: list[str]) -> ModelMetadata:
    import onnx

    updates = {}
    for a in assignments:
        key, sep, value = a.partition('=')
        if not sep:
            raise ModelFormatError(f'--set needs KEY=VALUE, got {a!r}')
        key = key if key.startswith(PREFIX) else PREFIX + key
        if key[len(PREFIX):] not in REQUIRED_KEYS:
            raise ModelFormatError(f'{key} is not a dynadepth metadata key; keys: {[PREFIX + k for k in REQUIRED_KEYS]}')
        updates[key] = value
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    props.update(updates)
    meta = ModelMetadata.from_props(props, source=str(path))       # validate before touching the file
    _check_shape(path, meta, _interface(path))
    write_metadata(path, meta)
    return meta


def _probe(path: Path, meta: ModelMetadata) -> dict:
    import numpy as np

    from dynadepth_ros.inference.backend_selection import probe_input
    from dynadepth_ros.inference.onnxruntime_backend import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(path, meta)
    out = be.run(probe_input(meta.input_height, meta.input_width))
    finite = np.isfinite(out)
    return {'output_min': float(out[finite].min()) if finite.any() else None,
            'output_max': float(out[finite].max()) if finite.any() else None,
            'nonfinite_pixels': int((~finite).sum()), 'backend': be.name}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='dynadepth-model-info', description=__doc__.split('\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument('model', type=Path, help='ONNX model file')
    ap.add_argument('--json', action='store_true', help='print JSON')
    ap.add_argument('--run', action='store_true', help='run ONNX Runtime CPU once on a probe image')
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                    help='set a dynadepth metadata key (e.g. metric=true or dynadepth.max_depth=80); repeatable')
    args = ap.parse_args(argv)
    try:
        if args.set:
            _set_props(args.model, args.set)
        meta = read_metadata(args.model)
        info = _interface(args.model)
        _check_shape(args.model, meta, info)
        from dynadepth_ros.atomic_files import file_sha256
        info.update(file=str(args.model), bytes=args.model.stat().st_size, sha256=file_sha256(args.model))
        info['metadata'] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in meta.__dict__.items()}
        if args.run:
            info['probe'] = _probe(args.model, meta)
    except ModelFormatError as exc:
        print(f'dynadepth-model-info: INVALID: {exc}', file=sys.stderr)
        return 2
    except Exception as exc:
        print(f'dynadepth-model-info: error: {type(exc).__name__}: {exc}', file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    m = meta
    fx, fy, cx, cy = m.intrinsics
    lines = [
        f'{info["file"]}  ({info["bytes"] / 1e6:.1f} MB, sha256 {info["sha256"][:16]})',
        f'  valid dynadepth model (format {m.format}), opset {info["opset"]}, producer {info["producer"] or "?"}',
        f'  input  image {info["inputs"].get("image")}   output depth {info["outputs"].get("depth")}',
        f'  input size     {m.input_width}x{m.input_height} (W x H)',
        f'  depth          {"metric, metres" if m.metric else "RELATIVE (not metres)"}, range {m.min_depth:g}..{m.max_depth:g}',
        f'  intrinsics     fx/W={fx:g} fy/H={fy:g} cx/W={cx:g} cy/H={cy:g}  '
        f'(fx={fx * m.input_width:.1f} px, fy={fy * m.input_height:.1f} px at the input size)',
        f'  stage          {m.stage}',
        f'  dataset        {m.dataset}',
        f'  config hash    {m.config_hash}',
        f'  version        {m.version}',
        f'  precision      {m.precision}',
    ]
    if m.quantization:
        try:
            q = json.loads(m.quantization)
            c = q.get('check', {})
            lines.append(f'  quantization   {q.get("format")} for {q.get("target")}, {q.get("calibration")} on '
                         f'{q.get("calibration_frames")} frames of {q.get("source")}; vs fp32 on '
                         f'{q.get("holdout_frames")} held-out frames: mean rel {c.get("abs_rel_vs_fp32", float("nan")):.4f}, '
                         f'max {c.get("max_abs_diff_m", float("nan")):.3g} m')
        except (ValueError, AttributeError):
            lines.append(f'  quantization   {m.quantization}')
    if 'probe' in info:
        p = info['probe']
        lines.append(f'  probe run      {p["backend"]}: output {p["output_min"]}..{p["output_max"]}, '
                     f'non-finite pixels {p["nonfinite_pixels"]}')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
