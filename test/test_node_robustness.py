"""The depth node against an operator's bad days, in a real ROS 2 graph over DDS: a warning followed by a bad
frame, a decompression bomb, implausible camera_info, stamps that jump backwards, and a worker thread that dies
or hangs (the process must say so on /diagnostics and exit non-zero, so a supervisor restarts it).

One `depth_node` (compressed transport, small max_image_pixels) is shared by the module; the worker-failure test
starts its own processes with a failure injected into the worker.
"""
import math
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from contract_model import expected_depth, make_contract_model  # noqa: E402
from test_node_graph import (FRAME, INTR, Graph, camera_info_msg, depth_array, diag, fastdds_files_of,  # noqa: E402
                             label_msg, next_stamp, running_node, same_stamp, send_and_wait, stop_process)

NS, NAME = '/dd_robust_ns', 'dd_robust'
MAX_PIXELS = 1_000_000


def png_msg(rgb, stamp):
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return CompressedImage(header=Header(stamp=stamp, frame_id=FRAME), format='png', data=buf.tobytes())


@pytest.fixture(scope='module')
def robust(tmp_path_factory):
    yield from running_node(tmp_path_factory.mktemp('robust'), CompressedImage, 'image/compressed',
                            ('image_transport:=compressed', f'max_image_pixels:={MAX_PIXELS}'), NS, NAME)


def send(g, msg, **kw):
    return send_and_wait(g, f'{NS}/image/compressed', msg, mtype=CompressedImage, out=f'{NS}/depth', **kw)


def log_text(g):
    return g.log_path.read_text()


# ---------------------------------------------------------------------------- 1. warning, then a bad frame
def test_a_warning_then_a_bad_frame_keeps_depth_flowing(robust):
    g = robust
    rgb = np.full((128, 384, 3), 100, np.uint8)
    info_pub = g.pub(CameraInfo, f'{NS}/camera_info')
    for _ in range(20):           # camera_info of another aspect ratio: unusable → a throttled warning
        info_pub.publish(camera_info_msg(640, 480, 500.0, 500.0, next_stamp()))
        time.sleep(0.05)
        out = send(g, png_msg(rgb, next_stamp()))
        if 'camera_info ignored' in log_text(g):
            break
    assert 'camera_info ignored' in log_text(g), log_text(g)[-2000:]
    np.testing.assert_allclose(depth_array(out), expected_depth(100), rtol=1e-5)
    pub = g.pub(CompressedImage, f'{NS}/image/compressed')
    for _ in range(3):            # an undecodable frame: an error-severity log line after that warning
        pub.publish(CompressedImage(header=Header(stamp=next_stamp(), frame_id=FRAME), format='jpeg',
                                    data=b'\xff\xd8' + b'\x00' * 60))
        if g.wait(lambda: 'skipping camera frame' in log_text(g), 2.0):
            break
    assert 'skipping camera frame' in log_text(g), log_text(g)[-2000:]
    out = send(g, png_msg(rgb, next_stamp()))
    np.testing.assert_allclose(depth_array(out), expected_depth(100), rtol=1e-5)
    assert g.proc.poll() is None
    assert 'Traceback' not in log_text(g) and 'severity cannot be changed' not in log_text(g), log_text(g)[-3000:]
    v = diag(g, NAME, lambda v: int(v['frames_out']) >= 2)
    assert v is not None and v['_level'] != DiagnosticStatus.ERROR and v['errors'] == '0', v


