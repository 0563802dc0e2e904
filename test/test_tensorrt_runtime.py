"""The TensorRT backend's own GPU-facing code (TensorRTRuntime) on the TensorRT installs robots have — 10.x,
late 10.x, 11.x, TensorRT that cannot start, cuda-python for the wrong CUDA — through the FakeGPU stand-in
(test/trt_substitute.py: `tensorrt` and `cuda.bindings.runtime` modules with each version's names, running
the ONNX on ONNX Runtime CPU). What is checked is what a user sees: which backend serves, the message that
says why, the engine the node builds or reuses, what build-engine prints, and device memory left behind.
TensorRT itself has never run here; this shows the code around it, not TensorRT's behaviour.
"""
import numpy as np
import onnx
import pytest

from contract_model import expected_depth, make_contract_model
from dynadepth_ros.engine_builder import build_engine, main as build_engine_main
from dynadepth_ros.inference import BackendError, DepthEstimator, select_backend
from dynadepth_ros.inference.backend_selection import probe_input
from dynadepth_ros.inference.fp16_model import write_fp16_model
from dynadepth_ros.inference.tensorrt_backend import TensorRTBackend, TensorRTRuntime, TensorRTUnavailable
from dynadepth_ros.model_format import read_metadata
from trt_substitute import NULLPTR, FakeGPU

CPU = 'onnxruntime[CPUExecutionProvider]'


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return make_contract_model(tmp_path_factory.mktemp('m') / 'contract.onnx')


def quiet(_msg):
    pass


def estimator(model, cache, **kwargs):
    kwargs.setdefault('backend', 'tensorrt')
    return DepthEstimator(model, engine_cache_dir=cache, log=quiet, **kwargs)


# ------------------------------------------------------------------ fp16 on TensorRT 10, late 10.x and 11
@pytest.mark.parametrize('version, strongly_typed', [('10.3.0', False), ('10.13.0', True), ('11.4.0', True)])
def test_fp16_engine_builds_on_each_tensorrt_generation(model, tmp_path, monkeypatch, version, strongly_typed):
    """10.0-10.11: BuilderFlag.FP16 on a weakly typed network. 10.12+ (flag deprecated) and 11 (flag and
    platform_has_fast_fp16 removed): a strongly typed network from the fp16 copy of the exported ONNX."""
    gpu = FakeGPU(version).install(monkeypatch)
    est = estimator(model, tmp_path, precision='fp16', fallback=False)
    assert est.backend_name == 'tensorrt[fp16]' and est.selection.verification.passed
    (build,) = gpu.builds
    assert build['strongly_typed'] == strongly_typed and build['computes'] == 'fp16'
    assert build['fp16_flag'] == (not strongly_typed) and not build['deprecated_weak_typing']
    depth = est.infer(np.full((64, 192, 3), 120, np.uint8))
    np.testing.assert_allclose(depth, expected_depth(120), rtol=2e-3)
    est.close()
    assert gpu.live == 0


def test_fp32_engine_on_tensorrt_11_is_strongly_typed_from_the_exported_model(model, tmp_path, monkeypatch):
    gpu = FakeGPU('11.4.0').install(monkeypatch)
    est = estimator(model, tmp_path, precision='fp32', fallback=False)
    assert est.backend_name == 'tensorrt[fp32]'
    assert gpu.builds[0]['strongly_typed'] and gpu.builds[0]['computes'] == 'fp32'


def test_fp16_copy_of_the_bundled_network_keeps_the_contract_and_agrees_with_fp32(tmp_path):
    """The fp16 model TensorRT 11 is built from: float32 image in / depth out, metadata kept, weights fp16,
    and on ONNX Runtime CPU within the node's trt_tolerance of the fp32 model."""
    import onnxruntime as ort

    from dynadepth_ros.inference.estimator import BUNDLED_MODEL
    if not BUNDLED_MODEL.is_file():
        pytest.skip('no bundled model')
    out = tmp_path / 'fp16.onnx'
    write_fp16_model(BUNDLED_MODEL, out)
    m = onnx.load(str(out))
    assert {i.name: i.type.tensor_type.elem_type for i in m.graph.input} == {'image': onnx.TensorProto.FLOAT}
    assert {o.name: o.type.tensor_type.elem_type for o in m.graph.output} == {'depth': onnx.TensorProto.FLOAT}
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer) > 30
    assert read_metadata(out) == read_metadata(BUNDLED_MODEL)
    meta = read_metadata(BUNDLED_MODEL)
    x = probe_input(meta.input_height, meta.input_width, batch=2)
    ref = ort.InferenceSession(str(BUNDLED_MODEL), providers=['CPUExecutionProvider']).run(None, {'image': x})[0]
    got = ort.InferenceSession(str(out), providers=['CPUExecutionProvider']).run(None, {'image': x})[0]
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert float(np.mean(np.abs(got - ref) / ref)) < 0.02


