"""`python -m training quantize MODEL.onnx --calib DATA --out OUT.onnx`: a static INT8 copy of a design §3
model, calibrated on the user's own frames, checked against the float model before it is written.

    python -m training quantize runs/x/final/final.onnx --calib data/robot --split train --out final_int8.onnx
    python -m training quantize final.onnx --calib run1.mcap --image-topic /camera/image_raw --out final_int8.onnx
    python -m training quantize final.onnx --calib data/robot --target tensorrt --out final_int8_trt.onnx

Format: QDQ (QuantizeLinear / DequantizeLinear pairs around float operators), weights int8 per output channel,
activations per tensor from the calibration frames (MinMax by default; --calibration entropy|percentile).
QDQ is the one format both runtimes take: ONNX Runtime CPU fuses the pairs into integer kernels (QLinearConv on
VNNI) and TensorRT builds an explicitly quantized engine from them (no calibrator). The two want different
activation types, so --target picks one:

    cpu       uint8 activations with zero points, int8 weights (U8S8): ONNX Runtime's fast x86 path (VNNI)
    tensorrt  int8 activations and weights, symmetric (zero point 0): TensorRT accepts only that; ONNX Runtime
              CPU runs it too, but slower than the float model (measured: docs/models.md, "INT8 models")

--format qoperator (with --target cpu only) writes ONNX Runtime's QOperator form instead (QLinearConv & co):
faster on ONNX Runtime CPU than QDQ (measured 1.43-1.57x the float model against QDQ's 1.30-1.38x on the bundled
model), but TensorRT cannot build it, and the node's TensorRT backend refuses it with that reason.

Calibration frames: a dataset folder in the fixed layout (dynadepth_ros.datasets: synthetic / kitti /
cityscapes, --layout, --split) or a rosbag2 (--image-topic; read with dynadepth_ros.recording.bag_reader,
decoded with the node's image codec). Every frame is preprocessed by the node's own functions
(dynadepth_ros.inference.preprocess: plan_crop with the node's aspect_tolerance, then to_model_input), so the
ranges are those the deployed node feeds the network. --frames frames evenly spaced over the source calibrate;
--holdout further frames, interleaved with them and never used to calibrate, are the check.

Check (nothing is written when it fails, unless --force): on the held-out frames the INT8 and FP32 models' depth
is compared pixel by pixel: `abs_rel_vs_fp32` = mean |d_int8 - d_fp32| / d_fp32 must be <= --max-abs-rel
(default 0.03) and no pixel may be non-finite where FP32 is finite. Reported with it: the p99 relative
difference, the largest depth difference (metres) and, where the source has ground truth, AbsRel of both models
against it (metric, all valid pixels at the network resolution) and the relative change.

The written model keeps the design §3 metadata and adds `dynadepth.precision=int8` and `dynadepth.quantization`
(JSON: target, format, calibration method, source, frames, excluded nodes, the check); it is written atomically.
Refused with one line, nothing written: a model without the design §3 metadata, a model already quantized, a
source with too few frames (MIN_CALIBRATION_FRAMES to calibrate + MIN_HOLDOUT_FRAMES held out), frames of
different sizes in one source.

Nodes left in float, decided by measurement on the bundled final model (docs/models.md "INT8 models", issue 19 note):
by default `depth-out`, the elementwise sigmoid-disparity -> depth conversion after the last convolution. Its
output is metres over 0.1..100 m: one uint8 scale for that range is ~0.4 m a step, and quantizing it doubled the
difference to FP32 (mean 0.020 -> 0.012, largest 9.8 m -> 2.2 m) while costing no measurable time (four
elementwise nodes on one channel). Kept int8, because float there cost time for no accuracy: the first
convolution (1.10x instead of 1.36x, the difference to FP32 unchanged) and the input normalisation. The last
convolution (`head`) in float lowers the difference a little further (0.0098) but was slower in two of three
runs. --exclude adds node names, operator types or the aliases `first-conv`, `head` (the last convolution and
what follows), `depth-out`, `input-norm` (what precedes the first convolution); --no-default-exclude quantizes
the depth conversion too.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dynadepth_ros.atomic_files import atomic_path, file_sha256
from dynadepth_ros.camera import resize_nearest
from dynadepth_ros.inference.preprocess import plan_crop, to_model_input
from dynadepth_ros.metrics import evaluate_frame
from dynadepth_ros.model_format import (INPUT_NAME, OUTPUT_NAME, ModelFormatError, ModelMetadata, graph_precision,
                                        read_metadata, set_metadata)

TARGETS = ('cpu', 'tensorrt')
FORMATS = ('qdq', 'qoperator')
METHODS = ('minmax', 'entropy', 'percentile')
DEFAULT_FRAMES = 64
DEFAULT_HOLDOUT = 16
MIN_CALIBRATION_FRAMES = 16
MIN_HOLDOUT_FRAMES = 4
DEFAULT_MAX_ABS_REL = 0.03
NODE_ASPECT_TOLERANCE = 0.05     # the node parameter aspect_tolerance's default
EXCLUDE_ALIASES = ('first-conv', 'head', 'depth-out', 'input-norm', 'full-res')
DEFAULT_EXCLUDE = ('depth-out',)


class QuantizeError(ValueError):
    """The model or the calibration source cannot be used, or the INT8 model departs too far from FP32."""


@dataclass
class CalibrationFrames:
    """Preprocessed frames of one source: `calib` float32 [k,3,H,W] and `holdout` float32 [m,3,H,W] RGB in [0,1]
    (the model input), `holdout_gt`: per held-out frame float32 [H,W] metres at the model input (0 = invalid) or
    None; `source`: what they came from; `frame_size`: (h, w) of the source frames."""

    calib: np.ndarray
    holdout: np.ndarray
    holdout_gt: list = field(default_factory=list)
    source: str = ''
    frame_size: tuple = (0, 0)

    def describe(self) -> str:
        return (f'{len(self.calib)} calibration + {len(self.holdout)} held-out frames of {self.source} '
                f'({self.frame_size[1]}x{self.frame_size[0]})')


def pick_frames(available: int, frames: int, holdout: int, where: str) -> tuple[list[int], list[int]]:
    """(calibration indices, held-out indices) into `available` frames: frames + holdout evenly spaced over the
    source (all when there are fewer), every n-th of them held out; QuantizeError when there are too few."""
    need = MIN_CALIBRATION_FRAMES + MIN_HOLDOUT_FRAMES
    if available < need:
        raise QuantizeError(f'{where} has {available} frame(s); calibration needs at least {need} '
                            f'({MIN_CALIBRATION_FRAMES} to calibrate, {MIN_HOLDOUT_FRAMES} held out to check)')
    frames, holdout = max(frames, MIN_CALIBRATION_FRAMES), max(holdout, MIN_HOLDOUT_FRAMES)
    total = min(available, frames + holdout)
    n_hold = max(MIN_HOLDOUT_FRAMES, round(total * holdout / (frames + holdout)))
    picked = np.unique(np.linspace(0, available - 1, total).round().astype(int)).tolist()
    step = len(picked) / n_hold
    hold_pos = {min(len(picked) - 1, int(step * (k + 0.5))) for k in range(n_hold)}
    return ([p for j, p in enumerate(picked) if j not in hold_pos], [p for j, p in enumerate(picked) if j in hold_pos])


class _Preprocessor:
    """The node's preprocessing of a stream of frames of one size (mixed sizes: QuantizeError)."""

    def __init__(self, height: int, width: int, aspect_tolerance: float, where: str):
        self.height, self.width, self.aspect_tolerance, self.where = height, width, aspect_tolerance, where
        self.plan = None

    def __call__(self, rgb: np.ndarray, what: str) -> np.ndarray:
        if self.plan is None:
            self.plan = plan_crop(rgb.shape[0], rgb.shape[1], self.height, self.width, self.aspect_tolerance)
        elif rgb.shape[:2] != (self.plan.src_h, self.plan.src_w):
            raise QuantizeError(f'{self.where}: {what} is {rgb.shape[1]}x{rgb.shape[0]}, the first frame was '
                                f'{self.plan.src_w}x{self.plan.src_h}; calibrate on the frames of one camera at the '
                                f'size the node receives')
        return to_model_input(rgb, self.plan)

    def gt(self, depth: np.ndarray | None) -> np.ndarray | None:
        """GT depth [h,w] at the source size → float32 [H,W] at the model input (crop window, nearest)."""
        if depth is None or self.plan is None:
            return None
        p = self.plan
        depth = np.asarray(depth, np.float32)
        if depth.shape != (p.src_h, p.src_w):
            depth = resize_nearest(depth, p.src_h, p.src_w)
        return resize_nearest(np.ascontiguousarray(depth[p.y0:p.y0 + p.crop_h, p.x0:p.x0 + p.crop_w]),
                              p.model_h, p.model_w)

    @property
    def frame_size(self) -> tuple:
        return (self.plan.src_h, self.plan.src_w) if self.plan else (0, 0)


