"""The depth node in a real ROS 2 graph over DDS: one `depth_node` process shared by this module, driven from
the test process with rclpy (reliable publishers like a camera driver, REP 2003).

Tests run in file order on purpose: the node caches the latest camera_info, so everything that must see no
camera_info comes before test_camera_info_*, and what follows relies on the calibration that test leaves.
"""
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rcl_interfaces.msg import ParameterType  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from contract_model import expected_depth, make_contract_model  # noqa: E402
from test_image_codec import BAYER, bayer_mosaic, yuv422_rows  # noqa: E402

NS, NAME = '/dd_graph_ns', 'dd_graph'
FQN = f'{NS}/{NAME}'
FRAME = 'cam_optical'
INTR = (0.58, 1.92, 0.5, 0.5)           # contract model training intrinsics (normalised)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def depth_node_cmd(venv=None):
    """depth_node of this venv, or of `venv` (another one, e.g. of another ROS 2 distribution)."""
    exe = Path(venv or sys.prefix) / 'bin' / 'depth_node'
    return [str(exe)] if exe.exists() or venv else [sys.executable, '-m', 'dynadepth_ros.node']


def venv_env(venv=None):
    """Environment for a process of this venv, or of `venv`: the pip ROS wheels re-exec Python with their own
    LD_LIBRARY_PATH and mark it in _ROS_WHEELS_BOOTSTRAP_COMPLETE; another venv's Python that inherited both
    would skip its own set-up and load our libraries (e.g. Fast DDS 3.x instead of 2.14)."""
    env = os.environ.copy()
    if venv is not None:
        for var in ('_ROS_WHEELS_BOOTSTRAP_COMPLETE', 'LD_LIBRARY_PATH'):
            env.pop(var, None)
        env['AMENT_PREFIX_PATH'] = str(venv)
    return env


def fastdds_files_of(pid: int) -> set[str]:
    """The Fast DDS shared-memory files in /dev/shm that process `pid` owns: each lock file (`*_el`) it holds a
    flock on (/proc/locks gives holder pid and device:inode), with the segment or port file it guards. Fast DDS
    removes them when the process frees its participant; any of them left after the process ended is a leak."""
    held = set()
    for line in Path('/proc/locks').read_text().splitlines():
        f = line.split()            # '1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF' ('->' marks a waiter)
        if len(f) >= 6 and f[1] == 'FLOCK' and f[4] == str(pid):
            major, minor, inode = f[5].split(':')
            held.add((int(major, 16), int(minor, 16), int(inode)))
    out = set()
    for lock in Path('/dev/shm').glob('fast*_el'):
        try:
            st = lock.stat()
        except FileNotFoundError:
            continue
        if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in held:
            out |= {lock.name, lock.name[:-len('_el')]}
    return out


def stop_process(proc, timeout=10.0, ask=None):
    """Ctrl-C a ROS process (or `ask` it to end another way, e.g. by closing its stdin) and wait for it; kill it
    only if it is still running `timeout` s later. A killed process leaves its Fast DDS shared-memory segment in
    /dev/shm (measured: the node modules left 42 files, 273 MB, per run when their nodes were killed; they add
    up over runs until memory runs out)."""
    if proc.poll() is not None:
        return
    try:
        (ask or (lambda: proc.send_signal(signal.SIGINT)))()
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, OSError):
        proc.kill()
        proc.wait()


