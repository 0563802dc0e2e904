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

import pytest
from bag_builders import FPS, T0_NS, BagSpec, write_eval_bag
from contract_model import make_contract_model

from dynadepth_ros.metrics import METRIC_NAMES, MODES
from dynadepth_ros.recording import eval_bag
from dynadepth_ros.recording.bag_reader import BagReader, cdr_header_stamp_ns
from dynadepth_ros.recording.replay import due_offset_s, message_class

pytest.importorskip('rclpy')
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
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        node_log.close()
    assert res.returncode == 0, res.stderr + (d / 'node.log').read_text()
    summary = json.loads((d / 'summary.json').read_text())
    assert summary['published']['/camera/image_raw'] == 8 and summary['published']['/lidar/points'] == 8
    # tf2_msgs is not part of the pip ROS install: skipped with one warning and counted
    assert summary['skipped_types'] == {'tf2_msgs/msg/TFMessage': {'topics': ['/tf_static'], 'messages': 1}}
    assert res.stderr.count('tf2_msgs/msg/TFMessage is not available') == 1
    assert summary['recorded']['/depth'] == 8, (d / 'node.log').read_text()
    assert summary['latency_ms']['count'] == 8 and summary['latency_ms']['p50'] > 0

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
