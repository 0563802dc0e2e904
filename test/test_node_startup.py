"""Node start-up over a real ROS graph: models and engines it must refuse clearly, the TensorRT → ONNX Runtime
fallback for a corrupt engine, and the lifecycle without autostart."""
import signal
import subprocess

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from contract_model import expected_depth, make_contract_model  # noqa: E402
from dynadepth_ros import ros_compat  # noqa: E402
from dynadepth_ros.inference.estimator import BUNDLED_MODEL  # noqa: E402
from dynadepth_ros.inference.tensorrt_backend import EngineKey, write_engine  # noqa: E402
from test_node_graph import (Graph, depth_array, depth_node_cmd, image_msg, next_stamp, send_and_wait,  # noqa: E402
                             stop_process)


def _corrupt_engine(path):
    write_engine(path, b'serialized-engine-bytes' * 100, EngineKey('0' * 64, '10.3.0', (8, 7), 'fp16', (64, 192), 1))
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_unusable_models_and_engines_are_refused_with_a_clear_message(tmp_path):
    bare = make_contract_model(tmp_path / 'bare.onnx', with_metadata=False)
    truncated = tmp_path / 'truncated.onnx'
    truncated.write_bytes(make_contract_model(tmp_path / 'full.onnx').read_bytes()[:300])
    relative = make_contract_model(tmp_path / 'relative.onnx', metric=False)
    nan_intr = make_contract_model(tmp_path / 'nan_intr.onnx', extra_props={'dynadepth.intrinsics': 'nan,1.92,0.5,0.5'})
    engine = _corrupt_engine(tmp_path / 'model.engine')
    cases = {
        'bare': (['-p', f'model_path:={bare}'], 'missing dynadepth metadata'),
        'truncated': (['-p', f'model_path:={truncated}'], 'not a readable ONNX file'),
        'relative': (['-p', f'model_path:={relative}'], 'is not metric'),
        'nan_intrinsics': (['-p', f'model_path:={nan_intr}'], 'dynadepth.intrinsics'),
        'engine': (['-p', f'model_path:={tmp_path / "full.onnx"}', '-p', 'backend:=tensorrt', '-p', 'fallback:=false',
                    '-p', f'engine_path:={engine}'], 'is corrupt: sha256'),
        'backend': (['-p', f'model_path:={tmp_path / "full.onnx"}', '-p', 'backend:=cuda'], "backend='cuda'"),
    }
    if not BUNDLED_MODEL.is_file():
        cases['bundled'] = ([], 'no bundled model; set model_path')
    procs = {name: subprocess.Popen(depth_node_cmd() + ['--ros-args', '-r', f'__node:=dd_refuse_{name}'] + args,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f'{name}: the node kept running instead of refusing to start')
        assert proc.returncode == 1, f'{name}: exit {proc.returncode}\n{out}'
        assert cases[name][1] in out and 'configure failed' in out, f'{name}:\n{out}'
        assert 'Traceback' not in out, f'{name}: crashed instead of refusing:\n{out}'


def test_corrupt_engine_falls_back_to_onnxruntime_under_lifecycle_control(tmp_path):
    """autostart:=false: the node waits unconfigured; configure falls back from the corrupt engine; depth flows."""
    model = make_contract_model(tmp_path / 'm.onnx')
    engine = _corrupt_engine(tmp_path / 'm.engine')
    ns, name = '/dd_startup_ns', 'dd_startup'
    log_path = tmp_path / 'node.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(depth_node_cmd() + [
            '--ros-args', '-p', f'model_path:={model}', '-p', 'backend:=tensorrt', '-p', f'engine_path:={engine}',
            '-p', 'autostart:=false', '-r', f'__node:={name}', '-r', f'__ns:={ns}'], stdout=log, stderr=subprocess.STDOUT)
    g = Graph()
    try:
        g.sub(DiagnosticArray, '/diagnostics')

        def status():
            for arr in reversed(g.msgs('/diagnostics')):
                for st in arr.status:
                    if st.name == f'{name}: depth':
                        return st, {kv.key: kv.value for kv in st.values}
            return None
        st, v = g.wait(status, 30) or pytest.fail(f'no diagnostics from the node:\n{log_path.read_text()}')
        assert v['state'] == 'unconfigured' and st.level == DiagnosticStatus.WARN
        cli = g.node.create_client(ChangeState, f'{ns}/{name}/change_state')
        assert cli.wait_for_service(15)
        for tid in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert g.call(cli.call_async(ChangeState.Request(transition=Transition(id=tid)))).success, \
                log_path.read_text()
        g.sub(Image, f'{ns}/depth')
        pub = g.pub(Image, f'{ns}/image')
        assert g.wait(lambda: pub.get_subscription_count() > 0, 15)
        rgb = np.full((64, 192, 3), 120, np.uint8)
        out = send_and_wait(g, f'{ns}/image', image_msg(rgb, next_stamp()), out=f'{ns}/depth')
        np.testing.assert_allclose(depth_array(out), expected_depth(120), rtol=1e-5)
        _, v = g.wait(lambda: (lambda r: r if r and r[1]['state'] == 'active' else None)(status()), 10)
        assert v['backend'] == 'onnxruntime[CPUExecutionProvider]'
        assert 'is corrupt: sha256' in v['backend_notes']
        log = log_path.read_text()
        assert 'TensorRT backend not used' in log and 'is corrupt' in log
    finally:
        proc.terminate()
        proc.wait(15)
        g.close()


