"""Backend logic that needs no GPU: TensorRT engine cache naming, corrupt/mismatched engines, rebuilds, the
tolerance check against ONNX Runtime CPU, and the fallback decisions.

TensorRT cannot run here, so `SubstituteRuntime` stands in for `TensorRTRuntime` (the only code that touches
tensorrt/CUDA): its "engines" are small byte blobs naming the ONNX file and TensorRT version, and "running" one
executes the ONNX with ONNX Runtime CPU, optionally distorted the way a broken fp16 engine would be.
Everything around it — cache, sidecar, rebuild, verification, fallback — is the production code.
"""
import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from contract_model import make_contract_model
from dynadepth_ros.inference import BackendError, DepthEstimator, select_backend
from dynadepth_ros.inference.backend_selection import compare_outputs
from dynadepth_ros.inference.tensorrt_backend import (EngineError, EngineKey, TensorRTBackend, read_engine,
                                                      sidecar_path, write_engine)
from dynadepth_ros.model_format import ModelFormatError, read_metadata


class SubstituteRuntime:
    def __init__(self, version='10.3.0', cc=(8, 7), distort=None, fail_build=None):
        self.version, self.compute_capability = version, cc
        self.distort, self.fail_build = distort, fail_build
        self.builds = 0

    def build(self, onnx_path, precision, input_hw, max_batch, workspace_bytes=0, log=None):
        if self.fail_build:
            raise BackendError(self.fail_build)
        self.builds += 1
        return b'ENGINE' + json.dumps({'onnx': str(onnx_path), 'trt': self.version, 'precision': precision}).encode()

    def load(self, blob, max_batch):
        if not blob.startswith(b'ENGINE'):
            raise EngineError('TensorRT cannot deserialize the engine')
        info = json.loads(blob[6:])
        sess = ort.InferenceSession(info['onnx'], providers=['CPUExecutionProvider'])

        def run(batch):
            out = sess.run(['depth'], {'image': batch})[0]
            return self.distort(out) if self.distort else out
        return run


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return make_contract_model(tmp_path_factory.mktemp('m') / 'contract.onnx')


def trt_factory(runtime):
    def make(*args, **kwargs):
        return TensorRTBackend(*args, runtime=runtime, **kwargs)
    return make


def fp16_overflow(out):
    out = out.copy()
    out[..., :4, :] = np.inf        # what an fp16 overflow looks like downstream
    return out


# ------------------------------------------------------------------ cache naming and files
def test_engine_cache_name_carries_everything_that_invalidates_an_engine():
    base = EngineKey('ab' * 32, '10.3.0', (8, 7), 'fp16', (192, 640), 4)
    name = base.file_name('dynadepth')
    assert name == f'dynadepth-{"ab" * 8}-trt10.3.0-sm87-fp16-b4x3x192x640.engine'
    variants = [EngineKey('cd' * 32, '10.3.0', (8, 7), 'fp16', (192, 640), 4),
                EngineKey('ab' * 32, '10.16.1', (8, 7), 'fp16', (192, 640), 4),
                EngineKey('ab' * 32, '10.3.0', (8, 6), 'fp16', (192, 640), 4),
                EngineKey('ab' * 32, '10.3.0', (8, 7), 'fp32', (192, 640), 4),
                EngineKey('ab' * 32, '10.3.0', (8, 7), 'fp16', (96, 320), 4),
                EngineKey('ab' * 32, '10.3.0', (8, 7), 'fp16', (192, 640), 1)]
    assert len({v.file_name('dynadepth') for v in variants} | {name}) == 7


def test_engine_is_built_once_then_loaded_from_the_cache(model, tmp_path):
    rt = SubstituteRuntime()
    meta = read_metadata(model)
    logs = []
    b1 = TensorRTBackend(model, meta, 'fp16', engine_cache_dir=tmp_path, runtime=rt, log=logs.append)
    b2 = TensorRTBackend(model, meta, 'fp16', engine_cache_dir=tmp_path, runtime=rt, log=logs.append)
    assert rt.builds == 1 and b1.engine_path == b2.engine_path and b1.engine_path.parent == tmp_path
    assert 'trt10.3.0-sm87-fp16' in b1.engine_path.name and sidecar_path(b1.engine_path).is_file()
    assert any('building TensorRT engine' in m for m in logs) and any('loaded cached' in m for m in logs)
    TensorRTBackend(model, meta, 'fp16', engine_cache_dir=tmp_path, runtime=SubstituteRuntime(version='10.16.1'),
                    log=logs.append)
    assert len(list(tmp_path.glob('*.engine'))) == 2       # another TensorRT version gets its own engine