class Graph:
    """Test-side ROS node spinning in a background thread; received messages collected per topic."""

    def __init__(self):
        self.ctx = Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node('dd_test_client', context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.got = defaultdict(list)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        self.pubs = {}

    def _spin(self):
        # a loop close() can end: shutting the executor down or destroying the node while another thread waits in
        # executor.spin() crashed the test process once (SIGSEGV in the spin thread, Jazzy)
        while not self._stop.is_set() and self.ctx.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:
                return

    def sub(self, mtype, topic, qos=RELIABLE):
        def cb(msg):
            with self.lock:
                self.got[topic].append(msg)
        return self.node.create_subscription(mtype, topic, cb, qos)

    def pub(self, mtype, topic, qos=RELIABLE):
        if topic not in self.pubs:
            self.pubs[topic] = self.node.create_publisher(mtype, topic, qos)
        return self.pubs[topic]

    def msgs(self, topic):
        with self.lock:
            return list(self.got[topic])

    @staticmethod
    def wait(pred, timeout=15.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = pred()
            if r:
                return r
            time.sleep(0.01)
        return pred()

    def call(self, future, timeout=15.0):
        assert self.wait(future.done, timeout), 'service call timed out'
        return future.result()

    def close(self):
        self._stop.set()
        self.thread.join(5)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


_last_stamp = [0]


def next_stamp():
    """A unique, increasing stamp from the wall clock (the node's stamp→publish latency uses it)."""
    ns = max(time.time_ns(), _last_stamp[0] + 1000)
    _last_stamp[0] = ns
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def stamp_ns(t):
    return t.sec * 1_000_000_000 + t.nanosec


def same_stamp(a, b):
    return a.sec == b.sec and a.nanosec == b.nanosec


def image_msg(rgb, stamp, encoding='rgb8'):
    conv = {'rgb8': lambda a: a, 'bgr8': lambda a: a[..., ::-1],
            'rgba8': lambda a: np.dstack([a, np.full(a.shape[:2], 77, np.uint8)]),
            'bgra8': lambda a: np.dstack([a[..., ::-1], np.full(a.shape[:2], 77, np.uint8)]),
            'mono8': lambda a: a[..., 0],
            # camera driver encodings, from the independent encoders of test_image_codec
            'yuv422': lambda a: yuv422_rows(a, 'UYVY'), 'yuv422_yuy2': lambda a: yuv422_rows(a, 'YUYV'),
            'rgb16': lambda a: a.astype(np.uint16) * 257}
    conv.update({enc: (lambda a, p=pattern: bayer_mosaic(a, p)) for enc, pattern in BAYER.items()})
    conv.update({enc.replace('8', '16'): (lambda a, p=pattern: bayer_mosaic(a.astype(np.uint16) * 257, p))
                 for enc, pattern in BAYER.items()})
    arr = np.ascontiguousarray(conv[encoding](rgb))
    h, w = rgb.shape[:2]
    return Image(header=Header(stamp=stamp, frame_id=FRAME), height=h, width=w, encoding=encoding,
                 step=arr.strides[0], is_bigendian=0, data=arr.tobytes())


def label_msg(labels, stamp, encoding):
    dt = {'mono8': np.uint8, '16UC1': np.uint16, '32SC1': np.int32}[encoding]
    arr = np.ascontiguousarray(labels.astype(dt))
    return Image(header=Header(stamp=stamp, frame_id=FRAME), height=arr.shape[0], width=arr.shape[1],
                 encoding=encoding, step=arr.strides[0], data=arr.tobytes())


def camera_info_msg(w, h, fx, fy, stamp):
    K = [fx, 0.0, w / 2, 0.0, fy, h / 2, 0.0, 0.0, 1.0]
    return CameraInfo(header=Header(stamp=stamp, frame_id=FRAME), width=w, height=h, distortion_model='plumb_bob',
                      d=[0.0] * 5, k=K, r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                      p=[fx, 0.0, w / 2, -fx * 0.12, 0.0, fy, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0])


def depth_array(msg):
    assert msg.encoding == '32FC1' and msg.is_bigendian == 0 and msg.step == msg.width * 4
    return np.frombuffer(bytes(msg.data), '<f4').reshape(msg.height, msg.width)


def running_node(d, image_type=Image, image_topic='image', params=(), ns=NS, name=NAME, venv=None):
    """Start depth_node (contract model under d, log d/node.log) with `params` ('name:=value'), subscribe to its
    outputs and /diagnostics, publish `image_type` on `image_topic` and a mask; yield the Graph once the node
    is connected, then stop it. For module fixtures: `yield from running_node(...)`. ns, name: the node's;
    venv: run the depth_node of that venv instead of this one's."""
    model = make_contract_model(d / 'contract.onnx')
    log_path = d / 'node.log'
    extra = [a for p in params for a in ('-p', p)]
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(depth_node_cmd(venv) + [
            '--ros-args', '-p', f'model_path:={model}', '-p', 'intra_op_threads:=1', *extra,
            '-r', f'__node:={name}', '-r', f'__ns:={ns}'], stdout=log, stderr=subprocess.STDOUT, env=venv_env(venv))
    g = Graph()
    g.proc, g.log_path, g.model = proc, log_path, model
    for mtype, topic in ((Image, 'depth'), (CameraInfo, 'depth/camera_info'), (MarkerArray, 'objects')):
        g.sub(mtype, f'{ns}/{topic}')
    g.sub(DiagnosticArray, '/diagnostics')
    img_pub = g.pub(image_type, f'{ns}/{image_topic}')
    mask_pub = g.pub(Image, f'{ns}/instance_mask')     # a mask source exists from the start, like a segmenter
    ok = g.wait(lambda: img_pub.get_subscription_count() > 0 and mask_pub.get_subscription_count() > 0
                and g.node.count_publishers(f'{ns}/depth') > 0, 30)
    if not ok:
        proc.kill()
        pytest.fail(f'depth_node did not come up; log:\n{log_path.read_text()}')
    yield g
    stop_process(proc)
    g.close()


@pytest.fixture(scope='module')
def graph(tmp_path_factory):
    yield from running_node(tmp_path_factory.mktemp('node'))


def out_stamp(m):
    return m.markers[0].header.stamp if isinstance(m, MarkerArray) else m.header.stamp


def send_and_wait(g, topic, msg, mtype=Image, out=f'{NS}/depth', tries=3, timeout=5.0):
    """Publish msg (retrying: best-effort delivery) until the output with its stamp arrives; return that output."""
    pub = g.pub(mtype, topic)
    for _ in range(tries):
        pub.publish(msg)
        got = g.wait(lambda: next((m for m in g.msgs(out) if same_stamp(out_stamp(m), msg.header.stamp)), None),
                     timeout)
        if got is not None:
            return got
    raise AssertionError(f'no {out} for stamp {stamp_ns(msg.header.stamp)}; node log:\n{g.log_path.read_text()[-3000:]}')


def diag(g, name, pred=lambda v: True, timeout=10.0, after=0):
    """Values (+ _level, _message, _hw) of the newest /diagnostics status of node `name` satisfying pred, or None;
    `after`: only among the /diagnostics messages received after the first `after` ones."""
    def find():
        for arr in reversed(g.msgs('/diagnostics')[after:]):
            for st in arr.status:
                if st.name == f'{name}: depth':
                    v = {kv.key: kv.value for kv in st.values}
                    v['_level'], v['_message'], v['_hw'] = st.level, st.message, st.hardware_id
                    return v if pred(v) else None
        return None
    return g.wait(find, timeout)


def diag_values(g, pred=lambda v: True, timeout=10.0):
    """Values of the newest /diagnostics status of our node satisfying pred."""
    v = diag(g, NAME, pred, timeout)
    assert v is not None, 'no matching /diagnostics status'
    return v


def settled_diag_values(g, timeout=10.0):
    """Counters of a /diagnostics status published from now on with no frame in flight (frames_in = out + dropped
    + bad): the newest status already received can predate the last frames of an earlier test (1 Hz)."""
    v = diag(g, NAME, lambda v: int(v['frames_out']) + int(v['dropped_frames']) + int(v['bad_frames'])
             == int(v['frames_in']), timeout, after=len(g.msgs('/diagnostics')))
    assert v is not None, 'no settled /diagnostics status'
    return v


# ---------------------------------------------------------------------------- no camera_info yet
def test_depth_is_rep118_metres_with_the_image_header_and_nan_outside_the_crop(graph):
    rgb = np.zeros((192, 640, 3), np.uint8)
    rgb[..., 0] = 200
    msg = image_msg(rgb, next_stamp())
    out = send_and_wait(graph, f'{NS}/image', msg)
    assert out.header.frame_id == FRAME and same_stamp(out.header.stamp, msg.header.stamp)
    d = depth_array(out)
    assert d.shape == (192, 640)
    assert np.isnan(d[:, :32]).all() and np.isnan(d[:, -32:]).all()        # outside the 3:1 centre crop
    np.testing.assert_allclose(d[:, 32:-32], expected_depth(200), rtol=1e-5)
    # no camera_info in: depth/camera_info still comes, with the intrinsics the model assumed — its training
    # intrinsics on the 576x192 centre crop (3:1 like the 192x64 model input), offset by the 32 cropped columns
    info = graph.wait(lambda: next((m for m in graph.msgs(f'{NS}/depth/camera_info')
                                    if same_stamp(m.header.stamp, msg.header.stamp)), None))
    assert info is not None and info.header.frame_id == FRAME and (info.width, info.height) == (640, 192)
    fx, fy, cx, cy = INTR[0] * 576, INTR[1] * 192, INTR[2] * 576 + 32, INTR[3] * 192
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], rtol=1e-9)
    np.testing.assert_allclose(np.reshape(info.p, (3, 4)), [[fx, 0, cx, 0], [0, fy, cy, 0], [0, 0, 1, 0]], rtol=1e-9)
    assert info.distortion_model == 'plumb_bob' and not any(info.d)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'])