@pytest.mark.parametrize('autostart', [True, False], ids=['autostart', 'lifecycle_manager'])
def test_diagnostics_keep_coming_while_configure_builds_a_tensorrt_engine(tmp_path, autostart):
    """A TensorRT engine build (minutes on a Jetson) blocks configure, and with it the executor (autostart:
    configure runs before the executor spins; lifecycle manager: inside the change_state service callback):
    /diagnostics must still arrive at its period, saying 'building TensorRT engine, N s' with N growing, from a
    separate node process over the graph; configure succeeds only after the build; then the node goes active
    on the engine and gives depth."""
    import os
    import re
    import time

    import trt_substitute
    build_s, period = 8.0, 0.5             # the first seconds may pass before the graph discovers the node
    model = make_contract_model(tmp_path / 'm.onnx')
    ns, name = '/dd_build_ns', 'dd_build'
    g = Graph()
    received = []                                   # (monotonic time, status) of our node, in arrival order

    def on_diag(arr):
        for st in arr.status:
            if st.name == f'{name}: depth':
                received.append((time.monotonic(), st, {kv.key: kv.value for kv in st.values}))
    g.node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 100)
    log_path = tmp_path / 'node.log'
    env = dict(os.environ, DYNADEPTH_TEST_TRT_BUILD_S=str(build_s))
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(trt_substitute.command() + [
            '--ros-args', '-p', f'model_path:={model}', '-p', 'backend:=tensorrt', '-p', 'fallback:=false',
            '-p', f'engine_cache_dir:={tmp_path / "engines"}', '-p', f'diagnostics_period:={period}',
            '-p', 'intra_op_threads:=1', '-p', f'autostart:={str(autostart).lower()}', '-r', f'__node:={name}',
            '-r', f'__ns:={ns}'], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        if not autostart:
            cli = g.node.create_client(ChangeState, f'{ns}/{name}/change_state')
            assert cli.wait_for_service(30), log_path.read_text()
            t0 = time.monotonic()
            assert g.call(cli.call_async(ChangeState.Request(
                transition=Transition(id=Transition.TRANSITION_CONFIGURE))), timeout=60).success, log_path.read_text()
            assert time.monotonic() - t0 >= build_s - 0.5          # SUCCESS only once the engine is there
            assert g.call(cli.call_async(ChangeState.Request(
                transition=Transition(id=Transition.TRANSITION_ACTIVATE)))).success, log_path.read_text()
        active = g.wait(lambda: next((r for r in received if r[2]['state'] == 'active'), None), 60)
        assert active is not None, f'the node never went active; log:\n{log_path.read_text()}'
        building = [(t, st, v) for t, st, v in received[:received.index(active)]
                    if 'building TensorRT engine' in st.message]
        assert len(building) >= 4, (f'{len(building)} /diagnostics during the {build_s:g} s build: '
                                    f'{[r[1].message for r in received]}\nlog:\n{log_path.read_text()}')
        secs = [int(re.search(r'building TensorRT engine, (\d+) s', st.message).group(1)) for _, st, _ in building]
        assert secs == sorted(secs) and len(set(secs)) >= 3 and secs[-1] >= build_s - 2, secs
        assert all(st.level == DiagnosticStatus.WARN and v['state'] == 'configuring' for _, st, v in building)
        arrival = [t for t, _, _ in building]       # spread over the build, not delivered in a burst at its end
        assert arrival[-1] - arrival[0] >= build_s / 2 and max(np.diff(arrival)) < 4 * period, arrival
        _, st, v = active
        assert v['backend'] == 'tensorrt[fp32]' and 'configuring' not in st.message
        g.sub(Image, f'{ns}/depth')
        pub = g.pub(Image, f'{ns}/image')
        assert g.wait(lambda: pub.get_subscription_count() > 0, 15)
        out = send_and_wait(g, f'{ns}/image', image_msg(np.full((64, 192, 3), 120, np.uint8), next_stamp()),
                            out=f'{ns}/depth')
        np.testing.assert_allclose(depth_array(out), expected_depth(120), rtol=1e-5)
        assert 'TensorRT engine built in' in log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
        g.close()


@pytest.mark.parametrize('executor', ['events', 'single_threaded', None], ids=['events', 'single_threaded', 'default'])
def test_either_executor_serves_lifecycle_parameters_depth_and_exits_cleanly_on_sigint(tmp_path, executor):
    """The `executor` parameter: lifecycle and parameter services, depth and /diagnostics work with both, the
    diagnostics name the executor in use (the default: events on Kilted, single_threaded on Jazzy), and Ctrl-C ends
    the process with status 0 within a few seconds."""
    model = make_contract_model(tmp_path / 'm.onnx')
    ns, name = f'/dd_exec_{executor}', 'dd_exec'
    log_path = tmp_path / 'node.log'
    chosen = ['-p', f'executor:={executor}'] if executor else []
    if executor is None:
        executor = 'events' if ros_compat.rclpy_major() >= 9 else 'single_threaded'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(depth_node_cmd() + [
            '--ros-args', '-p', f'model_path:={model}', '-p', 'autostart:=false', *chosen,
            '-r', f'__node:={name}', '-r', f'__ns:={ns}'], stdout=log, stderr=subprocess.STDOUT)
    g = Graph()
    try:
        g.sub(DiagnosticArray, '/diagnostics')
        cli = g.node.create_client(ChangeState, f'{ns}/{name}/change_state')
        assert cli.wait_for_service(20), log_path.read_text()
        for tid in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            assert g.call(cli.call_async(ChangeState.Request(transition=Transition(id=tid)))).success, \
                log_path.read_text()
        params = g.node.create_client(SetParameters, f'{ns}/{name}/set_parameters')
        assert params.wait_for_service(10)
        req = SetParameters.Request(parameters=[Parameter('colored_max_depth', value=50.0).to_parameter_msg()])
        assert g.call(params.call_async(req)).results[0].successful
        g.sub(Image, f'{ns}/depth')
        pub = g.pub(Image, f'{ns}/image')
        assert g.wait(lambda: pub.get_subscription_count() > 0, 15)
        for value in (40, 200):
            out = send_and_wait(g, f'{ns}/image', image_msg(np.full((64, 192, 3), value, np.uint8), next_stamp()),
                                out=f'{ns}/depth')
            np.testing.assert_allclose(depth_array(out), expected_depth(value), rtol=1e-5)

        def reported():
            for arr in reversed(g.msgs('/diagnostics')):
                for st in arr.status:
                    if st.name == f'{name}: depth':
                        return {kv.key: kv.value for kv in st.values}
            return None
        v = g.wait(lambda: (lambda r: r if r and r['state'] == 'active' else None)(reported()), 10)
        assert v and v['executor'] == executor
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0, log_path.read_text()
        assert 'Traceback' not in log_path.read_text()
    finally:
        stop_process(proc)
        g.close()


def test_an_unknown_executor_is_refused_naming_the_choices():
    proc = subprocess.run(depth_node_cmd() + ['--ros-args', '-p', 'executor:=multi', '-r', '__node:=dd_exec_bad'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "executor must be one of auto, events, single_threaded, not 'multi'" in proc.stdout + proc.stderr
    assert 'Traceback' not in proc.stdout + proc.stderr


def _fake_trt_node(tmp_path, name, ns, fake, params):
    """depth_node (test/trt_substitute.py) whose `tensorrt` and cuda-python are the FakeGPU stand-in `fake`."""
    import json
    import os

    import trt_substitute
    log_path = tmp_path / f'{name}.log'
    env = dict(os.environ, DYNADEPTH_TEST_FAKE_TRT=json.dumps(fake))
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(trt_substitute.command() + [
            '--ros-args', *[a for p in params for a in ('-p', p)], '-p', 'intra_op_threads:=1',
            '-r', f'__node:={name}', '-r', f'__ns:={ns}'], stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.log_path = log_path
    return proc


def test_auto_backend_serves_onnxruntime_and_says_why_when_tensorrt_cannot_start(tmp_path):
    """A TensorRT that is installed but cannot start (trt.Builder: TypeError 'factory function returned nullptr',
    as with a wheel for another CUDA than the driver's): backend:=auto keeps the node up on ONNX Runtime, and the
    /diagnostics status and the log say which backend serves and why."""
    model = make_contract_model(tmp_path / 'm.onnx')
    ns, name = '/dd_trt_broken_ns', 'dd_trt_broken'
    proc = _fake_trt_node(tmp_path, name, ns, {'version': '10.13.0', 'fail': ['Builder']},
                          [f'model_path:={model}', 'backend:=auto', 'precision:=fp16',
                           f'engine_cache_dir:={tmp_path / "engines"}', 'diagnostics_period:=0.5'])
    g = Graph()
    try:
        g.sub(DiagnosticArray, '/diagnostics')
        g.sub(Image, f'{ns}/depth')
        pub = g.pub(Image, f'{ns}/image')
        assert g.wait(lambda: pub.get_subscription_count() > 0, 30), proc.log_path.read_text()
        out = send_and_wait(g, f'{ns}/image', image_msg(np.full((64, 192, 3), 120, np.uint8), next_stamp()),
                            out=f'{ns}/depth')
        np.testing.assert_allclose(depth_array(out), expected_depth(120), rtol=1e-5)

        def ok_status():
            for arr in reversed(g.msgs('/diagnostics')):
                for st in arr.status:
                    if st.name == f'{name}: depth' and st.level == DiagnosticStatus.OK:
                        return st, {kv.key: kv.value for kv in st.values}
            return None
        found = g.wait(ok_status, 15)
        assert found, f'no OK status; log:\n{proc.log_path.read_text()}'
        st, v = found
        assert v['backend'] == 'onnxruntime[CPUExecutionProvider]'
        assert 'on onnxruntime[CPUExecutionProvider] (fallback: TensorRT backend not used: TensorRT 10.13.0 ' \
               'cannot create trt.Builder' in st.message, st.message
        assert 'factory function returned nullptr' in v['backend_reason']
        log = proc.log_path.read_text()
        assert 'trt.Builder' in log and 'CUDA initialization failure' in log
        assert 'Traceback' not in log and 'see above' not in log
    finally:
        stop_process(proc)
        g.close()


def test_two_camera_node_starts_on_the_engine_build_engine_made_for_one(tmp_path, monkeypatch):
    """`dynadepth-build-engine` (default: one camera) then a node with cameras:=[a, b]: the node loads that
    engine (no build at start-up, which takes minutes on a Jetson), runs both cameras, and says how to get an
    engine batched for both."""
    from dynadepth_ros.engine_builder import build_engine
    from trt_substitute import FakeGPU

    model = make_contract_model(tmp_path / 'm.onnx')
    fake = {'version': '10.3.0'}
    gpu = FakeGPU(**fake).install(monkeypatch)
    build_engine(model, 'fp16', cache_dir=tmp_path / 'engines', log=lambda m: None)
    assert len(gpu.builds) == 1
    ns, name = '/dd_trt_cams_ns', 'dd_trt_cams'
    proc = _fake_trt_node(tmp_path, name, ns, fake,
                          [f'model_path:={model}', 'backend:=tensorrt', 'precision:=fp16', 'fallback:=false',
                           f'engine_cache_dir:={tmp_path / "engines"}', 'cameras:=[a, b]'])
    g = Graph()
    try:
        pubs = {}
        for cam in ('a', 'b'):
            g.sub(Image, f'{ns}/{cam}/depth')
            pubs[cam] = g.pub(Image, f'{ns}/{cam}/image')
        assert g.wait(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 30), \
            proc.log_path.read_text()
        for cam, value in (('a', 40), ('b', 200)):
            out = send_and_wait(g, f'{ns}/{cam}/image', image_msg(np.full((64, 192, 3), value, np.uint8),
                                                                   next_stamp()), out=f'{ns}/{cam}/depth')
            np.testing.assert_allclose(depth_array(out), expected_depth(value), rtol=2e-3)
        log = proc.log_path.read_text()
        assert 'loaded cached TensorRT engine' in log and 'building TensorRT engine' not in log, log
        assert '--max-batch 2' in log and 'on tensorrt[fp16]' in log
    finally:
        stop_process(proc)
        g.close()


@pytest.mark.parametrize('target, backend, served', [
    ('cpu', 'onnxruntime', 'onnxruntime[CPUExecutionProvider/int8]'),
    ('tensorrt', 'tensorrt', 'tensorrt[int8]'),
])
def test_an_int8_model_is_served_in_int8_and_the_diagnostics_say_so(tmp_path, target, backend, served):
    """Issue 19: an INT8 (QDQ) model from `python -m training quantize` runs on ONNX Runtime CPU as it is, and as a
    TensorRT int8 engine with precision:=int8 (the FakeGPU stand-in: TensorRT has not run here); the depth is the
    INT8 model's (ONNX Runtime CPU on the same file) and /diagnostics says int8."""
    from dynadepth_ros.inference import DepthEstimator
    from test_quantize import make_conv_model, write_dataset
    from training.quantize import open_calibration, quantize_model

    fp32 = make_conv_model(tmp_path / 'tiny.onnx')
    frames = open_calibration(write_dataset(tmp_path / 'data'), 32, 96, frames=16, holdout=4)
    model = tmp_path / f'tiny_int8_{target}.onnx'
    quantize_model(fp32, model, frames, target=target, max_abs_rel=0.5, log=lambda *_: None)
    rgb = np.random.default_rng(3).integers(0, 256, (64, 192, 3), dtype=np.uint8)
    expected = DepthEstimator(model, backend='onnxruntime').infer(rgb)
    ns, name = f'/dd_int8_{target}', f'dd_int8_{target}'
    proc = _fake_trt_node(tmp_path, name, ns, {'version': '10.13.0'},
                          [f'model_path:={model}', f'backend:={backend}', 'precision:=int8', 'fallback:=false',
                           f'engine_cache_dir:={tmp_path / "engines"}', 'diagnostics_period:=0.5'])
    g = Graph()
    try:
        g.sub(DiagnosticArray, '/diagnostics')
        g.sub(Image, f'{ns}/depth')
        pub = g.pub(Image, f'{ns}/image')
        assert g.wait(lambda: pub.get_subscription_count() > 0, 30), proc.log_path.read_text()
        out = send_and_wait(g, f'{ns}/image', image_msg(rgb, next_stamp()), out=f'{ns}/depth')
        np.testing.assert_allclose(depth_array(out), expected, rtol=1e-4)

        def ok_status():
            for arr in reversed(g.msgs('/diagnostics')):
                for st in arr.status:
                    if st.name == f'{name}: depth' and st.level == DiagnosticStatus.OK:
                        return st, {kv.key: kv.value for kv in st.values}
            return None
        found = g.wait(ok_status, 15)
        assert found, f'no OK status; log:\n{proc.log_path.read_text()}'
        st, v = found
        assert v['backend'] == served and served in st.message
        assert v['precision'] == 'int8' and v['model_precision'] == 'int8'
        assert 'int8' in proc.log_path.read_text()
    finally:
        stop_process(proc)
        g.close()


def test_a_relative_model_allowed_by_the_user_is_served_with_one_warning(tmp_path):
    """allow_relative_model:=true serves a model trained without odometry (dynadepth.metric=false), and the node
    says once, as a warning, that its depth is relative, not metres."""
    relative = make_contract_model(tmp_path / 'relative.onnx', metric=False)
    log_path = tmp_path / 'node.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(depth_node_cmd() + ['--ros-args', '-r', '__node:=dd_relative', '-p',
                                                    f'model_path:={relative}', '-p', 'allow_relative_model:=true'],
                                stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        assert Graph.wait(lambda: 'on onnxruntime' in log_path.read_text() or proc.poll() is not None, 60), \
            log_path.read_text()
        assert proc.poll() is None, log_path.read_text()
        text = log_path.read_text()
        assert text.count('is not metric (trained without odometry)') == 1, text
        assert 'WARN' in next(line for line in text.splitlines() if 'is not metric' in line)
    finally:
        stop_process(proc)