def test_corrupt_cached_engine_is_detected_and_rebuilt(model, tmp_path):
    rt = SubstituteRuntime()
    meta = read_metadata(model)
    b = TensorRTBackend(model, meta, 'fp32', engine_cache_dir=tmp_path, runtime=rt, log=lambda m: None)
    data = bytearray(b.engine_path.read_bytes())
    data[-3:] = b'XXX'                                     # bit rot / truncated copy
    b.engine_path.write_bytes(bytes(data))
    logs = []
    TensorRTBackend(model, meta, 'fp32', engine_cache_dir=tmp_path, runtime=rt, log=logs.append)
    assert rt.builds == 2
    assert any('corrupt' in m and 'rebuilding' in m for m in logs)
    read_engine(b.engine_path, b.key)                      # the rebuilt engine passes its checksum again


def test_explicit_engine_for_another_setup_is_refused_with_the_difference(model, tmp_path):
    meta = read_metadata(model)
    rt = SubstituteRuntime()
    b = TensorRTBackend(model, meta, 'fp16', engine_cache_dir=tmp_path, runtime=rt, log=lambda m: None)
    with pytest.raises(EngineError, match=r"precision 'fp16' \(need 'fp32'\)"):
        TensorRTBackend(model, meta, 'fp32', engine_path=b.engine_path, runtime=rt, log=lambda m: None)
    with pytest.raises(EngineError, match=r'tensorrt_version'):
        TensorRTBackend(model, meta, 'fp16', engine_path=b.engine_path, runtime=SubstituteRuntime(version='10.16.1'))
    with pytest.raises(EngineError, match='does not exist'):
        TensorRTBackend(model, meta, 'fp16', engine_path=tmp_path / 'missing.engine', runtime=rt)


def test_engine_and_sidecar_are_written_together(tmp_path):
    key = EngineKey('0' * 64, '10.3.0', (8, 7), 'fp32', (64, 192), 1)
    write_engine(tmp_path / 'e.engine', b'payload', key)
    assert read_engine(tmp_path / 'e.engine', key) == b'payload'
    assert json.loads(sidecar_path(tmp_path / 'e.engine').read_text())['key']['tensorrt_version'] == '10.3.0'
    assert not list(tmp_path.glob('*.tmp'))


# ------------------------------------------------------------------ tolerance check
def test_compare_outputs_flags_nonfinite_and_relative_error():
    ref = np.full((1, 1, 4, 4), 10.0)
    assert compare_outputs(ref * 1.001, ref, 0.02, 0.1).passed
    bad = compare_outputs(ref * 1.05, ref, 0.02, 0.1)
    assert not bad.passed and bad.mean_rel == pytest.approx(0.05)
    inf = ref.copy()
    inf[0, 0, 0, 0] = np.inf
    assert compare_outputs(inf, ref, 0.02, 0.1).nonfinite == 1 and not compare_outputs(inf, ref, 0.02, 0.1).passed


def test_gpu_backend_within_tolerance_goes_live(model, tmp_path):
    sel = select_backend(model, read_metadata(model), backend='tensorrt', precision='fp16', engine_cache_dir=tmp_path,
                         tensorrt_factory=trt_factory(SubstituteRuntime(distort=lambda o: o * 1.003)),
                         log=lambda m: None)
    assert sel.backend.name == 'tensorrt[fp16]' and sel.verification.passed
    assert sel.verification.mean_rel == pytest.approx(0.003, rel=1e-3)


@pytest.mark.parametrize('distort,reason', [(fp16_overflow, r'non-finite [1-9]'),
                                            (lambda o: o * 1.10, r'mean relative error 0\.1000')])