def test_every_supported_encoding(graph, encoding):
    rgb = np.empty((128, 384, 3), np.uint8)
    rgb[...] = (60, 180, 240)                  # a swapped channel order would read red as 240
    out = send_and_wait(graph, f'{NS}/image', image_msg(rgb, next_stamp(), encoding))
    np.testing.assert_allclose(depth_array(out), expected_depth(60), rtol=1e-5)


@pytest.mark.parametrize('encoding', ['yuv422_yuy2', 'yuv422', 'bayer_rggb8', 'bayer_gbrg8', 'bayer_grbg16', 'rgb16'])
def test_camera_driver_encodings_give_depth(graph, encoding):
    """What usb_cam / UVC (YUYV), other drivers (UYVY), industrial cameras (Bayer) and 16-bit cameras publish."""
    rgb = np.empty((128, 384, 3), np.uint8)
    rgb[...] = (60, 180, 240)                  # red 60; a wrong conversion reads another channel (180, 240)
    out = send_and_wait(graph, f'{NS}/image', image_msg(rgb, next_stamp(), encoding))
    d = depth_array(out)
    assert d.shape == (128, 384)
    # YUV: red comes back within 3 of 60 (8-bit Y/U/V rounding); Bayer (8 and 16 bit) and rgb16: exactly 60 (flat)
    np.testing.assert_allclose(d, expected_depth(60), atol=float(expected_depth(63) - expected_depth(60)))


