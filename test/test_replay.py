"""dynadepth-replay over a real ROS 2 graph: bag → live depth node → recording → dynadepth-eval-bag.

Processes: the depth node (`depth_node`, contract ONNX model on ONNX Runtime) and the replayer run as
separate processes talking over DDS (localhost, per-run domain from conftest.py).
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bag_builders import FPS, T0_NS, BagSpec, write_eval_bag
from contract_model import make_contract_model

from dynadepth_ros.metrics import METRIC_NAMES, MODES
from dynadepth_ros.recording import eval_bag
from dynadepth_ros.recording.bag_reader import BagReader, cdr_header_stamp_ns
from dynadepth_ros.recording.replay import ClockPublisher, bag_time_ns, build_parser, due_offset_s, message_class

pytest.importorskip('rclpy')
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_node_graph import Graph, depth_node_cmd, diag, image_msg, stamp_ns, stop_process  # noqa: E402

BIN = Path(sys.executable).parent
REGIONS = ('all', 'static', 'dynamic')


def replay_cmd(*args):
    return [sys.executable, '-m', 'dynadepth_ros.recording.replay', *map(str, args)]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp('replay')
    return {'dir': d, 'model': make_contract_model(d / 'contract.onnx'),
            'bag': write_eval_bag(d / 'bag', BagSpec(frames=8, with_lidar=True))}


def test_schedule_and_type_lookup():
    assert due_offset_s(T0_NS + 500_000_000, T0_NS, rate=2.0) == pytest.approx(0.25)
    assert due_offset_s(T0_NS - 1, T0_NS, rate=1.0) == 0.0
    assert message_class('sensor_msgs/msg/Image').__name__ == 'Image'
    assert message_class('no_such_msgs/msg/Thing') is None
    # /clock is the inverse of the message schedule: a message is due when the clock reaches its receive time
    t = T0_NS + 700_000_000
    assert bag_time_ns(T0_NS, due_offset_s(t, T0_NS, rate=2.0), rate=2.0) == t
    assert build_parser().parse_args(['b']).clock is None
    assert build_parser().parse_args(['b', '--clock']).clock == 40.0       # ros2 bag play's default
    assert build_parser().parse_args(['b', '--clock', '100']).clock == 100.0


def test_clock_does_not_run_ahead_of_a_message_the_replayer_is_late_with():
    """A stalled replayer (a loaded machine) wakes up past a message's due time: the tick it publishes then holds
    at that message's receive time instead of the wall-clock bag time, so no sim-time node sees /clock pass data
    that has not been published (a CI run saw /clock 0.45 bag-s past the last image before the image went out)."""
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node('dd_clock_unit', context=ctx)
    try:
        clock = ClockPublisher(node, hz=100.0)
        clock.begin(1000.0, T0_NS, rate=2.0)                    # publishes the pass start
        assert clock.last_ns == T0_NS
        image_ns = T0_NS + 100_000_000                           # due 0.05 s into the pass
        clock.tick(1000.4, until_ns=image_ns)                    # woken 0.35 s late
        assert clock.last_ns == image_ns, (clock.last_ns - T0_NS) / 1e6
        clock.before_message(1000.4, image_ns)                   # nothing more to publish before the image
        assert clock.count == 2
        clock.tick(1000.41, until_ns=T0_NS + 900_000_000)        # then on with the schedule: 0.41 s x 2
        assert clock.last_ns == T0_NS + 820_000_000 and clock.count == 3
        clock.tick(1000.5)                                       # no next message: the schedule alone
        assert clock.last_ns == T0_NS + 1_000_000_000
        clock.before_message(1000.6, T0_NS + 1_150_000_000)       # a message published late: /clock says its time
        assert clock.last_ns == T0_NS + 1_150_000_000 and clock.count == 5
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)


@pytest.mark.parametrize('value, says', [('0', 'Hz > 0'), ('-5', 'Hz > 0'), ('inf', 'Hz > 0'), ('nan', 'Hz > 0'),
                                         ('fast', "'fast' is not a rate in Hz")])
def test_bad_clock_rate_is_an_argparse_error(value, says, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(['bag', '--clock', value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and 'argument --clock: ' in err and says in err, err


def test_live_node_recording_gives_offline_metrics(setup, capsys):
    d, bag = setup['dir'], setup['bag']
    node_log = open(d / 'node.log', 'w')
    node = subprocess.Popen([str(BIN / 'depth_node'), '--ros-args', '-p', f'model_path:={setup["model"]}',
                             '-p', 'backend:=onnxruntime', '-r', 'image:=/camera/image_raw',
                             '-r', 'camera_info:=/camera/camera_info', '-r', 'instance_mask:=/camera/instance_mask'],
                            stdout=node_log, stderr=subprocess.STDOUT)
    rec = d / 'rec'
    try:
        res = subprocess.run(replay_cmd(bag, '--rate', 1.0, '--record', rec, '--record-topics', '/depth',
                                        '/camera/image_raw', '--wait-subscribers', '/camera/image_raw',
                                        '/camera/camera_info', '--summary', d / 'summary.json'),
                             capture_output=True, text=True, timeout=90)
    finally:
        stop_process(node)
        node_log.close()
    assert res.returncode == 0, res.stderr + (d / 'node.log').read_text()
    summary = json.loads((d / 'summary.json').read_text())
    assert summary['published']['/camera/image_raw'] == 8 and summary['published']['/lidar/points'] == 8
    # tf2_msgs is not part of the pip ROS install: skipped with one warning and counted
    assert summary['skipped_types'] == {'tf2_msgs/msg/TFMessage': {'topics': ['/tf_static'], 'messages': 1}}
    assert res.stderr.count('tf2_msgs/msg/TFMessage is not available') == 1
    assert summary['recorded']['/depth'] == 8, (d / 'node.log').read_text()
    assert summary['latency_ms']['count'] == 8 and summary['latency_ms']['p50'] > 0
    assert summary['clock'] == {'published': False, 'hz': None, 'messages': 0}
    assert '/clock: not published' in res.stderr

    with BagReader(rec) as r:
        assert r.topics['/depth'] == ('sensor_msgs/msg/Image', 8)
        img = [(cdr_header_stamp_ns(raw), t) for _, _, t, raw in r.raw_messages(['/camera/image_raw'])]
    assert [s for s, _ in img] == [T0_NS + int(i * 1e9 / FPS) for i in range(8)]
    # original timing at rate 1: 7 intervals of 100 ms; the replayer never publishes ahead of schedule
    # (replayed images are logged at their publish time)
    assert (img[-1][1] - img[0][1]) / 1e9 >= 0.9 * 7 * 0.1

    rc = eval_bag.main([str(bag), '--prediction-bag', str(rec), '--prediction-topic', '/depth',
                        '--out', str(d / 'live'), '--no-progress'])
    assert rc == 0
    rc = eval_bag.main([str(bag), '--model', str(setup['model']), '--out', str(d / 'offline'), '--no-progress'])
    assert rc == 0
    capsys.readouterr()
    live = json.loads((d / 'live' / 'report.json').read_text())
    offline = json.loads((d / 'offline' / 'report.json').read_text())
    assert live['counts']['evaluated'] == offline['counts']['evaluated'] == 8
    for mode in MODES:
        for region in REGIONS:
            for k in METRIC_NAMES:
                assert live['metrics'][mode][region][k] == pytest.approx(offline['metrics'][mode][region][k],
                                                                         rel=1e-5), (mode, region, k)
    assert live['latency_ms']['count'] == 8 and live['latency_ms']['min'] > 0


def test_start_offset_topics_loop_and_sigterm_close_the_recording(setup):
    d, bag = setup['dir'], setup['bag']
    rec = d / 'rec_loop'
    proc = subprocess.Popen(replay_cmd(bag, '--loop', '--start-offset', 0.35, '--topics', '/camera/image_raw',
                                       '/camera/camera_info', '--record', rec, '--record-topics', '/camera/image_raw',
                                       '--summary', d / 'loop.json'),
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        for line in proc.stderr:
            if 'playing' in line or time.monotonic() > deadline:
                break
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    s = json.loads((d / 'loop.json').read_text())
    assert s['status'] == 'interrupted' and s['loops'] >= 1
    assert set(s['published']) == {'/camera/image_raw', '/camera/camera_info'}
    assert not (d / 'rec_loop.partial').exists()
    with BagReader(rec) as r:                 # closed and renamed: a readable bag
        stamps = [cdr_header_stamp_ns(raw) for _, _, _, raw in r.raw_messages(['/camera/image_raw'])]
    assert stamps and len(stamps) == s['recorded']['/camera/image_raw']
    # the offset skips frames 0..3 (t < 0.35 s); every pass starts again at frame 4
    assert stamps[0] == T0_NS + int(4 * 1e9 / FPS)
    assert set(stamps) <= {T0_NS + int(i * 1e9 / FPS) for i in range(4, 8)}


def test_missing_bag_and_unknown_topics(setup, tmp_path):
    res = subprocess.run(replay_cmd(tmp_path / 'nope'), capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and 'does not exist' in res.stderr
    res = subprocess.run(replay_cmd(setup['bag'], '--topics', '/camera/image_rect'), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1 and 'no topic /camera/image_rect' in res.stderr and '/lidar/points' in res.stderr


# ---------------------------------------------------------------------------- --clock and use_sim_time
class ClockWatch:
    """Test-side subscriber of /clock (best effort, like rclpy's TimeSource) and /camera/image_raw: every clock
    value with its monotonic receive time, and each image stamp with the newest clock received before it."""

    def __init__(self):
        self.g = Graph()
        self.clocks: list[tuple[float, int]] = []        # (receive time, clock ns)
        self.images: list[tuple[int, int | None]] = []   # (stamp ns, newest clock ns before it)
        # /clock first: when both are ready in one wait, the executor takes the older subscription first
        self.g.node.create_subscription(Clock, '/clock', self._on_clock,
                                        QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.g.node.create_subscription(Image, '/camera/image_raw', self._on_image,
                                        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))

    def _on_clock(self, m):
        self.clocks.append((time.monotonic(), m.clock.sec * 10**9 + m.clock.nanosec))

    def _on_image(self, m):
        self.images.append((m.header.stamp.sec * 10**9 + m.header.stamp.nanosec,
                            self.clocks[-1][1] if self.clocks else None))


def test_clock_carries_bag_time_at_the_rate_and_leads_every_message(setup):
    d = setup['dir']
    bag = write_eval_bag(d / 'bag20', BagSpec(frames=20, with_mask=False, with_gt_depth=False))
    with BagReader(bag) as r:
        start_ns, end_ns = r.start_ns, r.end_ns
    rate, hz = 2.0, 50.0
    w = ClockWatch()
    try:
        res = subprocess.run(replay_cmd(bag, '--rate', rate, '--clock', hz, '--wait-subscribers', '/camera/image_raw',
                                        '--summary', d / 'clock.json'), capture_output=True, text=True, timeout=60)
        Graph.wait(lambda: len(w.images) == 20, 2)
    finally:
        w.g.close()
    assert res.returncode == 0, res.stderr
    summary = json.loads((d / 'clock.json').read_text())
    clocks = [c for _, c in w.clocks]
    assert summary['clock']['published'] and summary['clock']['hz'] == hz
    assert summary['clock']['messages'] >= len(clocks) >= 0.7 * hz * (end_ns - start_ns) / 1e9 / rate
    assert f'/clock: {summary["clock"]["messages"]} messages' in res.stderr
    # bag time: from the bag's start, never behind a message's stamp, never far past the last message
    assert clocks[0] >= start_ns and clocks == sorted(clocks)
    assert clocks[-1] <= end_ns + 0.2e9 * rate
    # each message's stamp is covered by the clock received before it (within one period), and as a clock is
    # published right before every message the ticks have not reached, nearly all are covered exactly (only
    # with the 50 Hz ticks half of these images would come up to 20 ms ahead of /clock)
    period_ns = 1e9 / hz * rate
    # every image arrives: the replayer waits for the acknowledgements before it exits (--ack-timeout; without
    # that wait Jazzy's Fast DDS 2.x lost the last message in 2 of 10 runs)
    assert len(w.images) == 20 and sum(c is None for _, c in w.images) <= 1, w.images
    assert summary['unacked_topics'] == [], res.stderr
    for stamp, clock in w.images:
        if clock is not None:
            assert clock - 0.5e9 < stamp <= clock + period_ns + 5e6, (stamp - clock) / 1e6
    assert sum(c is not None and s <= c for s, c in w.images) >= 15, [(s - c) / 1e6 for s, c in w.images if c]
    # and it advances `rate` bag seconds per wall second (least squares over the receive times)
    ts = [t for t, _ in w.clocks]
    mt, mc = sum(ts) / len(ts), sum(clocks) / len(clocks)
    slope = sum((t - mt) * (c - mc) / 1e9 for t, c in zip(ts, clocks)) / sum((t - mt) ** 2 for t in ts)
    assert 0.8 * rate < slope < 1.2 * rate, slope


def test_clock_honours_start_offset_and_jumps_back_on_each_loop(setup):
    d, bag = setup['dir'], setup['bag']
    origin = T0_NS + 350_000_000
    w = ClockWatch()
    proc = subprocess.Popen(replay_cmd(bag, '--loop', '--start-offset', 0.35, '--rate', 2, '--clock', 100,
                                       '--topics', '/camera/image_raw', '--summary', d / 'clock_loop.json'),
                            stderr=subprocess.PIPE, text=True)
    try:
        Graph.wait(lambda: sum(c2 < c1 for (_, c1), (_, c2) in zip(w.clocks, w.clocks[1:])) >= 2, 20)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        w.g.close()
    clocks = [c for _, c in w.clocks]
    jumps = [i for i in range(1, len(clocks)) if clocks[i] < clocks[i - 1]]
    assert len(jumps) >= 2, (clocks, err)
    # from the offset to the last image's receive time, however late the replayer runs (it holds /clock at a
    # message it is late with)
    assert min(clocks) >= origin and max(clocks) <= T0_NS + 700_000_000, (min(clocks) - origin, max(clocks) - T0_NS)
    for i in jumps:     # back to the start of the offset bag, then monotone until the next pass
        assert clocks[i] < origin + 50_000_000, (clocks[i] - origin) / 1e6
    s = json.loads((d / 'clock_loop.json').read_text())
    assert s['status'] == 'interrupted' and s['loops'] >= 3 and s['clock']['messages'] >= len(clocks)


def _start_node(d, model, name, *params):
    """depth_node `name` in namespace /name on the replayed camera topics, log d/name.log."""
    extra = [a for p in params for a in ('-p', p)]
    with open(d / f'{name}.log', 'w') as log:
        return subprocess.Popen(depth_node_cmd() + [
            '--ros-args', '-p', f'model_path:={model}', '-p', 'intra_op_threads:=1', *extra, '-r', f'__node:={name}',
            '-r', f'__ns:=/{name}', '-r', 'image:=/camera/image_raw', '-r', 'camera_info:=/camera/camera_info'],
            stdout=log, stderr=subprocess.STDOUT)


def test_use_sim_time_node_measures_latency_on_the_replayed_clock(setup):
    """Two nodes on one replay of a bag stamped in 2023: with use_sim_time:=true and --clock the stamp→publish
    latency is the node's own (milliseconds) and /diagnostics is stamped in bag time; without, it is the bag's
    age, with a warning that says what to do. Before the first /clock the sim-time node still publishes
    /diagnostics and depth, and reports no latency instead of -55 years."""
    d, bag = setup['dir'], setup['bag']
    with BagReader(bag) as r:
        end_ns = r.end_ns
    nodes = {'dd_sim': _start_node(d, setup['model'], 'dd_sim', 'use_sim_time:=true'),
             'dd_wall': _start_node(d, setup['model'], 'dd_wall')}
    g = Graph()
    replay = None
    try:
        g.sub(DiagnosticArray, '/diagnostics')
        for name in nodes:
            g.sub(Image, f'/{name}/depth')
        for name in nodes:     # no /clock anywhere yet: the sim-time node's timers must not wait for one
            assert diag(g, name, lambda v: v['state'] == 'active', 30) is not None, (d / f'{name}.log').read_text()
        pub = g.pub(Image, '/camera/image_raw')
        msg = image_msg(np.full((64, 192, 3), 90, np.uint8), Time(sec=T0_NS // 10**9, nanosec=0))
        assert g.wait(lambda: pub.get_subscription_count() >= 2, 10)
        for _ in range(3):
            pub.publish(msg)
            if g.wait(lambda: g.msgs('/dd_sim/depth'), 3):
                break
        before = diag(g, 'dd_sim', lambda v: int(v['frames_out']) >= 1)
        assert before is not None and before['latency_p50_ms'] == 'nan', before
        # in a loop until both nodes have depth from 5 replayed frames: the replay starts as soon as it sees one
        replay = subprocess.Popen(replay_cmd(bag, '--clock', '--loop', '--topics', '/camera/image_raw',
                                             '/camera/camera_info', '--wait-subscribers', '/camera/image_raw'),
                                  stderr=subprocess.PIPE, text=True)
        sim = diag(g, 'dd_sim', lambda v: int(v['frames_out']) >= 6 and v['latency_p50_ms'] != 'nan', 20)
        wall = diag(g, 'dd_wall', lambda v: int(v['frames_out']) >= 6, 20)
        stamps = [stamp_ns(a.header.stamp) for a in g.msgs('/diagnostics')
                  if any(st.name == 'dd_sim: depth' for st in a.status)]
        replay.send_signal(signal.SIGTERM)
        _, err = replay.communicate(timeout=20)
        assert replay.returncode == 130 and '/clock: ' in err, err
    finally:
        if replay is not None and replay.poll() is None:
            replay.kill()
            replay.wait()
        for proc in nodes.values():
            stop_process(proc)
        g.close()
    logs = {name: (d / f'{name}.log').read_text() for name in nodes}
    assert sim is not None and wall is not None, logs
    assert abs(float(sim['latency_p50_ms'])) < 500, sim
    age_ms = (time.time_ns() - T0_NS) / 1e6
    assert float(wall['latency_p50_ms']) == pytest.approx(age_ms, rel=1e-3), wall
    assert 'use_sim_time:=true' in logs['dd_wall'] and 'image stamps are' not in logs['dd_sim']
    # the sim-time node stamps /diagnostics with its clock: 0 before the first /clock, then bag time
    assert stamps[0] == 0 and T0_NS <= stamps[-1] <= end_ns + 1e9, stamps
