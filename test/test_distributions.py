"""What differs between ROS 2 distributions (dynadepth_ros.ros_compat), checked on the one this venv has, and
the node of the other venv (`make test` on Kilted runs a Jazzy node from .venv-jazzy, `make test
ROS_DISTRO=jazzy` a Kilted one from .venv, when it exists) talking to this one over DDS on the same host."""
import gc
import importlib
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from dynadepth_ros import ros_compat

rclpy = pytest.importorskip('rclpy')
from sensor_msgs.msg import Image  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from contract_model import expected_depth, make_contract_model  # noqa: E402
from test_node_graph import (depth_node_cmd, image_msg, label_msg, next_stamp, out_stamp, running_node,  # noqa: E402
                             same_stamp, stop_process, venv_env)

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / 'config' / 'fastdds_large_images.xml'
NEW, OLD = ros_compat.PROFILE_VARIABLES         # Fast DDS 3.x's name, Fast DDS 2.x's name
MAJOR = ros_compat.rclpy_major()
FASTDDS3 = ros_compat.fastdds_profile_variable(MAJOR) == NEW
SHIPPED_SEGMENT = 32 << 20                        # the profile's shared-memory segment (Fast DDS adds a little)
OTHER_NS = '/dd_other_ns'


# ---------------------------------------------------------------------------- the rules, per distribution
@pytest.mark.parametrize('major,variable', [(3, OLD), (4, OLD), (7, OLD), (9, NEW), (10, NEW), (None, None)])
def test_profile_variable_follows_the_fast_dds_major_version(major, variable):
    assert ros_compat.fastdds_profile_variable(major) == variable


def test_export_fastdds_profile_sets_the_variable_this_fast_dds_reads_and_overwrites_nothing():
    env = {NEW: '/p.xml'}
    assert ros_compat.export_fastdds_profile(env, major=7) == [OLD] and env == {NEW: '/p.xml', OLD: '/p.xml'}
    env = {NEW: '/p.xml'}
    assert ros_compat.export_fastdds_profile(env, major=9) == [] and env == {NEW: '/p.xml'}
    env = {OLD: '/old.xml'}                          # set the Jazzy way, running on Kilted
    assert ros_compat.export_fastdds_profile(env, major=9) == [NEW] and env[NEW] == '/old.xml'
    env = {NEW: '/a.xml', OLD: '/b.xml'}             # both set by the user: theirs
    assert ros_compat.export_fastdds_profile(env, major=7) == [] and env == {NEW: '/a.xml', OLD: '/b.xml'}
    env = {}
    assert ros_compat.export_fastdds_profile(env, major=7) == [] and env == {}


def test_without_rclpy_metadata_the_distribution_comes_from_ros_distro_and_else_both_names_are_set(monkeypatch):
    def no_metadata(name):
        raise ros_compat.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(ros_compat.metadata, 'version', no_metadata)
    assert ros_compat.rclpy_major({'ROS_DISTRO': 'humble'}) == 3
    assert ros_compat.rclpy_major({'ROS_DISTRO': 'jazzy'}) == 7
    env = {NEW: '/p.xml', 'ROS_DISTRO': 'jazzy'}
    assert ros_compat.export_fastdds_profile(env) == [OLD]
    env = {OLD: '/p.xml'}                            # no ROS_DISTRO either: unknown, so both names
    assert ros_compat.rclpy_major(env) is None
    assert ros_compat.export_fastdds_profile(env) == [NEW] and env == {OLD: '/p.xml', NEW: '/p.xml'}


def test_localhost_discovery_uses_ros_localhost_only_on_humble_only():
    assert ros_compat.localhost_discovery_env(3) == {'ROS_LOCALHOST_ONLY': '1'}
    for major in (4, 7, 9, None):
        assert ros_compat.localhost_discovery_env(major) == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}


def test_the_venv_has_the_distribution_make_asked_for():
    """`make test ROS_DISTRO=jazzy` must test the Jazzy wheels (the Makefile exports ROS_DISTRO)."""
    distro = os.environ.get('ROS_DISTRO')
    if distro not in ('kilted', 'jazzy'):
        pytest.skip('not run through make (ROS_DISTRO is not kilted or jazzy)')
    assert MAJOR == {'kilted': 9, 'jazzy': 7}[distro], f'{sys.prefix} has rclpy {MAJOR}.x, not {distro}'