def test_1280x720_end_to_end(graph):
    rgb = np.zeros((720, 1280, 3), np.uint8)
    rgb[..., 0] = 150
    out = send_and_wait(graph, f'{NS}/image', image_msg(rgb, next_stamp()), timeout=10.0)
    d = depth_array(out)
    assert d.shape == (720, 1280)
    y0 = (720 - 427) // 2
    assert np.isnan(d[:y0 - 1]).all() and np.isnan(d[y0 + 428:]).all()
    np.testing.assert_allclose(d[y0 + 1:y0 + 426], expected_depth(150), rtol=1e-5)



def test_objects_from_1280x720_frames_with_32SC1_masks_every_time(graph):
    """A 3.7 MB mask right behind a 2.7 MB image, both best effort (the node's sensor-data QoS), three frames
    one after the other: each gives its objects, without a resend. This is what the shipped FastDDS profile is
    for; Fast DDS 2.x (Jazzy) reads it only from FASTRTPS_DEFAULT_PROFILES_FILE, and without it some images or
    masks of every few frames are lost."""
    rgb = np.full((720, 1280, 3), 100, np.uint8)
    rgb[300:420, 500:700, 0] = 20
    labels = np.zeros((720, 1280), np.int32)
    labels[300:420, 500:700] = 7
    img_pub, mask_pub = graph.pub(Image, f'{NS}/image'), graph.pub(Image, f'{NS}/instance_mask')
    for _ in range(3):
        s = next_stamp()
        img_pub.publish(image_msg(rgb, s))
        mask_pub.publish(label_msg(labels, s, '32SC1'))
        objs = graph.wait(lambda: next((m for m in graph.msgs(f'{NS}/objects') if same_stamp(out_stamp(m), s)),
                                       None), 10)
        assert objs is not None, f'no objects for a 1280x720 frame; node log:\n{graph.log_path.read_text()[-2000:]}'
        body, _ = _object(objs)
        assert body.pose.position.z == pytest.approx(expected_depth(20), rel=0.01)