def test_gpu_backend_beyond_tolerance_falls_back_or_is_refused(model, tmp_path, distort, reason):
    meta = read_metadata(model)
    logs = []
    sel = select_backend(model, meta, backend='tensorrt', precision='fp16', engine_cache_dir=tmp_path,
                         tensorrt_factory=trt_factory(SubstituteRuntime(distort=distort)), log=logs.append)
    assert sel.backend.name == 'onnxruntime[CPUExecutionProvider]'
    assert any('disagrees with ONNX Runtime CPU' in n and re.search(reason, n) for n in sel.notes), sel.notes
    assert logs, 'the fallback reason must be logged'
    with pytest.raises(BackendError, match='fallback is disabled.*disagrees'):
        select_backend(model, meta, backend='tensorrt', fallback=False, engine_cache_dir=tmp_path,
                       tensorrt_factory=trt_factory(SubstituteRuntime(distort=distort)), log=lambda m: None)


def test_engine_build_failure_falls_back_with_the_reason(model, tmp_path):
    rt = SubstituteRuntime(fail_build='TensorRT engine build failed: Tactic Device request: 143MB Available: 112MB')
    sel = select_backend(model, read_metadata(model), backend='auto', engine_cache_dir=tmp_path,
                         tensorrt_factory=trt_factory(rt), log=lambda m: None)
    assert sel.backend.name.startswith('onnxruntime') and 'Device request' in sel.notes[0]


# ------------------------------------------------------------------ the real machine: no TensorRT, no GPU providers
def test_tensorrt_missing_falls_back_to_onnxruntime_or_fails_clearly(model):
    est = DepthEstimator(model, backend='tensorrt', precision='fp16', log=lambda m: None)
    assert est.backend_name == 'onnxruntime[CPUExecutionProvider]'
    assert any('TensorRT is not installed' in n for n in est.notes)
    assert any('fp16 applies to TensorRT only' in n for n in est.notes)
    with pytest.raises(BackendError, match='fallback is disabled: TensorRT is not installed'):
        DepthEstimator(model, backend='tensorrt', fallback=False)
    auto = DepthEstimator(model, backend='auto')
    assert auto.backend_name == 'onnxruntime[CPUExecutionProvider]' and 'not installed' in auto.notes[0]


def test_unavailable_gpu_provider_falls_back_to_cpu(model):
    sel = select_backend(model, read_metadata(model), backend='onnxruntime',
                         providers=['CUDAExecutionProvider', 'CPUExecutionProvider'], log=lambda m: None)
    assert sel.backend.name == 'onnxruntime[CPUExecutionProvider]'
    assert 'CUDAExecutionProvider is not available' in sel.notes[0]
    with pytest.raises(BackendError, match='CUDAExecutionProvider'):
        select_backend(model, read_metadata(model), backend='onnxruntime', fallback=False,
                       providers=['CUDAExecutionProvider', 'CPUExecutionProvider'], log=lambda m: None)


def test_bad_backend_or_precision_names_are_refused(model):
    with pytest.raises(BackendError, match='backend'):
        DepthEstimator(model, backend='cuda')
    with pytest.raises(BackendError, match='precision'):
        DepthEstimator(model, precision='int4')     # int8 is a precision since issue 19


def test_corrupt_onnx_files_are_refused_clearly(model, tmp_path):
    truncated = tmp_path / 'truncated.onnx'
    truncated.write_bytes(model.read_bytes()[:200])
    with pytest.raises(ModelFormatError, match='not a readable ONNX file'):
        DepthEstimator(truncated, backend='onnxruntime')
    broken = onnx.load(str(model))                # metadata intact, graph unusable
    broken.graph.node[2].op_type = 'NoSuchOp'
    onnx.save(broken, str(tmp_path / 'broken.onnx'))
    with pytest.raises(BackendError, match='ONNX Runtime cannot load'):
        DepthEstimator(tmp_path / 'broken.onnx', backend='onnxruntime')