def frames_from_source(source, height: int, width: int, *, frames: int = DEFAULT_FRAMES,
                       holdout: int = DEFAULT_HOLDOUT, aspect_tolerance: float = NODE_ASPECT_TOLERANCE,
                       name: str = '') -> CalibrationFrames:
    """CalibrationFrames of a dynadepth_ros.datasets FrameSource (every sequence's sample_indices, in order)."""
    where = name or repr(source)
    items = [(seq, i) for seq in source.sequences() for i in seq.sample_indices()]
    calib_idx, hold_idx = pick_frames(len(items), frames, holdout, where)
    prep = _Preprocessor(height, width, aspect_tolerance, where)
    def load(k):
        seq, i = items[k]
        return prep(seq.rgb(i), f'{seq.name} frame {i}')
    calib = np.stack([load(k) for k in calib_idx])
    hold = np.stack([load(k) for k in hold_idx])
    gts = [prep.gt(items[k][0].gt_depth(items[k][1])) for k in hold_idx]
    return CalibrationFrames(calib, hold, gts, where, prep.frame_size)


def frames_from_bag(path: str | Path, image_topic: str, height: int, width: int, *, frames: int = DEFAULT_FRAMES,
                    holdout: int = DEFAULT_HOLDOUT, aspect_tolerance: float = NODE_ASPECT_TOLERANCE
                    ) -> CalibrationFrames:
    """CalibrationFrames of the Image / CompressedImage messages on `image_topic` of a rosbag2 (decoded with the
    node's image codec; only the picked messages are deserialised)."""
    from dynadepth_ros.image_codec import ImageFormatError
    from dynadepth_ros.recording.bag_reader import BagReader, image_msg_rgb

    where = f'{path} {image_topic}'
    with BagReader(path) as bag:
        bag.require([image_topic])
        count = bag.topics[image_topic][1]
        calib_idx, hold_idx = pick_frames(count, frames, holdout, where)
        wanted = {k: ('hold' if k in set(hold_idx) else 'calib') for k in calib_idx + hold_idx}
        prep = _Preprocessor(height, width, aspect_tolerance, where)
        out = {'calib': [], 'hold': []}
        for k, (_topic, msgtype, _t, raw) in enumerate(bag.raw_messages([image_topic])):
            if k not in wanted:
                continue
            try:
                rgb = image_msg_rgb(bag.deserialize(raw, msgtype, image_topic))
            except ImageFormatError as exc:
                raise QuantizeError(f'{where}: message {k} cannot be used as a camera image: {exc}') from exc
            out[wanted[k]].append(prep(rgb, f'message {k}'))
    if len(out['calib']) + len(out['hold']) < len(wanted):
        raise QuantizeError(f'{where}: the bag index lists {count} messages but fewer could be read; re-index it')
    return CalibrationFrames(np.stack(out['calib']), np.stack(out['hold']), [None] * len(out['hold']), where,
                             prep.frame_size)