# ---------------------------------------------------------------------------- 2. decompression bomb
def _png_header_only(width, height):
    """A 60-byte PNG whose IHDR declares width x height (8-bit RGB) with a truncated image stream."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'\x00' * 64)))


def test_compressed_frames_larger_than_max_image_pixels_are_skipped_before_decoding(robust):
    g = robust
    pub = g.pub(CompressedImage, f'{NS}/image/compressed')
    before = diag(g, NAME)
    before_bad = int(before['bad_frames']) if before else 0
    big = np.zeros((1000, 1200, 3), np.uint8)                  # 1.2 Mpx > max_image_pixels = 1 Mpx: valid, small PNG
    bombs = [png_msg(big, next_stamp()),
             CompressedImage(header=Header(stamp=next_stamp(), frame_id=FRAME), format='png',
                             data=_png_header_only(16000, 16000))]
    for bomb, size in zip(bombs, ('1200x1000', '16000x16000')):
        v = None
        for _ in range(5):
            pub.publish(bomb)
            v = diag(g, NAME, lambda v: int(v['bad_frames']) > before_bad and size in v['last_bad_frame'], 3.0)
            if v is not None:
                break
        assert v is not None, f'{size} frame not skipped; log:\n{log_text(g)[-2000:]}'
        assert 'max_image_pixels' in v['last_bad_frame'], v['last_bad_frame']
        before_bad = int(v['bad_frames'])
    out = send(g, png_msg(np.full((128, 384, 3), 60, np.uint8), next_stamp()))
    np.testing.assert_allclose(depth_array(out), expected_depth(60), rtol=1e-5)
    assert not [m for m in g.msgs(f'{NS}/depth') if any(same_stamp(m.header.stamp, b.header.stamp) for b in bombs)]
    assert g.proc.poll() is None


# ---------------------------------------------------------------------------- 3. implausible camera_info
def _info(fx=None, fy=None, **fields):
    info = camera_info_msg(384, 128, fx or INTR[0] * 384, fy or INTR[1] * 128, next_stamp())
    for key, value in fields.items():
        if key == 'cx':
            k = list(info.k)
            k[2] = value
            info.k = k
        else:
            setattr(info, key, value)
    return info


@pytest.mark.parametrize('case,info_kw,field', [
    ('fx_1e300', dict(fx=1e300), 'fx'),
    ('fx_1e6', dict(fx=1e6), 'fx'),
    ('fx_fy_1e-300', dict(fx=1e-300, fy=1e-300), 'fx'),
    ('fy_100x', dict(fy=INTR[1] * 128 * 100), 'fy'),
    ('cx_nan', dict(cx=math.nan), 'cx'),
    ('huge_binning', dict(binning_x=4_000_000_000), 'binning'),
])
def test_implausible_camera_info_is_refused_naming_the_field_and_the_model_intrinsics_kept(robust, case, info_kw,
                                                                                           field):
    g = robust
    rgb = np.full((128, 384, 3), 100, np.uint8)
    info_pub = g.pub(CameraInfo, f'{NS}/camera_info')
    v = out = None
    for _ in range(10):
        info_pub.publish(_info(**info_kw))
        time.sleep(0.05)
        out = send(g, png_msg(rgb, next_stamp()))
        v = diag(g, NAME, lambda v: v['camera_info'].startswith('ignored') and field in v['camera_info'], 1.5)
        if v is not None:
            break
    d = depth_array(out)
    assert np.isfinite(d).all(), f'{case}: depth must not be inf/NaN: {d.min()}..{d.max()}'
    np.testing.assert_allclose(d, expected_depth(100), rtol=1e-5)       # the model's own intrinsics
    assert v is not None, f'{case}: camera_info note does not name {field}: {diag(g, NAME)["camera_info"]!r}'
    info = g.wait(lambda: next((m for m in g.msgs(f'{NS}/depth/camera_info')
                                if same_stamp(m.header.stamp, out.header.stamp)), None))
    assert info is not None, 'depth/camera_info is published for every depth frame'
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), [[INTR[0] * 384, 0, INTR[2] * 384],
                                                            [0, INTR[1] * 128, INTR[3] * 128], [0, 0, 1]])
    assert 'camera_info ignored' in log_text(g)


# ---------------------------------------------------------------------------- 5. stamps jump backwards
def test_objects_pair_again_after_the_stamps_jump_backwards(robust):
    g = robust
    rgb = np.full((128, 384, 3), 100, np.uint8)
    rgb[40:90, 100:200, 0] = 20
    labels = np.zeros((128, 384), np.int32)
    labels[40:90, 100:200] = 7

    def objects_for(stamp):
        send(g, png_msg(rgb, stamp))                               # depth first, the mask after it
        return send_and_wait(g, f'{NS}/instance_mask', label_msg(labels, stamp, '16UC1'), out=f'{NS}/objects')

    for _ in range(3):
        objects_for(next_stamp())
    s = next_stamp()
    back = type(s)(sec=s.sec - 100, nanosec=s.nanosec)             # a looped bag: 100 s back in time
    objs = objects_for(back)
    assert any(m.text == f'#7 {expected_depth(20):.1f} m' for m in objs.markers)
    later = type(s)(sec=back.sec + 1, nanosec=back.nanosec)
    objects_for(later)                                             # and it keeps pairing on the new timeline
    assert 'went backwards' in log_text(g)


# ---------------------------------------------------------------------------- 1. dead or stuck worker
_INJECT = '''
import sys, time
from dynadepth_ros import node

MODE = sys.argv.pop(1)


class InjectedFailure(BaseException):
    """Not an Exception: escapes the worker's own error handler, as a failing handler would."""