def test_bad_frames_are_skipped_counted_and_logged_and_the_node_keeps_running(graph):
    good = np.full((128, 384, 3), 30, np.uint8)
    wrong = image_msg(good, next_stamp())
    wrong.encoding = 'nv21'                        # a ROS encoding the node does not decode
    short = image_msg(good, next_stamp())
    short.data = bytes(short.data)[:1000]
    depth_in = Image(header=Header(stamp=next_stamp(), frame_id=FRAME), height=128, width=384, encoding='32FC1',
                     step=384 * 4, data=bytes(384 * 4 * 128))
    pub = graph.pub(Image, f'{NS}/image')
    for m in (wrong, short, depth_in):
        pub.publish(m)
        time.sleep(0.05)
    out = send_and_wait(graph, f'{NS}/image', image_msg(good, next_stamp()))
    np.testing.assert_allclose(depth_array(out), expected_depth(30), rtol=1e-5)
    v = diag_values(graph, lambda v: int(v['bad_frames']) >= 3)
    assert graph.proc.poll() is None
    log = graph.wait(lambda: (lambda t: t if "'nv21'" in t and 'needs' in t else None)(graph.log_path.read_text()))
    assert log and 'skipping camera frame' in log, graph.log_path.read_text()[-2000:]
    assert 'is not supported' in v['last_bad_frame'] or 'needs' in v['last_bad_frame']
    bad = [m for m in graph.msgs(f'{NS}/depth') if any(same_stamp(m.header.stamp, b.header.stamp)
                                                       for b in (wrong, short, depth_in))]
    assert not bad, 'bad frames must not produce depth'


def test_latest_frame_wins_counts_drops_and_never_builds_a_backlog(graph):
    before = settled_diag_values(graph)
    rgb = np.full((128, 384, 3), 90, np.uint8)
    pub = graph.pub(Image, f'{NS}/image')
    stamps = [next_stamp() for _ in range(100)]
    for s in stamps:
        pub.publish(image_msg(rgb, s))
    last = graph.wait(lambda: next((m for m in graph.msgs(f'{NS}/depth') if same_stamp(m.header.stamp, stamps[-1])),
                                   None), 20)
    assert last is not None, 'the newest frame of a burst must always be processed'
    secs = [stamp_ns(m.header.stamp) for m in graph.msgs(f'{NS}/depth')
            if stamp_ns(stamps[0]) <= stamp_ns(m.header.stamp)]
    assert secs == sorted(secs), 'frames are processed in order, never an older one after a newer'
    v = diag_values(graph, lambda v: int(v['frames_out']) + int(v['dropped_frames']) + int(v['bad_frames'])
                    == int(v['frames_in']) and int(v['frames_out']) >= int(before['frames_out']) + len(secs))
    dropped = int(v['dropped_frames']) - int(before['dropped_frames'])
    assert dropped > 0 and len(secs) < 100
    assert dropped == (int(v['frames_in']) - int(before['frames_in'])) - len(secs)


def test_diagnostics_report_rates_latency_backend_and_model(graph):
    rgb = np.full((128, 384, 3), 90, np.uint8)
    for _ in range(5):
        send_and_wait(graph, f'{NS}/image', image_msg(rgb, next_stamp()))
    v = diag_values(graph, lambda v: float(v['input_rate_hz']) > 0 and v['latency_p50_ms'] != 'nan')
    assert v['state'] == 'active' and v['backend'] == 'onnxruntime[CPUExecutionProvider]'
    assert v['model'] == str(graph.model) and v['_hw'] == graph.model.name
    assert v['model_stage'] == 'final' and v['model_metric'] == 'true' and v['model_input'] == '192x64'
    for key in ('latency_p50_ms', 'latency_p95_ms', 'latency_p99_ms', 'inference_p50_ms', 'overhead_p50_ms'):
        assert 0 <= float(v[key]) < 60_000, key
    assert float(v['latency_p50_ms']) <= float(v['latency_p95_ms']) <= float(v['latency_p99_ms'])
    assert float(v['output_rate_hz']) > 0 and 'dropped_frames' in v
    assert 'TensorRT is not installed' in v['backend_notes']
    assert v['camera_info'] == 'no camera_info received'