def test_event_callbacks_come_from_event_handler_and_else_from_humbles_qos_event(monkeypatch):
    """Iron+: rclpy.event_handler (Jazzy and Kilted keep rclpy.qos_event only as a deprecated re-export of it);
    Humble has rclpy.qos_event alone, with the same two classes."""
    assert ros_compat.SubscriptionEventCallbacks.__module__ == 'rclpy.event_handler'
    assert ros_compat.PublisherEventCallbacks(incompatible_qos=print).incompatible_qos is print
    humble = types.ModuleType('rclpy.qos_event')
    humble.PublisherEventCallbacks, humble.SubscriptionEventCallbacks = object(), object()
    monkeypatch.setitem(sys.modules, 'rclpy.event_handler', None)      # no such module, as on Humble
    monkeypatch.setitem(sys.modules, 'rclpy.qos_event', humble)
    try:
        compat = importlib.reload(ros_compat)
        assert compat.PublisherEventCallbacks is humble.PublisherEventCallbacks
        assert compat.SubscriptionEventCallbacks is humble.SubscriptionEventCallbacks
    finally:
        monkeypatch.undo()
        importlib.reload(ros_compat)
    assert ros_compat.SubscriptionEventCallbacks.__module__ == 'rclpy.event_handler'


@pytest.mark.parametrize('has_events', [True, False], ids=['jazzy_kilted', 'humble'])
def test_spin_node_runs_callbacks_until_shutdown_with_the_events_executor_or_humbles_fallback(monkeypatch, has_events):
    """make_executor(node, 'events') makes an rclpy.experimental.EventsExecutor where it exists (Jazzy, Kilted:
    asserted here) and else the SingleThreadedExecutor; spin_node on either runs callbacks, lets a Python thread
    beside it have the GIL, and returns when the context shuts down."""
    assert ros_compat.EventsExecutor is not None                       # both venvs the suite runs on have it
    if not has_events:
        monkeypatch.setattr(ros_compat, 'EventsExecutor', None)
    assert ros_compat.resolve_executor('events') == ('events' if has_events else 'single_threaded')
    assert ros_compat.resolve_executor('single_threaded') == 'single_threaded'
    # auto: events from Kilted (rclpy 9) on, single_threaded on Jazzy (7) and Humble (3)
    assert [ros_compat.resolve_executor('auto', major) for major in (3, 7, 9, 10)] == \
        ['single_threaded', 'single_threaded'] + (['events'] * 2 if has_events else ['single_threaded'] * 2)
    assert ros_compat.resolve_executor('auto') == ros_compat.resolve_executor('auto', ros_compat.rclpy_major())
    with pytest.raises(ValueError, match='executor must be one of auto, events, single_threaded'):
        ros_compat.resolve_executor('multi_threaded')
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node('dd_spin_node_test', context=ctx)
    ticks, beside = [], []
    stop = threading.Event()

    def other_thread():
        while not stop.is_set():
            beside.append(1)
            time.sleep(0.005)

    def tick():
        ticks.append(time.monotonic())
        if len(ticks) == 5:
            ctx.try_shutdown()
    node.create_timer(0.05, tick)
    thread = threading.Thread(target=other_thread, daemon=True)
    thread.start()
    t0 = time.monotonic()
    try:
        executor = ros_compat.make_executor(node, 'events')
        assert type(executor).__name__ == ('EventsExecutor' if has_events else 'SingleThreadedExecutor')
        ros_compat.spin_node(node, executor, poll_sec=0.1)
    finally:
        stop.set()
        thread.join(5)
        node.destroy_node()
        ctx.try_shutdown()
    assert len(ticks) == 5 and time.monotonic() - t0 < 5
    assert len(beside) >= 10, 'the spin kept the GIL from other Python threads'