def is_bag(path: Path) -> bool:
    return path.suffix in ('.mcap', '.db3') or (path.is_dir() and (path / 'metadata.yaml').is_file())


def open_calibration(path: str | Path, height: int, width: int, *, image_topic: str | None = None,
                     layout: str = 'synthetic', split: str = 'train', frames: int = DEFAULT_FRAMES,
                     holdout: int = DEFAULT_HOLDOUT, aspect_tolerance: float = NODE_ASPECT_TOLERANCE
                     ) -> CalibrationFrames:
    """CalibrationFrames of a rosbag2 (needs image_topic) or a dataset folder (layout, split)."""
    from dynadepth_ros.datasets import DatasetError, open_source

    path = Path(path)
    if not path.exists():
        raise QuantizeError(f'calibration source {path} does not exist')
    if is_bag(path):
        if not image_topic:
            raise QuantizeError(f'{path} is a rosbag2: name the camera topic with --image-topic')
        return frames_from_bag(path, image_topic, height, width, frames=frames, holdout=holdout,
                               aspect_tolerance=aspect_tolerance)
    if image_topic:
        raise QuantizeError(f'{path} is not a rosbag2 (no metadata.yaml, not .mcap/.db3); --image-topic applies '
                            f'to bags only')
    try:
        source = open_source(layout, path, split)
    except DatasetError as exc:
        raise QuantizeError(f'calibration source: {exc}') from exc
    return frames_from_source(source, height, width, frames=frames, holdout=holdout,
                              aspect_tolerance=aspect_tolerance, name=f'{path} ({layout}, split {split})')