# ---------------------------------------------------------------------------- camera_info
def test_camera_info_gives_scaled_depth_camera_info_and_focal_compensation(graph):
    params = AsyncParameterClient(graph.node, FQN)
    assert params.wait_for_services(10)
    res = graph.call(params.set_parameters([Parameter('output_width', value=192), Parameter('output_height', value=64)]))
    assert all(r.successful for r in res.results)
    fx, fy = 2 * INTR[0] * 384, 2 * INTR[1] * 128           # twice the training focal → depth x2
    rgb = np.full((128, 384, 3), 100, np.uint8)
    info_pub = graph.pub(CameraInfo, f'{NS}/camera_info')
    stamp = next_stamp()
    img = image_msg(rgb, stamp)
    for _ in range(20):                                         # camera drivers publish info with every frame
        info_pub.publish(camera_info_msg(384, 128, fx, fy, stamp))
        time.sleep(0.05)
        try:
            out = send_and_wait(graph, f'{NS}/image', img, tries=1, timeout=2.0)
        except AssertionError:
            continue
        if abs(float(np.nanmean(depth_array(out))) / expected_depth(100) - 2.0) < 1e-3:
            break
        img = image_msg(rgb, stamp := next_stamp())
    d = depth_array(out)
    assert d.shape == (64, 192)
    np.testing.assert_allclose(d, 2.0 * expected_depth(100), rtol=1e-5)
    info = graph.wait(lambda: next((m for m in graph.msgs(f'{NS}/depth/camera_info')
                                    if same_stamp(m.header.stamp, stamp)), None))
    assert info is not None and info.header.frame_id == FRAME
    assert (info.width, info.height) == (192, 64)
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), [[fx / 2, 0, 96], [0, fy / 2, 32], [0, 0, 1]])
    np.testing.assert_allclose(info.p[3], -fx * 0.12 / 2)
    # leave a calibration equal to the training intrinsics (scale 1) at the input size for the next tests
    res = graph.call(params.set_parameters([Parameter('output_width', value=0), Parameter('output_height', value=0)]))
    assert all(r.successful for r in res.results)
    for _ in range(20):
        s = next_stamp()
        info_pub.publish(camera_info_msg(384, 128, fx / 2, fy / 2, s))
        time.sleep(0.05)
        d = depth_array(send_and_wait(graph, f'{NS}/image', image_msg(rgb, s)))
        if d.shape == (128, 384) and abs(float(np.nanmean(d)) / expected_depth(100) - 1.0) < 1e-3:
            break
    else:
        pytest.fail('the training-intrinsics camera_info did not take effect')


# ---------------------------------------------------------------------------- masks and objects
def _scene():
    rgb = np.full((128, 384, 3), 100, np.uint8)
    rgb[40:90, 100:200, 0] = 20
    labels = np.zeros((128, 384), np.int32)
    labels[40:90, 100:200] = 7
    return rgb, labels


def _object(markers_msg):
    bodies = [m for m in markers_msg.markers if m.ns == 'dynadepth_objects' and m.action == Marker.ADD]
    texts = [m for m in markers_msg.markers if m.ns == 'dynadepth_labels']
    assert markers_msg.markers[0].action == Marker.DELETEALL
    assert len(bodies) == 1 and len(texts) == 1 and bodies[0].id == 7
    assert markers_msg.markers[0].header.frame_id == FRAME
    return bodies[0], texts[0]


def _check_object(body, text):
    z = expected_depth(20)
    fx = INTR[0] * 384
    assert body.pose.position.z == pytest.approx(z, rel=0.01)
    assert body.pose.position.x == pytest.approx((149.5 - 192) / fx * z, abs=0.03)
    assert text.text == f'#7 {z:.1f} m'


def test_objects_from_a_late_mask(graph):
    rgb, labels = _scene()
    s = next_stamp()
    send_and_wait(graph, f'{NS}/image', image_msg(rgb, s))          # depth first: it never waits for the mask
    objs = send_and_wait(graph, f'{NS}/instance_mask', label_msg(labels, s, '16UC1'), out=f'{NS}/objects')
    _check_object(*_object(objs))


