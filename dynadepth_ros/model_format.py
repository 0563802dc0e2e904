"""The exported-model contract (design §3): metadata keys, reading and validation.

ONNX file, opset >= 17; input `image` float32 [N,3,H,W] RGB in [0,1]; output `depth` float32
[N,1,H,W] (metres when metric). `metadata_props` carry the keys below, all strings.
Uses only the `onnx` package (no torch), so the node and the tools can read it.

Optional keys (absent in a plain export): `dynadepth.precision` — `int8` for a model quantized by
`python -m training quantize` (Q/DQ nodes, weights int8 per channel; absent = `fp32`) — and
`dynadepth.quantization` — a JSON string saying how it was made (target, calibration source and frames,
excluded nodes, the check against the float model). `graph_precision` tells from the graph itself whether a
model is quantized and for which runtime its Q/DQ nodes are laid out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = '1'
PREFIX = 'dynadepth.'
REQUIRED_KEYS = ('format', 'input_height', 'input_width', 'min_depth', 'max_depth', 'metric',
                 'intrinsics', 'stage', 'dataset', 'config_hash', 'version')
STAGES = ('scene', 'final')
MODEL_PRECISIONS = ('fp32', 'int8')  # dynadepth.precision (optional; absent = fp32)
OPTIONAL_KEYS = ('precision', 'quantization')
# operators only a quantized graph holds (QDQ: QuantizeLinear / DequantizeLinear; QOperator: the QLinear* family
# and the *Integer operators)
QUANTIZED_OPS = ('QuantizeLinear', 'DequantizeLinear', 'DynamicQuantizeLinear', 'QLinearConv', 'QLinearMatMul',
                 'ConvInteger', 'MatMulInteger', 'QLinearAdd', 'QLinearMul', 'QLinearConcat')
INPUT_NAME = 'image'
OUTPUT_NAME = 'depth'
MIN_OPSET = 17
MAX_INPUT_SIDE = 16384              # pixels; larger network inputs are a typo, not a model
INTRINSICS_NAMES = ('fx/W', 'fy/H', 'cx/W', 'cy/H')


class ModelFormatError(ValueError):
    """The file is not a usable dynadepth model; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class ModelMetadata:
    input_height: int
    input_width: int
    min_depth: float
    max_depth: float
    metric: bool
    intrinsics: tuple          # normalised (fx/W, fy/H, cx/W, cy/H) used in training
    stage: str
    dataset: str
    config_hash: str
    version: str
    format: str = FORMAT_VERSION
    precision: str = 'fp32'    # 'int8' for a quantized (Q/DQ) model; written only when not fp32
    quantization: str = ''     # JSON: how the int8 model was made (training/quantize.py); '' for float models

    def to_props(self) -> dict[str, str]:
        """metadata_props as {key: string value} with the `dynadepth.` prefix (the optional keys only when set)."""
        vals = {
            'format': self.format, 'input_height': str(int(self.input_height)),
            'input_width': str(int(self.input_width)), 'min_depth': repr(float(self.min_depth)),
            'max_depth': repr(float(self.max_depth)), 'metric': 'true' if self.metric else 'false',
            'intrinsics': ','.join(repr(float(v)) for v in self.intrinsics), 'stage': self.stage,
            'dataset': self.dataset, 'config_hash': self.config_hash, 'version': self.version,
        }
        if self.precision != 'fp32':
            vals['precision'] = self.precision
        if self.quantization:
            vals['quantization'] = self.quantization
        return {PREFIX + k: v for k, v in vals.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = 'model') -> 'ModelMetadata':
        """Parse and validate metadata_props; raises ModelFormatError naming every problem."""
        missing = [PREFIX + k for k in REQUIRED_KEYS if PREFIX + k not in props]
        if missing:
            raise ModelFormatError(
                f'{source}: missing dynadepth metadata {missing}. Only models exported by '
                f'`python -m training export` (or carrying the design §3 metadata) can be used; '
                f'add the keys with `dynadepth-model-info --help`.')
        g = {k: props[PREFIX + k] for k in REQUIRED_KEYS}
        problems = []
        if g['format'] != FORMAT_VERSION:
            problems.append(f'dynadepth.format is {g["format"]!r}, this release reads {FORMAT_VERSION!r}')
        h, w = (_integer(k, g[k], 1, MAX_INPUT_SIDE, problems) for k in ('input_height', 'input_width'))
        dmin, dmax = (_number(k, g[k], problems) for k in ('min_depth', 'max_depth'))
        if dmin is not None and dmax is not None and not 0 < dmin < dmax:
            problems.append(f'dynadepth.min_depth={dmin:g} and dynadepth.max_depth={dmax:g} must satisfy '
                            f'0 < min < max (metres)')
        if g['metric'] not in ('true', 'false'):
            problems.append(f'dynadepth.metric must be "true" or "false", got {g["metric"]!r}')
        intr = _intrinsics(g['intrinsics'], problems)
        if g['stage'] not in STAGES:
            problems.append(f'dynadepth.stage must be one of {STAGES}, got {g["stage"]!r}')
        precision = props.get(PREFIX + 'precision', 'fp32')
        if precision not in MODEL_PRECISIONS:
            problems.append(f'dynadepth.precision must be one of {MODEL_PRECISIONS}, got {precision!r}')
        if problems:
            raise ModelFormatError(f'{source}: invalid dynadepth metadata: ' + '; '.join(problems) + '. Re-export '
                                   'the model, or fix the key with `dynadepth-model-info MODEL --set KEY=VALUE`')
        return cls(input_height=h, input_width=w, min_depth=dmin, max_depth=dmax, metric=g['metric'] == 'true',
                   intrinsics=intr, stage=g['stage'], dataset=g['dataset'], config_hash=g['config_hash'],
                   version=g['version'], format=g['format'], precision=precision,
                   quantization=props.get(PREFIX + 'quantization', ''))