def resolve_excludes(model, names) -> list[str]:
    """Node names for --exclude entries: a node name, an operator type (all its nodes), or an alias: `first-conv`
    (the first Conv in graph order), `head` (the last Conv and every node after it), `depth-out` (every node after
    the last Conv: the sigmoid disparity -> depth conversion), `input-norm` (every node before the first Conv: the
    input normalisation), `full-res` (every node after the last Resize: the decoder's full-resolution level, few
    channels over many pixels, where int8 convolutions are slower than float ones). QuantizeError for others."""
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == 'Conv']
    out: list[str] = []
    for name in names:
        if name == 'first-conv' and convs:
            out.append(nodes[convs[0]].name)
        elif name == 'head' and convs:
            out += [n.name for n in nodes[convs[-1]:]]
        elif name == 'depth-out' and convs:
            out += [n.name for n in nodes[convs[-1] + 1:]]
        elif name == 'input-norm' and convs:
            out += [n.name for n in nodes[:convs[0]]]
        elif name == 'full-res' and any(n.op_type == 'Resize' for n in nodes):
            last = max(i for i, n in enumerate(nodes) if n.op_type == 'Resize')
            out += [n.name for n in nodes[last + 1:]]
        elif any(n.name == name for n in nodes):
            out.append(name)
        elif any(n.op_type == name for n in nodes):
            out += [n.name for n in nodes if n.op_type == name]
        else:
            raise QuantizeError(f'--exclude {name!r} is no node name, operator type or alias {EXCLUDE_ALIASES} of '
                                f'this model')
    return list(dict.fromkeys(out))


def _session(model, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    data = model.SerializeToString() if hasattr(model, 'SerializeToString') else str(model)
    return ort.InferenceSession(data, so, providers=['CPUExecutionProvider'])


def compare_depth(fp32: np.ndarray, int8: np.ndarray, gts: list, min_depth: float) -> dict:
    """The check of int8 against fp32 depth (float32 [m,1,H,W] each) and, where given, against GT."""
    f = fp32.astype(np.float64)
    q = int8.astype(np.float64)
    ok = np.isfinite(f)
    nonfinite = int(np.count_nonzero(ok & ~np.isfinite(q)))
    both = ok & np.isfinite(q)
    diff = np.abs(q[both] - f[both])
    rel = diff / np.maximum(np.abs(f[both]), min_depth)
    out = {'frames': int(len(f)), 'abs_rel_vs_fp32': float(rel.mean()) if rel.size else float('inf'),
           'p99_rel_vs_fp32': float(np.percentile(rel, 99)) if rel.size else float('inf'),
           'max_abs_diff_m': float(diff.max()) if diff.size else float('inf'), 'nonfinite': nonfinite}
    with_gt = [(g, i) for i, g in enumerate(gts) if g is not None]
    if with_gt:
        ar = {'fp32': [], 'int8': []}
        for g, i in with_gt:
            for name, d in (('fp32', fp32), ('int8', int8)):
                m = evaluate_frame(g, d[i, 0])['metric']['all']
                if m is not None:
                    ar[name].append(m['abs_rel'])
        if ar['fp32']:
            a, b = float(np.mean(ar['fp32'])), float(np.mean(ar['int8']))
            out['gt'] = {'frames': len(ar['fp32']), 'abs_rel_fp32': a, 'abs_rel_int8': b,
                         'abs_rel_change': b / a - 1.0 if a > 0 else float('nan')}
    return out


def _quantize_graph(src: Path, tmp: Path, frames: CalibrationFrames, target: str, method: str,
                    per_channel: bool, exclude: list[str], fmt: str = 'qdq') -> tuple[object, list[str]]:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / 'pre.onnx'
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    excluded = resolve_excludes(onnx.load(str(pre)), exclude)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(frames.calib)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x[None]}

    symmetric = target == 'tensorrt'
    out = tmp / 'int8.onnx'
    quantize_static(str(pre), str(out), Reader(),
                    quant_format=QuantFormat.QOperator if fmt == 'qoperator' else QuantFormat.QDQ, per_channel=per_channel,
                    calibrate_method={'minmax': CalibrationMethod.MinMax, 'entropy': CalibrationMethod.Entropy,
                                      'percentile': CalibrationMethod.Percentile}[method],
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                    extra_options={'ActivationSymmetric': symmetric, 'WeightSymmetric': True})
    return onnx.load(str(out)), excluded