def broken(self, frames):
    if MODE == 'die':
        raise InjectedFailure('injected worker failure')
    time.sleep(3600)               # a hung driver call / inference


node.DepthNode._handle_frames = broken
sys.exit(node.main())
'''


def test_a_dead_or_stuck_worker_turns_diagnostics_error_and_the_process_exits_nonzero(tmp_path):
    model = make_contract_model(tmp_path / 'm.onnx')
    ns = '/dd_worker_ns'
    procs, logs = {}, {}
    for mode in ('die', 'hang'):
        logs[mode] = tmp_path / f'{mode}.log'
        with open(logs[mode], 'w') as log:
            procs[mode] = subprocess.Popen(
                [sys.executable, '-c', _INJECT, mode, '--ros-args', '-p', f'model_path:={model}',
                 '-p', 'intra_op_threads:=1', '-p', 'worker_timeout:=2.0', '-r', f'__node:=dd_{mode}',
                 '-r', f'__ns:={ns}'], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    g = Graph()
    try:
        g.sub(DiagnosticArray, '/diagnostics')
        pub = g.pub(Image, f'{ns}/image')
        assert g.wait(lambda: pub.get_subscription_count() >= 2, 30), {m: p.read_text() for m, p in logs.items()}
        owned = {mode: fastdds_files_of(proc.pid) for mode, proc in procs.items()}
        assert all(owned.values()), owned          # each node maps its own segment (the profile's shared memory)
        rgb = np.full((64, 192, 3), 80, np.uint8)
        want = {'die': 'worker thread died', 'hang': 'worker stuck'}
        seen = {}
        end = time.monotonic() + 30
        while time.monotonic() < end and len(seen) < 2:
            msg = Image(header=Header(stamp=next_stamp(), frame_id=FRAME), height=64, width=192, encoding='rgb8',
                        step=192 * 3, data=rgb.tobytes())
            pub.publish(msg)
            for mode in want:
                if mode not in seen:
                    v = diag(g, f'dd_{mode}', lambda v: v['_level'] == DiagnosticStatus.ERROR, 0.2)
                    if v is not None:
                        seen[mode] = v
            time.sleep(0.2)
        for mode, text in want.items():
            assert mode in seen, f'{mode}: /diagnostics never went ERROR; log:\n{logs[mode].read_text()[-3000:]}'
            assert text in seen[mode]['_message'], seen[mode]['_message']
        assert 'InjectedFailure: injected worker failure' in seen['die']['_message']
        for mode, proc in procs.items():
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                pytest.fail(f'{mode}: the process lives on with a dead worker; log:\n{logs[mode].read_text()[-3000:]}')
            assert code != 0, f'{mode}: exit status {code}'
            assert want[mode] in logs[mode].read_text()
    finally:
        for proc in procs.values():
            stop_process(proc)
        g.close()
    # a stuck worker still references the node at exit: its participant must be freed all the same, and with it
    # its shared-memory segment (32 MB with the profile), not left in /dev/shm. Port files are left out: a port is
    # shared by every process on the host that uses its number and goes when the last of them closes it.
    left = {mode: sorted(name for name in files if 'port' not in name and (Path('/dev/shm') / name).exists())
            for mode, files in owned.items()}
    assert not any(left.values()), f'Fast DDS shared memory left in /dev/shm: {left}'