# ------------------------------------------------------------------ TensorRT that cannot start
@pytest.mark.parametrize('constructor', ['Builder', 'OnnxParser', 'Runtime'])
def test_tensorrt_that_cannot_start_falls_back_with_the_cause(model, tmp_path, monkeypatch, constructor):
    """trt.Builder / OnnxParser / Runtime raising TypeError('factory function returned nullptr'): auto falls back
    to ONNX Runtime and says which constructor failed, TensorRT's own log line, and the likely CUDA mismatch."""
    gpu = FakeGPU('10.13.0', fail=[constructor]).install(monkeypatch)
    est = estimator(model, tmp_path, backend='auto')
    assert est.backend_name == CPU
    reason = est.selection.fallback_reason
    assert f'trt.{constructor}' in reason and NULLPTR in reason, reason
    assert 'CUDA initialization failure' in reason and 'CUDA 12.6' in reason, reason
    assert gpu.live == 0
    with pytest.raises(BackendError, match=f'fallback is disabled.*trt.{constructor}'):
        estimator(model, tmp_path / 'again', fallback=False)


def test_a_name_missing_in_this_tensorrt_version_is_named(model, tmp_path, monkeypatch):
    FakeGPU('11.4.0', missing=['get_tensor_profile_shape']).install(monkeypatch)
    est = estimator(model, tmp_path, backend='auto')
    assert est.backend_name == CPU
    assert 'TensorRT 11.4.0 lacks get_tensor_profile_shape' in est.selection.fallback_reason


def test_cuda_python_for_a_newer_cuda_than_the_driver_is_named(model, tmp_path, monkeypatch):
    """`pip install cuda-python` brings 13.x; on a CUDA 12 driver (JetPack 6) every CUDA call fails with
    cudaErrorInsufficientDriver: the message names both versions and the bound to install."""
    FakeGPU('10.3.0', cuda_python='13.0.1', driver_cuda=12020).install(monkeypatch)
    with pytest.raises(TensorRTUnavailable) as err:
        TensorRTRuntime()
    msg = str(err.value)
    assert 'cudaErrorInsufficientDriver' in msg and "b'" not in msg                  # decoded, not bytes
    assert 'cuda-python 13.0.1' in msg and 'CUDA 12.2' in msg and "cuda-python>=12.6,<13" in msg
    est = estimator(model, tmp_path, backend='auto')
    assert est.backend_name == CPU and 'cuda-python>=12.6,<13' in est.selection.fallback_reason


@pytest.mark.parametrize('fake, code, words', [
    ({'fail': ['Builder']}, 3, ['trt.Builder', NULLPTR]),
    ({'cuda_python': '13.0.1', 'driver_cuda': 12020}, 3, ['cudaErrorInsufficientDriver', 'cuda-python>=12.6,<13']),
    ({'missing': ['get_tensor_profile_shape']}, 3, ['lacks get_tensor_profile_shape']),
])
def test_build_engine_prints_one_line_naming_the_cause(model, tmp_path, monkeypatch, capsys, fake, code, words):
    FakeGPU('11.4.0', **fake).install(monkeypatch)
    assert build_engine_main([str(model), '--cache-dir', str(tmp_path)]) == code
    out = capsys.readouterr()
    assert 'Traceback' not in out.err and all(w in out.err for w in words), out.err
    assert len(out.err.strip().splitlines()) <= 2     # the error, and where to build instead


# ------------------------------------------------------------------ engines, batches and cameras
def test_a_two_camera_node_reuses_the_batch_1_engine_build_engine_made(model, tmp_path, monkeypatch):
    """build-engine's default (one camera) and a node with cameras:=[a, b] (batch 2) share the engine: no
    rebuild at start-up; the batch of two runs as two engine calls and gives both cameras' depth."""
    gpu = FakeGPU('10.3.0').install(monkeypatch)
    out = build_engine(model, 'fp16', cache_dir=tmp_path, log=quiet)
    assert out['built'] and out['key']['max_batch'] == 1
    logs = []
    est = DepthEstimator(model, backend='tensorrt', precision='fp16', fallback=False, engine_cache_dir=tmp_path,
                         max_batch=2, log=logs.append)
    assert len(gpu.builds) == 1 and est.backend_name == 'tensorrt[fp16]'
    assert any('loaded cached' in m and 'runs as 2 engine calls' in m and '--max-batch 2' in m for m in logs), logs
    depth = est.infer_batch([np.full((64, 192, 3), 40, np.uint8), np.full((64, 192, 3), 200, np.uint8)])
    np.testing.assert_allclose(depth[0], expected_depth(40), rtol=2e-3)
    np.testing.assert_allclose(depth[1], expected_depth(200), rtol=2e-3)