def quantize_model(model: str | Path, out: str | Path, frames: CalibrationFrames, *, target: str = 'cpu',
                   method: str = 'minmax', per_channel: bool = True, exclude=DEFAULT_EXCLUDE,
                   max_abs_rel: float = DEFAULT_MAX_ABS_REL, force: bool = False, fmt: str = 'qdq',
                   log=print) -> dict:
    """Write the INT8 model of `model` to `out` (atomically) when it passes the check; returns the report
    {'out', 'written', 'check', 'quantization', 'seconds'}. QuantizeError (nothing written) for a model without
    design §3 metadata, an already quantized model, frames of another input size, or a failed check (unless
    force)."""
    import onnx

    model, out = Path(model), Path(out)
    if target not in TARGETS:
        raise QuantizeError(f'target {target!r} is not one of {TARGETS}')
    if fmt not in FORMATS or (fmt == 'qoperator' and target != 'cpu'):
        raise QuantizeError(f'format {fmt!r} is not one of {FORMATS} (qoperator only with target cpu: TensorRT takes QDQ)')
    if method not in METHODS:
        raise QuantizeError(f'calibration method {method!r} is not one of {METHODS}')
    meta = check_float_model(model)
    h, w = meta.input_height, meta.input_width
    for name, x in (('calibration', frames.calib), ('held-out', frames.holdout)):
        if x.ndim != 4 or x.shape[1:] != (3, h, w):
            raise QuantizeError(f'{name} frames are {list(x.shape)}, the model takes [N, 3, {h}, {w}]')
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='dynadepth-quantize-') as tmp:
        q, excluded = _quantize_graph(model, Path(tmp), frames, target, method, per_channel, list(exclude), fmt)
    log(f'quantized {model.name} ({target}, {fmt}, {method}, per-channel {per_channel}, {len(excluded)} node(s) kept '
        f'float) on {frames.describe()} in {time.perf_counter() - t0:.1f} s')
    ref, cand = _session(onnx.load(str(model))), _session(q)
    fp32 = np.concatenate([ref.run([OUTPUT_NAME], {INPUT_NAME: x[None]})[0] for x in frames.holdout])
    int8 = np.concatenate([cand.run([OUTPUT_NAME], {INPUT_NAME: x[None]})[0] for x in frames.holdout])
    check = compare_depth(fp32, int8, frames.holdout_gt, meta.min_depth)
    check['max_abs_rel'] = float(max_abs_rel)
    check['passed'] = check['nonfinite'] == 0 and check['abs_rel_vs_fp32'] <= max_abs_rel
    info = {'target': target, 'format': fmt, 'activations': 'int8 symmetric' if target == 'tensorrt' else
            'uint8 asymmetric', 'weights': 'int8 symmetric ' + ('per channel' if per_channel else 'per tensor'),
            'calibration': method, 'source': frames.source, 'frame_size': list(frames.frame_size),
            'calibration_frames': int(len(frames.calib)), 'holdout_frames': int(len(frames.holdout)),
            'exclude_requested': list(exclude), 'excluded_nodes': excluded, 'float_model_sha256': file_sha256(model),
            'check': check}
    report = {'out': str(out), 'written': False, 'check': check, 'quantization': info,
              'seconds': time.perf_counter() - t0}
    if not check['passed'] and not force:
        raise QuantizeError(f'the INT8 model departs from FP32 on {check["frames"]} held-out frames: '
                            f'{describe_check(check)} > --max-abs-rel {max_abs_rel:g}; nothing written '
                            f'(try --calibration percentile or entropy, --exclude first-conv/head, more --frames, '
                            f'or --force to write it anyway)')
    qmeta = ModelMetadata(**{**meta.__dict__, 'precision': 'int8', 'quantization': json.dumps(info, sort_keys=True)})
    set_metadata(q, qmeta)
    with atomic_path(out) as tmp_out:
        onnx.save(q, str(tmp_out))
    read_metadata(out)
    report['written'] = True
    return report