def _number(key: str, text: str, problems: list[str]) -> float | None:
    """float(text) when it is a finite number, else None with the problem (naming dynadepth.<key>) appended."""
    try:
        v = float(text)
    except ValueError:
        problems.append(f'{PREFIX}{key} is {text!r}, not a number')
        return None
    if not math.isfinite(v):
        problems.append(f'{PREFIX}{key} is {text!r}; it must be a finite number')
        return None
    return v


def _integer(key: str, text: str, lo: int, hi: int, problems: list[str]) -> int:
    """int(text) when it is an integer in [lo, hi], else 0 with the problem (naming dynadepth.<key>) appended."""
    try:
        v = int(text)
    except ValueError:
        problems.append(f'{PREFIX}{key} is {text!r}, not an integer')
        return 0
    if not lo <= v <= hi:
        problems.append(f'{PREFIX}{key}={v} must be in {lo}..{hi} (pixels)')
        return 0
    return v


def _intrinsics(text: str, problems: list[str]) -> tuple:
    """(fx/W, fy/H, cx/W, cy/H) from 'a,b,c,d': finite, focal lengths > 0, principal point inside the image
    ([0, 1]); else zeros with the problems (naming dynadepth.intrinsics and the component) appended."""
    parts = text.split(',')
    if len(parts) != 4:
        problems.append(f'dynadepth.intrinsics must be 4 numbers fx/W,fy/H,cx/W,cy/H, got {text!r}')
        return (0.0,) * 4
    n = len(problems)
    vals = []
    for name, part in zip(INTRINSICS_NAMES, parts):
        try:
            v = float(part)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            problems.append(f'dynadepth.intrinsics {name} is {part.strip()!r}; it must be a finite number')
        elif name in ('fx/W', 'fy/H') and v <= 0:
            problems.append(f'dynadepth.intrinsics {name}={v:g} must be > 0')
        elif name in ('cx/W', 'cy/H') and not 0.0 <= v <= 1.0:
            problems.append(f'dynadepth.intrinsics {name}={v:g} must be in [0, 1] (the principal point lies in '
                            f'the image)')
        vals.append(v)
    return tuple(vals) if len(problems) == n else (0.0,) * 4


def read_metadata(path: str | Path) -> ModelMetadata:
    """Validate an ONNX file's interface and metadata without loading weights into a runtime."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f'model file {path} does not exist')
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelFormatError(f'{path} is not a readable ONNX file ({type(exc).__name__}: {exc}); '
                               f're-export it or check the download') from exc
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMetadata.from_props(props, source=str(path))
    opset = max((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), default=0)
    if opset < MIN_OPSET:
        raise ModelFormatError(f'{path}: opset {opset} < {MIN_OPSET}; re-export with a newer opset')
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ModelFormatError(f'{path}: expects input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, '
                               f'found inputs {inputs} and outputs {outputs}')
    return meta


def graph_precision(model) -> tuple[str, str]:
    """(precision, layout) of an onnx.ModelProto from its operators: ('fp32', '') for a float graph, else
    ('int8', layout) with layout 'qdq-symmetric' (QuantizeLinear outputs int8 with zero point 0 everywhere: what
    TensorRT's explicit quantization accepts), 'qdq' (other Q/DQ, e.g. uint8 activations with zero points, ONNX
    Runtime's CPU fast path) or 'qoperator' (QLinearConv & co: ONNX Runtime only)."""
    from onnx import TensorProto, numpy_helper

    ops = {n.op_type for n in model.graph.node}
    if not ops & set(QUANTIZED_OPS):
        return 'fp32', ''
    if ops & (set(QUANTIZED_OPS) - {'QuantizeLinear', 'DequantizeLinear'}):
        return 'int8', 'qoperator'
    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in model.graph.node
              if n.op_type == 'Constant' and n.attribute and n.attribute[0].name == 'value'}
    symmetric = True
    for n in model.graph.node:
        if n.op_type != 'QuantizeLinear':
            continue
        zp = inits.get(n.input[2]) or consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None or zp.data_type != TensorProto.INT8 or numpy_helper.to_array(zp).any():
            symmetric = False
            break
    return 'int8', 'qdq-symmetric' if symmetric else 'qdq'


def set_metadata(model, meta: ModelMetadata) -> None:
    """Replace the dynadepth metadata of a loaded onnx.ModelProto by `meta` (other metadata kept)."""
    keep = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in meta.to_props().items():
        model.metadata_props.add(key=k, value=v)


def write_metadata(path: str | Path, meta: ModelMetadata) -> None:
    """Set the dynadepth metadata on an ONNX file in place (atomically)."""
    import onnx

    from dynadepth_ros.atomic_files import atomic_path

    model = onnx.load(str(path))
    set_metadata(model, meta)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