def test_objects_from_an_early_mask_of_another_size(graph):
    rgb, labels = _scene()
    s = next_stamp()
    small = cv2.resize(labels.astype(np.uint8), (192, 64), interpolation=cv2.INTER_NEAREST)
    graph.pub(Image, f'{NS}/instance_mask').publish(label_msg(small, s, 'mono8'))
    time.sleep(0.2)
    send_and_wait(graph, f'{NS}/image', image_msg(rgb, s))
    objs = graph.wait(lambda: next((m for m in graph.msgs(f'{NS}/objects')
                                    if same_stamp(m.markers[0].header.stamp, s)), None))
    assert objs is not None, 'a half-size mask must be rescaled (nearest) and paired'
    _check_object(*_object(objs))
    assert int(diag_values(graph, lambda v: int(v['masks_resized']) >= 1)['masks_resized']) >= 1


def test_missing_mask_gives_depth_but_no_objects(graph):
    rgb, _ = _scene()
    before = int(diag_values(graph)['objects_unpaired'])
    s = next_stamp()
    send_and_wait(graph, f'{NS}/image', image_msg(rgb, s))
    diag_values(graph, lambda v: int(v['objects_unpaired']) > before)   # given up after mask_max_wait
    assert not [m for m in graph.msgs(f'{NS}/objects') if same_stamp(m.markers[0].header.stamp, s)]


def test_bad_mask_is_skipped_counted_and_the_node_keeps_running(graph):
    before = int(diag_values(graph)['bad_masks'])
    rgb, labels = _scene()
    s = next_stamp()
    bad = label_msg(labels, s, '16UC1')
    bad.encoding = 'rgb8'                          # a colour image is not an instance label image
    graph.pub(Image, f'{NS}/instance_mask').publish(bad)
    v = diag_values(graph, lambda v: int(v['bad_masks']) > before)
    assert graph.proc.poll() is None and v['state'] == 'active'
    assert 'is not a label image' in graph.log_path.read_text()
    send_and_wait(graph, f'{NS}/image', image_msg(rgb, next_stamp()))


# ---------------------------------------------------------------------------- depth/colored
def test_colored_depth_is_computed_only_while_subscribed(graph):
    rgb = np.full((128, 384, 3), 100, np.uint8)
    c0 = int(diag_values(graph)['colored_published'])
    s = next_stamp()
    send_and_wait(graph, f'{NS}/image', image_msg(rgb, s))
    v = diag_values(graph, lambda v: int(v['frames_out']) > 0 and v['_message'] != '')
    time.sleep(1.2)
    assert int(diag_values(graph)['colored_published']) == c0, 'no subscriber: nothing computed'
    graph.sub(Image, f'{NS}/depth/colored')
    got = None
    for _ in range(30):
        out = send_and_wait(graph, f'{NS}/image', image_msg(rgb, next_stamp()))
        got = graph.wait(lambda: next((m for m in graph.msgs(f'{NS}/depth/colored')
                                       if same_stamp(m.header.stamp, out.header.stamp)), None), 1.0)
        if got is not None:
            break
    assert got is not None and got.encoding == 'bgr8' and (got.height, got.width) == (128, 384)
    assert got.header.frame_id == FRAME
    assert int(diag_values(graph, lambda v: int(v['colored_published']) > c0)['colored_published']) > c0
    assert v['state'] == 'active'


# ---------------------------------------------------------------------------- lifecycle, compressed, parameters
def _transition(graph, tid):
    cli = graph.node.create_client(ChangeState, f'{FQN}/change_state')
    assert cli.wait_for_service(10)
    assert graph.call(cli.call_async(ChangeState.Request(transition=Transition(id=tid)))).success