def test_depth_node_main_keeps_its_executor_until_rclpy_is_shut_down(monkeypatch):
    """An executor freed right after Ctrl-C can crash the process (Jazzy: rclpy's signal thread may still walk the
    guard-condition list the executor's destruction frees; depth_node died of SIGSEGV in about 1 of 10 Ctrl-Cs
    when spin_node owned its executor). main() holds it until after rclpy.try_shutdown() and
    uninstall_signal_handlers(), which joins that thread."""
    import weakref

    from dynadepth_ros import node as node_module

    made, alive_at_shutdown = [], []

    def interrupted_spin(node, executor, **kwargs):
        made.append(weakref.ref(executor))
        raise KeyboardInterrupt                            # as Ctrl-C arrives in the main thread

    real_shutdown = node_module.rclpy.try_shutdown

    def try_shutdown(*args, **kwargs):
        gc.collect()
        alive_at_shutdown.append(made[0]() is not None)
        return real_shutdown(*args, **kwargs)

    def uninstall_signal_handlers():                      # and the signal thread is joined before it is freed
        alive_at_shutdown.append(made[0]() is not None)
        real_uninstall()

    real_uninstall = node_module.uninstall_signal_handlers
    monkeypatch.setattr(node_module, 'spin_node', interrupted_spin)
    monkeypatch.setattr(node_module.rclpy, 'try_shutdown', try_shutdown)
    monkeypatch.setattr(node_module, 'uninstall_signal_handlers', uninstall_signal_handlers)
    assert node_module.main(['--ros-args', '-p', 'autostart:=false', '-r', '__node:=dd_main_executor']) == 0
    assert alive_at_shutdown == [True, True]


# ---------------------------------------------------------------------------- the profile, in real processes
SEGMENT = re.compile(r'/dev/shm/fast(?:dds|rtps)_[0-9a-f]{16}\b')


def _segments_on_host() -> set[str]:
    return {str(p) for p in Path('/dev/shm').iterdir() if SEGMENT.fullmatch(str(p))}


def _segment_sizes(pid, existing=frozenset()) -> list[int]:
    """Sizes of the Fast DDS shared-memory segments (/dev/shm/fastdds_<id>, Fast DDS 2.x: fastrtps_<id>) that
    process `pid` has mapped, leaving out `existing` ones: a participant also maps the segments of the other
    participants it discovers (a CI run saw a 32 MB one of another process next to a Jazzy probe's 0.5 MB own)."""
    maps = Path(f'/proc/{pid}/maps').read_text()
    return [os.stat(p).st_size for p in set(SEGMENT.findall(maps)) - set(existing)]


def _profile_env_as_documented():
    """The environment docs/node.md and the launch file give a process: the profile under the Fast DDS 3.x name
    only."""
    env = venv_env()
    env[NEW] = str(PROFILE)
    env.pop(OLD, None)
    return env


PARTICIPANT = textwrap.dedent('''
    import sys, time, rclpy
    if sys.argv[1] == 'compat':
        from dynadepth_ros.ros_compat import export_fastdds_profile
        export_fastdds_profile()
    rclpy.init()
    node = rclpy.create_node('profile_probe')
    print('ready', flush=True)
    sys.stdin.readline()        # until the test closes stdin: then a clean exit releases the segment
    node.destroy_node()
    rclpy.shutdown()
''')


@pytest.mark.parametrize('compat', [True, False], ids=['with_export_fastdds_profile', 'without'])
def test_a_participant_gets_the_shipped_profile_only_through_the_variable_its_fast_dds_reads(compat):
    """With FASTDDS_DEFAULT_PROFILES_FILE alone, Fast DDS 3.x (Kilted) uses the profile's 32 MB segment; Fast DDS
    2.x (Jazzy) ignores the variable and maps its default 0.5 MB one, unless export_fastdds_profile() ran first."""
    existing = _segments_on_host()
    proc = subprocess.Popen([sys.executable, '-c', PARTICIPANT, 'compat' if compat else 'plain'],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_profile_env_as_documented())
    try:
        assert proc.stdout.readline().strip() == 'ready'
        sizes = _segment_sizes(proc.pid, existing)
    finally:
        stop_process(proc, 15, ask=proc.stdin.close)
    assert sizes, 'no Fast DDS shared-memory segment mapped'
    assert (max(sizes) >= SHIPPED_SEGMENT) == (compat or FASTDDS3), sizes