def test_engine_profile_is_optimised_for_the_cameras_and_covers_smaller_batches(model, tmp_path, monkeypatch):
    """build-engine --cameras 3: profile 1..3 optimised for 3 (the batch the node runs); a single-camera node
    then loads that engine instead of building its own."""
    gpu = FakeGPU('11.4.0').install(monkeypatch)
    assert build_engine_main([str(model), '--precision', 'fp32', '--cameras', '3', '--cache-dir', str(tmp_path)]) == 0
    assert gpu.builds[0]['profile'] == [[1, 3, 64, 192], [3, 3, 64, 192], [3, 3, 64, 192]]
    est = estimator(model, tmp_path, precision='fp32', fallback=False, max_batch=1)
    assert len(gpu.builds) == 1 and est.selection.backend.key.max_batch == 3
    # the node that builds for itself optimises for its own batch
    estimator(model, tmp_path / 'own', precision='fp32', fallback=False, max_batch=2)
    assert gpu.builds[1]['profile'][1][0] == 2


def test_an_engine_path_built_for_fewer_cameras_is_used(model, tmp_path, monkeypatch):
    gpu = FakeGPU('10.3.0').install(monkeypatch)
    engine = build_engine(model, 'fp32', cache_dir=tmp_path, log=quiet)['engine']
    est = DepthEstimator(model, backend='tensorrt', fallback=False, engine_path=engine, max_batch=2, log=quiet)
    assert est.backend_name == 'tensorrt[fp32]' and len(gpu.builds) == 1
    assert est.infer_batch([np.full((64, 192, 3), 90, np.uint8)] * 2)[1].shape == (64, 192)


def test_an_engine_whose_output_breaks_the_contract_is_refused_before_any_device_memory(tmp_path, monkeypatch):
    """A model (or trtexec engine) with depth [N,2,H,W]: refused from the engine's own output shape, before a
    buffer is sized from it, never by writing past a buffer and checking afterwards."""
    bad = make_contract_model(tmp_path / 'two_channel.onnx')
    m = onnx.load(str(bad))
    next(t for t in m.graph.initializer if t.name == 'ends').CopyFrom(
        onnx.numpy_helper.from_array(np.array([2], np.int64), 'ends'))
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 2
    onnx.save(m, str(bad))
    gpu = FakeGPU('11.4.0').install(monkeypatch)
    with pytest.raises(BackendError, match=r"engine output 'depth' has shape \[-1, 2, 64, 192\].*design §3 needs "
                                           r'\[N, 1, 64, 192\]'):
        estimator(bad, tmp_path, fallback=False)
    assert gpu.mallocs == 0 and gpu.overflows == 0


def test_a_failed_second_allocation_frees_the_first_and_names_the_cuda_error(model, tmp_path, monkeypatch):
    gpu = FakeGPU('10.3.0', malloc_fail_at=2).install(monkeypatch)
    est = estimator(model, tmp_path, backend='auto')
    assert est.backend_name == CPU
    assert 'CUDA call failed: cudaErrorMemoryAllocation' in est.selection.fallback_reason
    assert gpu.mallocs == 2 and gpu.live == 0


def test_fallback_reason_is_empty_when_nothing_failed(model, tmp_path, monkeypatch):
    FakeGPU('10.3.0').install(monkeypatch)
    assert estimator(model, tmp_path, backend='auto').selection.fallback_reason == ''


def test_the_prepared_gpu_script_runs_end_to_end_on_the_stand_in(tmp_path):
    """test/bench/gpu_tensorrt.py is what a GPU session runs; on the stand-in it must build, check and time
    every case and write its results (the numbers themselves mean nothing here)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / 'bench' / 'gpu_tensorrt.py'
    res = subprocess.run([sys.executable, str(script), '--stand-in', '11.4.0', '--rounds', '1', '--cpu-rounds', '1',
                          '--out', str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    cases = json.loads((tmp_path / 'results.json').read_text())['cases']
    assert [(c['model'], c['precision']) for c in cases] == [
        ('bundled 96x320', 'fp32'), ('bundled 96x320', 'fp16'),
        ('bundled net at 192x640', 'fp32'), ('bundled net at 192x640', 'fp16')]
    assert all('non-finite 0' in c['check'] and 'trt_ms_b2' in c for c in cases)
    assert 'strongly typed' in cases[1]['route']