def check_float_model(model: Path) -> ModelMetadata:
    """The model's design §3 metadata; QuantizeError when it has none or is already quantized."""
    import onnx

    try:
        meta = read_metadata(model)
    except ModelFormatError as exc:
        raise QuantizeError(str(exc)) from exc
    precision, layout = graph_precision(onnx.load(str(model), load_external_data=False))
    if meta.precision != 'fp32' or precision != 'fp32':
        raise QuantizeError(f'{model} is already quantized (dynadepth.precision={meta.precision}, graph '
                            f'{layout or precision}); quantize the float model it was made from')
    return meta


def describe_check(check: dict) -> str:
    text = (f'mean |int8 - fp32| / fp32 = {check["abs_rel_vs_fp32"]:.4f} (p99 {check["p99_rel_vs_fp32"]:.4f}), '
            f'largest depth difference {check["max_abs_diff_m"]:.3g} m, non-finite {check["nonfinite"]}')
    if 'gt' in check:
        g = check['gt']
        text += (f'; AbsRel vs ground truth {g["abs_rel_fp32"]:.4f} -> {g["abs_rel_int8"]:.4f} '
                 f'({100 * g["abs_rel_change"]:+.1f} %)')
    return text


def int8_path(model: str | Path) -> Path:
    """Where the INT8 copy of a model goes by default: <stem>_int8.onnx beside it."""
    model = Path(model)
    return model.with_name(f'{model.stem}_int8.onnx')


RUN_INT8_FILE = 'final_int8.onnx'
DISTILL_INT8_FILE = 'distill_int8.onnx'


def run_int8_source(cfg, run_dir: str | Path) -> tuple[Path, Path]:
    """(float model, INT8 copy) that export.int8 makes in a run: the distilled network (distill/distill.onnx ->
    distill/distill_int8.onnx) when the distill stage is on (distill.decoder), else final/final.onnx ->
    final/final_int8.onnx."""
    run_dir = Path(run_dir)
    if cfg.distill.decoder:
        return run_dir / 'distill' / 'distill.onnx', run_dir / 'distill' / DISTILL_INT8_FILE
    return run_dir / 'final' / 'final.onnx', run_dir / 'final' / RUN_INT8_FILE


def quantize_run(cfg, run_dir: str | Path, log=print) -> dict | None:
    """`export.int8: true` at the end of `python -m training run`: the INT8 copy of the run's final model (or of its
    distilled network, run_int8_source) calibrated on the run's own train split (export.int8_target,
    export.int8_max_abs_rel, export.int8_exclude). Skipped (None) when the file is there and was made from this
    float model for this target, tolerance and exclusions."""
    from training.data import open_split

    final, out = run_int8_source(cfg, run_dir)
    if not final.is_file():
        raise QuantizeError(f'export.int8: {final} does not exist; the {final.parent.name} stage has not finished')
    target, tol = cfg.export.int8_target, float(cfg.export.int8_max_abs_rel)
    exclude = list(dict.fromkeys(list(DEFAULT_EXCLUDE) + list(cfg.export.int8_exclude)))
    if out.is_file():
        try:
            done = json.loads(read_metadata(out).quantization)
        except (ModelFormatError, ValueError):
            done = {}
        if (done.get('float_model_sha256') == file_sha256(final) and done.get('target') == target
                and (done.get('check') or {}).get('max_abs_rel') == tol and done.get('exclude_requested') == exclude):
            log(f'int8: up to date ({out})')
            return None
    meta = check_float_model(final)
    frames = frames_from_source(open_split(cfg.data, 'train'), meta.input_height, meta.input_width,
                                name=f'{cfg.data.root} (train split of the run)')
    report = quantize_model(final, out, frames, target=target, max_abs_rel=tol, exclude=exclude, log=log)
    log(f'int8: wrote {out}; {describe_check(report["check"])}')
    return report