def test_depth_node_uses_the_shipped_profile_given_as_documented(tmp_path):
    """The node's main() puts the profile where this distribution's Fast DDS looks (the launch file and
    docs/node.md set FASTDDS_DEFAULT_PROFILES_FILE, which Jazzy's Fast DDS 2.14 does not read)."""
    model = make_contract_model(tmp_path / 'contract.onnx')
    log = tmp_path / 'node.log'
    existing = _segments_on_host()
    with open(log, 'w') as f:
        proc = subprocess.Popen(depth_node_cmd() + ['--ros-args', '-p', f'model_path:={model}', '-r',
                                                    '__node:=dd_profile'], stdout=f, stderr=subprocess.STDOUT,
                                env=_profile_env_as_documented())
    try:
        deadline = time.monotonic() + 30
        while 'active:' not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert 'active:' in log.read_text(), log.read_text()
        sizes = _segment_sizes(proc.pid, existing)
    finally:
        stop_process(proc, 15)
    assert sizes and max(sizes) >= SHIPPED_SEGMENT, sizes


# ---------------------------------------------------------------------------- the other distribution's node
def _other_venv():
    """The venv of the other distribution `make` builds (.venv for Kilted, .venv-jazzy for Jazzy), if it exists."""
    here = Path(sys.prefix).resolve()
    for name in ('.venv', '.venv-jazzy'):
        venv = REPO / name
        if venv.resolve() != here and (venv / 'bin' / 'depth_node').exists():
            return venv
    return None


@pytest.fixture(scope='module')
def other_node(tmp_path_factory):
    venv = _other_venv()
    if venv is None:
        pytest.skip('no depth_node of the other distribution (make setup ROS_DISTRO=jazzy / make setup)')
    yield from running_node(tmp_path_factory.mktemp('other'), ns=OTHER_NS, name='dd_other', venv=venv)


def test_the_other_distributions_node_gets_every_frame_and_mask_of_ours(other_node):
    """Kilted (Fast DDS 3.x) and Jazzy (2.14) processes share no shared memory, so here everything goes over UDP
    on loopback; 640x480 rgb8 images with 32SC1 masks (0.9 + 1.2 MB, best effort) lost fragments in the
    default 208 KB socket buffers (measured: 5 of 30 depth images, masks nearly all lost) until the shipped
    profile asked for 4 MB ones. Once the first frame got through, ten frames at 10 Hz, each sent once: all give
    depth and objects. (With the old profile this failed 6 runs of 6, both ways; frames sent one at a time after
    the previous one's objects got through passed at times, as the receiving thread had time to drain.)"""
    g, ns = other_node, OTHER_NS
    rgb = np.full((480, 640, 3), 100, np.uint8)
    rgb[200:300, 250:400, 0] = 20
    labels = np.zeros((480, 640), np.int32)
    labels[200:300, 250:400] = 7
    img_pub, mask_pub = g.pub(Image, f'{ns}/image'), g.pub(Image, f'{ns}/instance_mask')

    def send_frame(timeout):
        """Publish an image and its mask once; the stamp, once its objects arrived or `timeout` passed."""
        s = next_stamp()
        img_pub.publish(image_msg(rgb, s))
        mask_pub.publish(label_msg(labels, s, '32SC1'))
        g.wait(lambda: any(same_stamp(out_stamp(m), s) for m in g.msgs(f'{ns}/objects')), timeout)
        return s

    # the first best-effort messages can go before the node's readers have matched our writers: warm up
    assert any(any(same_stamp(out_stamp(m), s) for m in g.msgs(f'{ns}/objects'))
               for s in (send_frame(2.0) for _ in range(5))), g.log_path.read_text()[-2000:]
    stamps = [send_frame(0.1) for _ in range(10)]          # a 10 Hz camera with its segmenter
    g.wait(lambda: any(same_stamp(out_stamp(m), stamps[-1]) for m in g.msgs(f'{ns}/objects')), 5.0)
    time.sleep(0.5)
    depth = sum(any(same_stamp(m.header.stamp, s) for m in g.msgs(f'{ns}/depth')) for s in stamps)
    got = [m for m in g.msgs(f'{ns}/objects') if any(same_stamp(out_stamp(m), s) for s in stamps)]
    objects = len(got)
    for m in got:
        body = next(b for b in m.markers if b.action == Marker.ADD and b.ns == 'dynadepth_objects')
        assert body.id == 7 and body.pose.position.z == pytest.approx(expected_depth(20), rel=0.01)
    assert (depth, objects) == (10, 10), f'{depth}/10 depth, {objects}/10 objects from the other distribution; ' \
                                         f'node log:\n{g.log_path.read_text()[-2000:]}'