# ------------------------------------------------------------------ ahead-of-time engine build (build-engine)
def test_prebuilt_engine_is_the_one_the_node_loads_without_building(model, tmp_path):
    from dynadepth_ros.engine_builder import build_engine

    rt = SubstituteRuntime()
    out = build_engine(model, 'fp16', cache_dir=tmp_path, runtime=rt, log=lambda m: None)
    assert out['built'] and rt.builds == 1 and 'mean rel' in out['check']
    # the node (batch 1, same precision and cache) finds it: no second build
    logs = []
    b = TensorRTBackend(model, read_metadata(model), 'fp16', engine_cache_dir=tmp_path, max_batch=1, runtime=rt,
                        log=logs.append)
    assert rt.builds == 1 and str(b.engine_path) == out['engine'] and any('loaded cached' in m for m in logs)
    # building again is a no-op unless asked
    assert not build_engine(model, 'fp16', cache_dir=tmp_path, runtime=rt, log=lambda m: None)['built']
    assert build_engine(model, 'fp16', cache_dir=tmp_path, runtime=rt, rebuild=True, log=lambda m: None)['built']
    assert rt.builds == 2


def test_prebuilt_engine_that_disagrees_with_onnxruntime_is_reported(model, tmp_path):
    from dynadepth_ros.engine_builder import VerificationError, build_engine

    with pytest.raises(VerificationError, match='disagrees with ONNX Runtime'):
        build_engine(model, 'fp16', cache_dir=tmp_path, runtime=SubstituteRuntime(distort=fp16_overflow),
                     log=lambda m: None)


def test_build_engine_cli_exit_codes(model, tmp_path, capsys):
    from dynadepth_ros.engine_builder import main

    bad = tmp_path / 'not_a_model.onnx'
    bad.write_bytes(b'garbage')
    assert main([str(bad), '--cache-dir', str(tmp_path)]) == 2
    from dynadepth_ros.inference.backend_selection import tensorrt_installed
    if tensorrt_installed():
        pytest.skip('TensorRT is installed here; the no-TensorRT path cannot be shown')
    # no TensorRT on this machine: a clear message and exit 3, nothing written
    assert main([str(model), '--cache-dir', str(tmp_path / 'c')]) == 3
    err = capsys.readouterr().err
    assert 'TensorRT' in err and 'Jetson' in err and not (tmp_path / 'c').exists()


@pytest.mark.parametrize('spinning, entry', [(True, '1'), (False, '0')])
def test_onnxruntime_thread_spinning_reaches_the_session(model, spinning, entry):
    est = DepthEstimator(model, backend='onnxruntime', intra_op_threads=2, intra_op_spinning=spinning)
    try:
        opts = est._backend.session.get_session_options()
        assert opts.get_session_config_entry('session.intra_op.allow_spinning') == entry
        assert opts.intra_op_num_threads == 2
        assert np.isfinite(est.infer(np.full((64, 192, 3), 9, np.uint8))).all()
    finally:
        est.close()


# ------------------------------------------------------------------ progress of long steps (for /diagnostics)
def test_engine_build_is_reported_to_progress_and_a_cached_engine_is_not(model, tmp_path):
    stages = []
    rt = SubstituteRuntime()
    est = DepthEstimator(model, backend='tensorrt', fallback=False, engine_cache_dir=tmp_path,
                         tensorrt_factory=trt_factory(rt), log=lambda m: None, progress=stages.append)
    assert est.backend_name == 'tensorrt[fp32]' and rt.builds == 1
    build = stages.index('building TensorRT engine')
    assert stages[build + 1] == 'loading TensorRT engine'
    assert stages[-1] == 'checking the TensorRT backend against ONNX Runtime CPU'
    stages.clear()
    DepthEstimator(model, backend='tensorrt', fallback=False, engine_cache_dir=tmp_path,
                   tensorrt_factory=trt_factory(rt), log=lambda m: None, progress=stages.append)
    assert rt.builds == 1 and 'building TensorRT engine' not in stages     # loaded from the cache


def test_configure_progress_publishes_from_its_own_thread_while_the_caller_is_busy():
    import threading
    import time

    from dynadepth_ros.configure_progress import ConfigureProgress
    calls = []
    now = [100.0]
    progress = ConfigureProgress(0.05, lambda: calls.append(threading.current_thread().name),
                                 clock=lambda: now[0])
    with progress:
        progress.stage('building TensorRT engine')
        now[0] += 43.4
        assert progress.describe() == 'building TensorRT engine, 43 s'
        time.sleep(0.5)                                   # the caller blocked, like an engine build
    n = len(calls)
    assert n >= 5 and set(calls) == {'dynadepth-configure-progress'}
    time.sleep(0.2)
    assert len(calls) == n                                # stopped on leaving the block
