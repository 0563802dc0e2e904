"""INT8 models (issue 19): `python -m training quantize` on a dataset folder and on a real rosbag2, the check
against FP32, the one-line refusals, and the INT8 model in the node's backends (ONNX Runtime CPU for real, the
TensorRT code through the FakeGPU stand-in). A tiny convolutional model (two 3x3 convolutions, sigmoid disparity
to depth, 32x96) keeps it fast; real ONNX Runtime quantization and inference throughout."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bag_builders import BagSpec, scene_arrays, write_eval_bag
from dynadepth_ros.datasets.layout import Calib, Frame, Instance, SequenceWriter
from dynadepth_ros.inference import DepthEstimator
from dynadepth_ros.inference.preprocess import plan_crop, to_model_input
from dynadepth_ros.model_format import ModelMetadata, graph_precision, read_metadata
from training.__main__ import main as training_main
from training.quantize import QuantizeError, frames_from_bag, open_calibration, quantize_model
from trt_substitute import FakeGPU

H, W = 32, 96                      # the model; frames are 64x192 (same aspect: resized, as the node does)
REPO_ROOT = __import__('pathlib').Path(__file__).resolve().parents[1]


def make_conv_model(path, *, with_metadata=True, seed=0, **meta_overrides):
    """image [N,3,32,96] -> Conv 3->8 3x3, Relu, Conv 8->1 3x3, Sigmoid -> depth = 1 / (0.01 + 0.99 * disp)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.4).astype(np.float32)
    w1 *= np.linspace(0.2, 3.0, 8, dtype=np.float32)[:, None, None, None]   # channels of different ranges
    inits = [numpy_helper.from_array(w1, 'w1'), numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, 'b1'),
             numpy_helper.from_array((rng.standard_normal((1, 8, 3, 3)) * 0.3).astype(np.float32), 'w2'),
             numpy_helper.from_array(np.zeros(1, np.float32), 'b2'),
             numpy_helper.from_array(np.array(0.99, np.float32), 'span'),
             numpy_helper.from_array(np.array(0.01, np.float32), 'lo'),
             numpy_helper.from_array(np.array(1.0, np.float32), 'one')]
    nodes = [helper.make_node('Conv', ['image', 'w1', 'b1'], ['c1'], name='conv1', pads=[1, 1, 1, 1]),
             helper.make_node('Relu', ['c1'], ['r1'], name='relu1'),
             helper.make_node('Conv', ['r1', 'w2', 'b2'], ['c2'], name='conv2', pads=[1, 1, 1, 1]),
             helper.make_node('Sigmoid', ['c2'], ['disp'], name='sigmoid'),
             helper.make_node('Mul', ['disp', 'span'], ['sd'], name='mul'),
             helper.make_node('Add', ['sd', 'lo'], ['inv'], name='add'),
             helper.make_node('Div', ['one', 'inv'], ['depth'], name='div')]
    graph = helper.make_graph(nodes, 'tiny_depth', [helper.make_tensor_value_info('image', TensorProto.FLOAT, ['N', 3, H, W])],
                              [helper.make_tensor_value_info('depth', TensorProto.FLOAT, ['N', 1, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    if with_metadata:
        fields = dict(input_height=H, input_width=W, min_depth=0.1, max_depth=100.0, metric=True,
                      intrinsics=(0.58, 1.92, 0.5, 0.5), stage='final', dataset='tiny', config_hash='cafe',
                      version='0.1.0')
        fields.update(meta_overrides)
        for k, v in ModelMetadata(**fields).to_props().items():
            model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def write_dataset(root, sequences=((24, 64, 192),), split='train'):
    """A synthetic-layout split: one sequence per (frames, h, w), textured frames with GT depth."""
    for s, (n, h, w) in enumerate(sequences):
        K = np.array([[0.58 * w, 0, w / 2], [0, 1.92 * h, h / 2], [0, 0, 1.0]])
        with SequenceWriter(root, split, f'seq_{s:03d}', Calib(K=K, height=h, width=w, fps=10.0)) as wr:
            for i in range(n):
                a = scene_arrays(i + 10 * s, h, w)
                depth = np.nan_to_num(a['gt'], nan=0.0).astype(np.float32)
                wr.write(Frame(i, a['rgb'], depth, np.zeros((h, w), np.uint16), [Instance(1, 'car', True, [0, 0, 1.0])],
                               np.eye(4)))
    return root


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp('q')
    return {'model': make_conv_model(d / 'tiny.onnx'), 'data': write_dataset(d / 'data'), 'dir': d}


def run_cli(*args):
    return training_main(['quantize', *map(str, args)])


def session(path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


def test_quantize_a_dataset_folder_keeps_the_contract_and_stays_near_fp32(files, tmp_path, capsys):
    out = tmp_path / 'tiny_int8.onnx'
    assert run_cli(files['model'], '--calib', files['data'], '--out', out, '--frames', 16, '--holdout', 8) == 0
    printed = capsys.readouterr().out
    assert 'held-out frames' in printed and 'largest depth difference' in printed and 'AbsRel vs ground truth' in printed
    meta, src = read_metadata(out), read_metadata(files['model'])
    assert meta.precision == 'int8'
    assert {k: v for k, v in meta.to_props().items() if k not in ('dynadepth.precision', 'dynadepth.quantization')} \
        == src.to_props()
    info = json.loads(meta.quantization)
    assert info['target'] == 'cpu' and info['calibration_frames'] + info['holdout_frames'] == 24
    # by default the disparity -> depth conversion after the last convolution stays float (the output is metres)
    assert info['excluded_nodes'] == ['sigmoid', 'mul', 'add', 'div']
    assert info['check']['passed'] and info['check']['abs_rel_vs_fp32'] <= 0.03
    model = onnx.load(str(out))
    assert graph_precision(model) == ('int8', 'qdq')
    # weights int8 with one scale per output channel (per-channel), dequantized in the graph (QDQ)
    inits = {t.name: t for t in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == 'DequantizeLinear' and inits.get(n.input[0]) is not None
                 and inits[n.input[0]].data_type == TensorProto.INT8]
    assert sorted(numpy_helper.to_array(inits[n.input[1]]).size for n in weight_dq) == [1, 8]
    # the node's CPU backend runs it in int8 and says so
    est = DepthEstimator(out, backend='onnxruntime')
    assert est.backend_name == 'onnxruntime[CPUExecutionProvider/int8]' and est.selection.backend.precision == 'int8'
    rgb = scene_arrays(3)['rgb']
    ref = DepthEstimator(files['model'], backend='onnxruntime').infer(rgb)
    got = est.infer(rgb)
    assert np.mean(np.abs(got - ref) / ref) < 0.03


def test_calibration_frames_are_the_nodes_preprocessing_of_the_bag_images(tmp_path):
    bag = write_eval_bag(tmp_path / 'bag', BagSpec(frames=20))
    frames = frames_from_bag(bag, '/camera/image_raw', H, W, frames=16, holdout=4)
    assert len(frames.calib) == 16 and len(frames.holdout) == 4 and frames.frame_size == (64, 192)
    plan = plan_crop(64, 192, H, W, 0.05)
    expected = [to_model_input(scene_arrays(i)['rgb'], plan) for i in range(20)]
    got = list(frames.calib) + list(frames.holdout)
    assert all(any(np.array_equal(g, e) for e in expected) for g in got)
    assert not any(np.array_equal(frames.holdout[0], c) for c in frames.calib)      # held out = never calibrated


def test_quantize_from_a_rosbag_with_image_topic(files, tmp_path, capsys):
    bag = write_eval_bag(tmp_path / 'bag', BagSpec(frames=20, storage='sqlite3'))
    out = tmp_path / 'from_bag.onnx'
    assert run_cli(files['model'], '--calib', bag, '--image-topic', '/camera/image_raw', '--out', out) == 0
    info = json.loads(read_metadata(out).quantization)
    assert '/camera/image_raw' in info['source'] and info['frame_size'] == [64, 192]


@pytest.mark.parametrize('case, words', [
    ('no_metadata', 'missing dynadepth metadata'),
    ('already_int8', 'already quantized'),
    ('too_few', 'has 12 frame(s); calibration needs at least 20'),
    ('mixed_sizes', 'is 96x32, the first frame was 192x64'),
    ('bag_without_topic', 'name the camera topic with --image-topic'),
])
def test_bad_input_is_one_line_and_nothing_is_written(files, tmp_path, capsys, case, words):
    model, calib, extra = files['model'], files['data'], []
    if case == 'no_metadata':
        model = make_conv_model(tmp_path / 'bare.onnx', with_metadata=False)
    elif case == 'already_int8':
        model = tmp_path / 'int8.onnx'
        assert run_cli(files['model'], '--calib', calib, '--out', model) == 0
        capsys.readouterr()
    elif case == 'too_few':
        calib = write_dataset(tmp_path / 'few', ((12, 64, 192),))
    elif case == 'mixed_sizes':
        calib = write_dataset(tmp_path / 'mixed', ((12, 64, 192), (12, 32, 96)))
    elif case == 'bag_without_topic':
        calib = write_eval_bag(tmp_path / 'bag', BagSpec(frames=20))
    out = tmp_path / 'out' / 'never.onnx'
    assert run_cli(model, '--calib', calib, '--out', out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_tolerance_refuses_a_model_that_departs_from_fp32_and_force_writes_it(files, tmp_path, capsys):
    out = tmp_path / 'strict.onnx'
    assert run_cli(files['model'], '--calib', files['data'], '--out', out, '--max-abs-rel', '1e-9') == 2
    assert 'departs from FP32' in capsys.readouterr().err and not out.exists()
    assert not list(tmp_path.iterdir())
    assert run_cli(files['model'], '--calib', files['data'], '--out', out, '--max-abs-rel', '1e-9', '--force') == 0
    assert 'written because of --force' in capsys.readouterr().out
    assert not json.loads(read_metadata(out).quantization)['check']['passed']


def test_qoperator_format_for_onnx_runtime_only(files, tmp_path, capsys):
    out = tmp_path / 'qop.onnx'
    assert run_cli(files['model'], '--calib', files['data'], '--out', out, '--format', 'qoperator') == 0
    assert graph_precision(onnx.load(str(out))) == ('int8', 'qoperator')
    assert DepthEstimator(out, backend='onnxruntime').backend_name == 'onnxruntime[CPUExecutionProvider/int8]'
    assert run_cli(files['model'], '--calib', files['data'], '--out', tmp_path / 'x.onnx', '--format', 'qoperator',
                   '--target', 'tensorrt') == 2
    assert 'TensorRT takes QDQ' in capsys.readouterr().err and not (tmp_path / 'x.onnx').exists()


def test_exclude_keeps_the_named_nodes_in_float(files, tmp_path):
    frames = open_calibration(files['data'], H, W, frames=16, holdout=4)
    out = tmp_path / 'ex.onnx'
    rep = quantize_model(files['model'], out, frames, exclude=['first-conv'], log=lambda *_: None)
    assert rep['quantization']['excluded_nodes'] == ['conv1']
    model = onnx.load(str(out))
    conv1 = next(n for n in model.graph.node if n.name == 'conv1')
    assert conv1.op_type == 'Conv' and 'w1' in conv1.input          # float weights, no DequantizeLinear
    with pytest.raises(QuantizeError, match='no node name'):
        quantize_model(files['model'], out, frames, exclude=['nonsense'], log=lambda *_: None)


def test_full_res_alias_is_everything_after_the_last_upsampling():
    from onnx import helper

    from training.quantize import resolve_excludes

    names = [('Conv', 'enc'), ('Resize', 'up1'), ('Conv', 'dec1'), ('Resize', 'up0'), ('Conv', 'dec0'),
             ('Relu', 'act0'), ('Conv', 'head'), ('Sigmoid', 'disp')]
    nodes = [helper.make_node(op, [f'x{i}'], [f'x{i + 1}'], name=n) for i, (op, n) in enumerate(names)]
    graph = helper.make_graph(nodes, 'g', [], [])
    assert resolve_excludes(helper.make_model(graph), ['full-res']) == ['dec0', 'act0', 'head', 'disp']
    flat = helper.make_graph([helper.make_node('Conv', ['a'], ['b'], name='c')], 'g', [], [])
    with pytest.raises(QuantizeError, match='no node name'):
        resolve_excludes(helper.make_model(flat), ['full-res'])              # no upsampling: no such level


# ------------------------------------------------------------------ TensorRT (FakeGPU stand-in)
@pytest.fixture(scope='module')
def trt_models(files):
    frames = open_calibration(files['data'], H, W, frames=16, holdout=4)
    d = files['dir']
    quantize_model(files['model'], d / 'trt_int8.onnx', frames, target='tensorrt', max_abs_rel=0.5, log=lambda *_: None)
    quantize_model(files['model'], d / 'cpu_int8.onnx', frames, target='cpu', log=lambda *_: None)
    return {'trt': d / 'trt_int8.onnx', 'cpu': d / 'cpu_int8.onnx'}


@pytest.mark.parametrize('version, strongly_typed', [('10.3.0', False), ('10.13.0', True), ('11.4.0', True)])
def test_int8_engine_on_each_tensorrt_generation(trt_models, tmp_path, monkeypatch, version, strongly_typed):
    """10.0-10.11: weakly typed network with BuilderFlag.INT8 (explicit quantization needs it); 10.12+ and 11:
    strongly typed, the precision from the Q/DQ nodes, no precision flag. Cache key and name say int8."""
    assert graph_precision(onnx.load(str(trt_models['trt']))) == ('int8', 'qdq-symmetric')
    gpu = FakeGPU(version).install(monkeypatch)
    est = DepthEstimator(trt_models['trt'], backend='tensorrt', precision='int8', engine_cache_dir=tmp_path,
                         fallback=False, log=lambda *_: None)
    assert est.backend_name == 'tensorrt[int8]' and est.selection.verification.passed
    (build,) = gpu.builds
    assert build['computes'] == 'int8' and build['strongly_typed'] == strongly_typed
    assert build['int8_flag'] == (not strongly_typed) and not build['fp16_flag']
    (engine,) = tmp_path.glob('*.engine')
    assert '-int8-' in engine.name
    est.close()


def test_tensorrt_refuses_a_cpu_int8_model_and_an_fp32_model_asked_for_int8(files, trt_models, tmp_path, monkeypatch):
    FakeGPU('10.13.0').install(monkeypatch)
    est = DepthEstimator(trt_models['cpu'], backend='auto', precision='int8', engine_cache_dir=tmp_path,
                         log=lambda *_: None)
    assert est.backend_name == 'onnxruntime[CPUExecutionProvider/int8]'
    assert '--target tensorrt' in est.selection.fallback_reason
    est = DepthEstimator(files['model'], backend='auto', precision='int8', engine_cache_dir=tmp_path,
                         log=lambda *_: None)
    assert est.backend_name == 'onnxruntime[CPUExecutionProvider]'
    assert 'precision int8 needs an INT8 model' in est.selection.fallback_reason
    assert not list(tmp_path.glob('*.engine'))


def test_build_engine_precision_int8(trt_models, files, tmp_path, monkeypatch, capsys):
    from dynadepth_ros.engine_builder import main as build_main
    gpu = FakeGPU('10.3.0').install(monkeypatch)
    assert build_main([str(trt_models['trt']), '--precision', 'int8', '--cache-dir', str(tmp_path)]) == 0
    assert 'precision:=int8' in capsys.readouterr().out and gpu.builds[0]['computes'] == 'int8'
    assert build_main([str(files['model']), '--precision', 'int8', '--cache-dir', str(tmp_path / 'x')]) == 1
    err = capsys.readouterr().err.strip()
    assert 'needs an INT8 model' in err and len(err.splitlines()) == 1


def test_quantize_command_line_runs_as_a_module(files, tmp_path):
    """The documented command, in its own process (no torch needed for it)."""
    out = tmp_path / 'cli.onnx'
    r = subprocess.run([sys.executable, '-m', 'training', 'quantize', str(files['model']), '--calib',
                        str(files['data']), '--out', str(out)], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert read_metadata(out).precision == 'int8'
