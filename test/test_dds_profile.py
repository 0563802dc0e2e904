"""The shipped FastDDS profile in a real graph: the node runs with config/fastdds_large_images.xml, a client runs
with DEFAULT FastDDS settings (no FASTDDS_DEFAULT_PROFILES_FILE), and 1280x720 frames flow both ways.

* Same host: the client publishes 1280x720 rgb8 frames (reliable, like a camera driver) and gets every depth
  frame back (1280x720 32FC1, 3.7 MB) on a reliable AND a best-effort subscription. A default-settings
  publisher's >1 MB frames only reach a best-effort subscription intermittently (its own 512 kB shared-memory
  segment is the limit, which no profile on the receiving side changes), so the node's image subscription is
  made reliable here with `qos_overrides.<image>.subscription.reliability:=reliable` — the documented setting
  for a camera driver without the profile (docs/node.md, "FastDDS transports").
* Another host: the node and the client in two network namespaces joined by a veth pair, each with its own
  /dev/shm and host name, i.e. two computers on one robot network (root and `unshare` needed, else skipped).
  A loopback-only profile gives the client nothing at all.

Each client is a separate process (test/dds_client.py) so that the environment of this test process, where
conftest sets the profile, does not leak into it.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
from contract_model import expected_depth, make_contract_model  # noqa: E402
from test_node_graph import depth_node_cmd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / 'config' / 'fastdds_large_images.xml'
CLIENT = Path(__file__).resolve().parent / 'dds_client.py'
FRAMES, RATE = 20, 5.0


def _client_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k != 'FASTDDS_DEFAULT_PROFILES_FILE'}
    env.update(extra or {})
    return env


def _node_args(model, ns, reliable_image=True):
    args = ['--ros-args', '-p', f'model_path:={model}', '-p', 'intra_op_threads:=1', '-r', '__node:=dd_dds',
            '-r', f'__ns:={ns}']
    if reliable_image:
        args += ['-p', f'qos_overrides.{ns}/image.subscription.reliability:=reliable']
    return args


def _check(result, node_log, min_camera_info=FRAMES):
    """Every frame came back as 1280x720 metric depth on the reliable subscription, with its depth/camera_info
    (at least min_camera_info of them); returns the report."""
    sent = {s['stamp']: s['red'] for s in result['sent']}
    assert len(sent) == FRAMES
    report = {k: len(result[k]) for k in ('reliable', 'best_effort', 'camera_info')}
    report['matched'] = result['matched']
    for key in ('reliable', 'best_effort'):
        lat = [m['latency_ms'] for m in result[key]]
        report[f'{key}_latency_p50_ms'] = round(float(np.median(lat)), 1) if lat else None
        for m in result[key]:
            assert (m['w'], m['h']) == (1280, 720)
            assert m['stamp'] in sent
            assert m['centre'] == pytest.approx(expected_depth(sent[m['stamp']]), rel=1e-5)
    assert min_camera_info <= report['camera_info'] <= FRAMES, f'depth/camera_info: {report}'
    got = {m['stamp'] for m in result['reliable']}
    assert got == set(sent), f'reliable depth subscription got {len(got)}/{FRAMES} frames: {report}\n' \
                             f'node log:\n{node_log[-3000:]}'
    return report


def test_default_fastdds_client_on_the_same_host_gets_1280x720_depth(tmp_path):
    model = make_contract_model(tmp_path / 'contract.onnx')
    ns = '/dd_dds_local'
    log_path = tmp_path / 'node.log'
    with open(log_path, 'w') as log:
        node = subprocess.Popen(depth_node_cmd() + _node_args(model, ns), stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, 'FASTDDS_DEFAULT_PROFILES_FILE': str(PROFILE)})
    try:
        out = subprocess.run([sys.executable, str(CLIENT), '--ns', ns, '--frames', str(FRAMES), '--rate', str(RATE)],
                             capture_output=True, text=True, timeout=120, env=_client_env())
        assert out.returncode == 0, out.stderr[-3000:]
        report = _check(json.loads(out.stdout.splitlines()[-1]), log_path.read_text())
        # same host: shared memory with the node's 32 MB segment, so best effort loses nothing either
        assert report['best_effort'] == FRAMES, report
        print('same host, default-FastDDS client:', report)
    finally:
        node.terminate()
        node.wait(15)


TWO_HOSTS = textwrap.dedent('''
    # host A = this process's fresh namespaces: the node; host B = nested fresh namespaces: the client
    set -eu
    mount --make-rprivate / && mount -t tmpfs tmpfs /dev/shm && hostname dd-host-a && ip link set lo up
    unshare --net --mount --uts sh -c '
        set -eu
        mount --make-rprivate / && mount -t tmpfs tmpfs /dev/shm && hostname dd-host-b && ip link set lo up
        for i in $(seq 200); do ip link show ddb >/dev/null 2>&1 && break; sleep 0.05; done
        ip addr add 10.231.0.2/24 dev ddb && ip link set ddb up && ip route add 224.0.0.0/4 dev ddb
        exec env -u FASTDDS_DEFAULT_PROFILES_FILE "$@"' client "$CLIENT_PY" "$CLIENT" --ns "$NS" \\
        --frames "$FRAMES" --rate "$RATE" --discovery-timeout 20 > "$OUT/client.json" 2> "$OUT/client.err" &
    B=$!
    while [ "$(readlink /proc/$B/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do sleep 0.02; done
    ip link add dda type veth peer name ddb netns $B
    ip addr add 10.231.0.1/24 dev dda && ip link set dda up && ip route add 224.0.0.0/4 dev dda
    FASTDDS_DEFAULT_PROFILES_FILE="$NODE_PROFILE" "$@" > "$OUT/node.log" 2>&1 &
    N=$!
    wait $B || true
    kill -INT $N 2>/dev/null || true; wait $N || true
''')


def _namespaces_available() -> str:
    """'' when this process may build the two-host setup, else why not."""
    if os.geteuid() != 0:
        return 'needs root for network namespaces'
    for tool in ('unshare', 'ip', 'mount'):
        if shutil.which(tool) is None:
            return f'{tool} not found'
    probe = subprocess.run(['unshare', '--net', '--mount', '--uts', 'sh', '-c',
                            'ip link add dda type veth peer name ddb && mount --make-rprivate / && '
                            'mount -t tmpfs tmpfs /dev/shm'], capture_output=True, text=True, timeout=30)
    return '' if probe.returncode == 0 else f'cannot create namespaces / veth: {probe.stderr.strip()}'


def run_two_hosts(tmp_path, node_profile: Path) -> tuple[dict, str]:
    """Run the node (host A, `node_profile`) and the default-FastDDS client (host B); (client result, node log)."""
    model = make_contract_model(tmp_path / 'contract.onnx')
    ns = '/dd_dds_remote'
    env = {**os.environ, 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'SUBNET', 'OUT': str(tmp_path), 'NS': ns,
           'FRAMES': str(FRAMES), 'RATE': str(RATE), 'CLIENT_PY': sys.executable, 'CLIENT': str(CLIENT),
           'NODE_PROFILE': str(node_profile)}
    res = subprocess.run(['unshare', '--net', '--mount', '--uts', 'bash', '-c', TWO_HOSTS, 'two_hosts',
                          *depth_node_cmd(), *_node_args(model, ns)], env=env, capture_output=True, text=True,
                         timeout=180)
    node_log = (tmp_path / 'node.log').read_text() if (tmp_path / 'node.log').exists() else ''
    client = (tmp_path / 'client.json').read_text().strip()
    assert res.returncode == 0 and client, f'two-host run failed: {res.stderr[-2000:]}\n' \
                                           f'{(tmp_path / "client.err").read_text()[-2000:]}\n{node_log[-2000:]}'
    return json.loads(client.splitlines()[-1]), node_log


def test_default_fastdds_client_on_another_host_gets_1280x720_depth(tmp_path):
    why = _namespaces_available()
    if why:
        pytest.skip(why)
    result, node_log = run_two_hosts(tmp_path, PROFILE)
    assert result['matched']['depth'] > 0 and result['matched']['image'] > 0, \
        f'the client on the other host never discovered the node: {result["matched"]}\n{node_log[-2000:]}'
    # over UDP between hosts the small camera_info samples next to 3.7 MB depth frames are not all delivered to a
    # default-settings reader (seen: 13, 16, 18, 18, 18, 19, 19 of 20; a deeper writer history did not help);
    # depth, the point of this test, must arrive in full
    report = _check(result, node_log, min_camera_info=FRAMES // 2)
    print('other host, default-FastDDS client:', report)