def test_compressed_input_after_lifecycle_reconfiguration(graph):
    params = AsyncParameterClient(graph.node, FQN)
    assert params.wait_for_services(10)
    res = graph.call(params.set_parameters([Parameter('image_transport', value='compressed')]))
    assert not res.results[0].successful and 'activate' in res.results[0].reason     # not while active
    _transition(graph, Transition.TRANSITION_DEACTIVATE)
    res = graph.call(params.set_parameters([Parameter('model_path', value='/elsewhere.onnx')]))
    assert not res.results[0].successful and 'configure' in res.results[0].reason    # needs unconfigured
    res = graph.call(params.set_parameters([Parameter('image_transport', value='compressed')]))
    assert res.results[0].successful
    _transition(graph, Transition.TRANSITION_ACTIVATE)
    try:
        rgb = np.full((128, 384, 3), 100, np.uint8)
        rgb[..., 1] = 40
        topic = f'{NS}/image/compressed'
        graph.pub(CompressedImage, topic)
        assert graph.wait(lambda: graph.pubs[topic].get_subscription_count() > 0)
        for fmt, ext, tol in (('png', '.png', 1e-5), ('jpeg', '.jpg', 0.03)):
            ok, buf = cv2.imencode(ext, rgb[..., ::-1].copy())
            msg = CompressedImage(header=Header(stamp=next_stamp(), frame_id=FRAME), format=fmt, data=buf.tobytes())
            out = send_and_wait(graph, topic, msg, mtype=CompressedImage)
            np.testing.assert_allclose(depth_array(out), expected_depth(100), rtol=tol)
        before = int(diag_values(graph)['bad_frames'])
        graph.pubs[topic].publish(CompressedImage(header=Header(stamp=next_stamp()), format='jpeg', data=b'\x00' * 50))
        diag_values(graph, lambda v: int(v['bad_frames']) > before and 'decoded' in v['last_bad_frame'])
    finally:
        _transition(graph, Transition.TRANSITION_DEACTIVATE)
        assert graph.call(params.set_parameters([Parameter('image_transport', value='raw')])).results[0].successful
        _transition(graph, Transition.TRANSITION_ACTIVATE)
    send_and_wait(graph, f'{NS}/image', image_msg(np.full((128, 384, 3), 10, np.uint8), next_stamp()))


def test_parameters_have_descriptors_and_reject_impossible_changes(graph):
    params = AsyncParameterClient(graph.node, FQN)
    assert params.wait_for_services(10)
    desc = {d.name: d for d in graph.call(params.describe_parameters(
        ['model_path', 'backend', 'precision', 'output_width', 'trt_tolerance', 'autostart'])).descriptors}
    assert desc['model_path'].type == ParameterType.PARAMETER_STRING and desc['model_path'].description
    assert 'auto, tensorrt, onnxruntime' in desc['backend'].additional_constraints
    assert 'fp32, fp16' in desc['precision'].additional_constraints
    assert desc['output_width'].integer_range[0].to_value == 16384
    assert desc['trt_tolerance'].floating_point_range[0].from_value > 0
    assert desc['autostart'].read_only
    res = graph.call(params.set_parameters([Parameter('output_width', value=-5)])).results[0]
    assert not res.successful
    res = graph.call(params.set_parameters([Parameter('autostart', value=False)])).results[0]
    assert not res.successful
    res = graph.call(params.set_parameters([Parameter('precision', value='fp16')])).results[0]
    assert not res.successful and 'takes effect on configure' in res.reason
    names = graph.call(params.list_parameters(prefixes=['qos_overrides'], depth=10)).result.names
    assert f'qos_overrides.{NS}/image.subscription.reliability' in names
    assert f'qos_overrides.{NS}/depth.publisher.reliability' in names
    vals = graph.call(params.get_parameters([f'qos_overrides.{NS}/image.subscription.reliability',
                                             f'qos_overrides.{NS}/depth.publisher.reliability'])).values
    assert [v.string_value for v in vals] == ['best_effort', 'reliable']       # REP 2003 defaults
    assert graph.call(params.set_parameters([Parameter('output_width', value=192)])).results[0].successful
    try:
        out = send_and_wait(graph, f'{NS}/image', image_msg(np.full((128, 384, 3), 10, np.uint8), next_stamp()))
        assert (out.height, out.width) == (64, 192), 'one output side given: the other keeps the aspect ratio'
    finally:
        assert graph.call(params.set_parameters([Parameter('output_width', value=0)])).results[0].successful


def test_sigint_shuts_the_node_down_cleanly(graph):
    graph.proc.send_signal(signal.SIGINT)
    assert graph.proc.wait(15) == 0
    assert 'Traceback' not in graph.log_path.read_text()
