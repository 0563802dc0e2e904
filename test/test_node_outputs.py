"""The depth node's outputs for real robots, over a real ROS 2 graph: masks that never pair are reported on
/diagnostics and once in the log; depth/camera_info with intrinsics from P (or K); the organized point cloud;
the depth_image_proc layout. One `depth_node` (mask_warn_after 1 s) is shared by the module; tests run in file
order on purpose (the first must see no mask at all).
"""
import re
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from contract_model import expected_depth  # noqa: E402
from test_node_graph import (FRAME, INTR, depth_array, diag, image_msg, label_msg, next_stamp,  # noqa: E402
                             running_node, same_stamp, send_and_wait, stamp_ns)

NS, NAME = '/dd_out_ns', 'dd_out'


@pytest.fixture(scope='module')
def out(tmp_path_factory):
    yield from running_node(tmp_path_factory.mktemp('outputs'), params=('mask_warn_after:=1.0',), ns=NS, name=NAME)


def status(g, pred=lambda v: True, timeout=10.0):
    """Values (+ _level, _message) of the node's newest /diagnostics status satisfying pred, or None."""
    return diag(g, NAME, pred, timeout)


def _images_until(g, pred, seconds=15.0, mask_for=None):
    """Send 128x384 images (and, if given, mask_for(stamp) after each) until /diagnostics satisfies pred."""
    rgb = np.full((128, 384, 3), 100, np.uint8)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = next_stamp()
        send_and_wait(g, f'{NS}/image', image_msg(rgb, s), out=f'{NS}/depth')
        if mask_for is not None:
            g.pub(Image, f'{NS}/instance_mask').publish(mask_for(s))
        v = status(g, pred, timeout=0.2)
        if v is not None:
            return v
        time.sleep(0.1)
    return None


def _warnings(g, words):
    return [ln for ln in g.log_path.read_text().splitlines() if 'masks never pair' in ln and words in ln]


# ---------------------------------------------------------------------------- C. masks that never pair
def test_mask_publishers_without_masks_are_reported_once(out):
    g = out
    # running_node created a mask publisher that never publishes: to the node this is what masks lost in the
    # DDS transport look like (count_publishers > 0, nothing received)
    assert g.node.count_subscribers(f'{NS}/instance_mask') > 0
    v = _images_until(g, lambda v: v['mask_problem'] != '')
    assert v is not None, f'no mask warning on /diagnostics:\n{g.log_path.read_text()[-2000:]}'
    assert v['_level'] == DiagnosticStatus.WARN and v['_message'].startswith('masks never pair')
    assert v['mask_publishers'] == '1' and v['masks_in'] == '0'
    for cause in ('DDS transport', 'FastDDS profile', 'QoS'):
        assert cause in v['mask_problem'], v['mask_problem']
    _images_until(g, lambda v: False, seconds=2.5)         # the problem goes on: still one log line
    assert len(_warnings(g, 'DDS transport')) == 1, g.log_path.read_text()[-3000:]


def test_masks_whose_stamps_never_match_are_reported_once_and_clear_when_masks_pair(out):
    g = out
    labels = np.zeros((128, 384), np.int32)
    labels[40:90, 100:200] = 7

    def off_by_1000_s(stamp):        # e.g. a segmenter stamping with another clock
        ns = stamp_ns(stamp) - 1000 * 10**9
        return label_msg(labels, Time(sec=ns // 10**9, nanosec=ns % 10**9), '16UC1')
    v = _images_until(g, lambda v: 'stamps not matching' in v['mask_problem'], mask_for=off_by_1000_s)
    assert v is not None, f'no stamp warning on /diagnostics:\n{g.log_path.read_text()[-2000:]}'
    assert v['_level'] == DiagnosticStatus.WARN and int(v['masks_in']) > 0 and v['objects_paired'] == '0'
    offset = re.search(r'nearest mask was ([-+][0-9.]+) s', v['mask_problem'])
    assert offset and -1000.0 <= float(offset.group(1)) < -990.0 and 'mask_slop 0.05 s' in v['mask_problem'], v
    _images_until(g, lambda v: False, seconds=2.5, mask_for=off_by_1000_s)
    assert len(_warnings(g, 'stamps not matching')) == 1, g.log_path.read_text()[-3000:]
    # masks with the image's stamp: objects are published and the warning ends
    s = next_stamp()
    send_and_wait(g, f'{NS}/image', image_msg(np.full((128, 384, 3), 100, np.uint8), s), out=f'{NS}/depth')
    objs = send_and_wait(g, f'{NS}/instance_mask', label_msg(labels, s, '16UC1'), out=f'{NS}/objects')
    assert same_stamp(objs.markers[0].header.stamp, s)
    v = _images_until(g, lambda v: v['mask_problem'] == '' and int(v['objects_paired']) >= 1,
                      mask_for=lambda stamp: label_msg(labels, stamp, '16UC1'))
    assert v is not None and v['_level'] == DiagnosticStatus.OK, v


# ---------------------------------------------------------------------------- D. depth/camera_info
def _set(g, **params):
    client = AsyncParameterClient(g.node, f'{NS}/{NAME}')
    assert client.wait_for_services(10)
    res = g.call(client.set_parameters([Parameter(k, value=v) for k, v in params.items()]))
    assert all(r.successful for r in res.results), [r.reason for r in res.results]


def _transition(g, *tids):
    cli = g.node.create_client(ChangeState, f'{NS}/{NAME}/change_state')
    assert cli.wait_for_service(10)
    for tid in tids:
        assert g.call(cli.call_async(ChangeState.Request(transition=Transition(id=tid)))).success, tid


def _info(K, P, w=384, h=128, stamp=None):
    return CameraInfo(header=Header(stamp=stamp or next_stamp(), frame_id=FRAME), width=w, height=h,
                      distortion_model='plumb_bob', d=[-0.1, 0.01, 0.0, 0.0, 0.0],
                      k=[float(v) for v in np.ravel(K)], r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                      p=[float(v) for v in np.ravel(P)])


def _depth_with_info(g, info, ratio, rgb_value=100):
    """Publish `info` then an image until the depth is `ratio` x the training-intrinsics depth; (depth, info out)."""
    rgb = np.full((128, 384, 3), rgb_value, np.uint8)
    for _ in range(30):
        g.pub(CameraInfo, f'{NS}/camera_info').publish(info)
        time.sleep(0.05)
        s = next_stamp()
        d = send_and_wait(g, f'{NS}/image', image_msg(rgb, s), out=f'{NS}/depth')
        if abs(float(np.nanmean(depth_array(d))) / expected_depth(rgb_value) - ratio) < 1e-4:
            got = g.wait(lambda: next((m for m in g.msgs(f'{NS}/depth/camera_info') if same_stamp(m.header.stamp, s)),
                                      None))
            assert got is not None, 'no depth/camera_info with the depth stamp'
            return d, got
    pytest.fail(f'depth never reached {ratio}x the training-intrinsics depth:\n{g.log_path.read_text()[-2000:]}')


FX_T, FY_T = INTR[0] * 384, INTR[1] * 128             # the model's training focal lengths at 384x128
K_RAW = np.array([[FX_T, 0, 192.0], [0, FY_T, 64.0], [0, 0, 1]])
P_RECT = np.array([[2 * FX_T, 0, 180.0, -2 * FX_T * 0.1], [0, 2 * FY_T, 70.0, 0], [0, 0, 1, 0]])


def test_camera_info_intrinsics_come_from_P_by_default_and_from_K_on_request(out):
    g = out
    _set(g, output_width=192, output_height=64)
    try:
        d, info = _depth_with_info(g, _info(K_RAW, P_RECT), 2.0)       # P's focal = 2x training → depth x2
        assert (d.width, d.height) == (info.width, info.height) == (192, 64)
        assert info.header.frame_id == d.header.frame_id == FRAME
        sx, sy = 192 / 384, 64 / 128                                    # independent: rows 0 and 1 scale
        np.testing.assert_allclose(np.reshape(info.k, (3, 3)), K_RAW * [[sx], [sy], [1]], rtol=1e-12)
        np.testing.assert_allclose(np.reshape(info.p, (3, 4)), P_RECT * [[sx], [sy], [1]], rtol=1e-12)
        np.testing.assert_allclose(info.d, [-0.1, 0.01, 0, 0, 0])
        assert 'intrinsics from P' in status(g, lambda v: 'from P' in v['camera_info'])['camera_info']
        _set(g, intrinsics_source='K')
        _depth_with_info(g, _info(K_RAW, P_RECT), 1.0)                  # K's focal = training → depth x1
        _set(g, intrinsics_source='P')
        no_p = _info(K_RAW, np.zeros((3, 4)))
        _depth_with_info(g, no_p, 1.0)                                  # P all zero: K, with one warning
        _depth_with_info(g, no_p, 1.0)
        assert len([ln for ln in g.log_path.read_text().splitlines() if 'P is all zero' in ln
                    and 'intrinsics_source' in ln]) == 1, g.log_path.read_text()[-3000:]
        assert 'intrinsics from K' in status(g, lambda v: 'from K' in v['camera_info'])['camera_info']
        client = AsyncParameterClient(g.node, f'{NS}/{NAME}')
        res = g.call(client.set_parameters([Parameter('intrinsics_source', value='R')])).results[0]
        assert not res.successful and 'P' in res.reason
    finally:
        _set(g, output_width=0, output_height=0, intrinsics_source='P')



# ---------------------------------------------------------------------------- E. points
def _cloud(msg):
    """{field: float32 [H,W]} of an organized PointCloud2 (FLOAT32 fields, little-endian)."""
    assert not msg.is_bigendian and msg.row_step == msg.point_step * msg.width and not msg.is_dense
    raw = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, msg.point_step)
    out = {}
    for f in msg.fields:
        assert f.datatype == PointField.FLOAT32 and f.count == 1
        out[f.name] = raw[..., f.offset:f.offset + 4].copy().view('<f4')[..., 0]
    return out


def _check_backprojection(cloud, depth_msg, info):
    """The cloud against X=(u-cx)Z/fx, Y=(v-cy)Z/fy from the received depth image and depth/camera_info (P, as
    depth_image_proc reads it), NaN where the depth is invalid."""
    Z = depth_array(depth_msg).astype(np.float64)
    fx, cx, fy, cy = info.p[0], info.p[2], info.p[5], info.p[6]
    v, u = np.mgrid[0:Z.shape[0], 0:Z.shape[1]].astype(np.float64)
    bad = ~np.isfinite(Z)
    assert bad.any() and not bad.all(), 'the test image must give both valid and invalid depth'
    for name, want in (('x', (u - cx) * Z / fx), ('y', (v - cy) * Z / fy), ('z', Z)):
        got = cloud[name]
        assert got.shape == Z.shape
        assert np.isnan(got[bad]).all(), f'{name} must be NaN where the depth is invalid'
        np.testing.assert_allclose(got[~bad], want[~bad], rtol=2e-6, atol=1e-6, err_msg=name)


def _wait_cloud(g, stamp):
    return g.wait(lambda: next((m for m in g.msgs(f'{NS}/points') if same_stamp(m.header.stamp, stamp)), None))


def test_points_are_the_back_projected_depth_and_only_computed_while_subscribed(out):
    g = out
    rgb = np.zeros((192, 640, 3), np.uint8)              # 640x192: columns outside the 3:1 crop give NaN depth
    rgb[..., 0] = np.linspace(20, 220, 640).astype(np.uint8)[None, :]
    rgb[..., 1] = np.arange(192, dtype=np.uint8)[:, None]
    rgb[..., 2] = 77
    fx_t = INTR[0] * 576                                  # training focal on the 576-px crop
    K = np.array([[fx_t, 0, 320.0], [0, INTR[1] * 192, 96.0], [0, 0, 1]])
    P = np.array([[1.5 * fx_t, 0, 310.0, 0], [0, 1.5 * INTR[1] * 192, 100.0, 0], [0, 0, 1, 0]])
    info_in = _info(K, P, w=640, h=192)
    for _ in range(5):                                    # no subscriber: no cloud work
        info_in.header.stamp = next_stamp()
        g.pub(CameraInfo, f'{NS}/camera_info').publish(info_in)
        send_and_wait(g, f'{NS}/image', image_msg(rgb, next_stamp()), out=f'{NS}/depth')
    status(g, lambda v: int(v['frames_out']) > 0)
    time.sleep(1.2)
    assert g.node.count_publishers(f'{NS}/points') == 1
    assert status(g)['points_published'] == '0', 'a cloud was computed without a subscriber'

    g.sub(PointCloud2, f'{NS}/points')
    _set(g, points_rgb=True)
    try:
        for _ in range(30):
            s = next_stamp()
            d = send_and_wait(g, f'{NS}/image', image_msg(rgb, s), out=f'{NS}/depth')
            cloud_msg = g.wait(lambda: next((m for m in g.msgs(f'{NS}/points') if same_stamp(m.header.stamp, s)),
                                            None), 1.0)
            if cloud_msg is not None:
                break
        assert cloud_msg is not None, 'no points while subscribed'
        info = g.wait(lambda: next((m for m in g.msgs(f'{NS}/depth/camera_info') if same_stamp(m.header.stamp, s)),
                                   None))
        np.testing.assert_allclose(np.reshape(info.p, (3, 4)), P)          # the camera_info really was used
        assert cloud_msg.header.frame_id == FRAME and (cloud_msg.height, cloud_msg.width) == (192, 640)
        assert [f.name for f in cloud_msg.fields] == ['x', 'y', 'z', 'rgb'] and cloud_msg.point_step == 16
        cloud = _cloud(cloud_msg)
        _check_backprojection(cloud, d, info)
        packed = cloud['rgb'].view(np.uint32)
        np.testing.assert_array_equal(np.stack([packed >> 16 & 255, packed >> 8 & 255, packed & 255], -1), rgb)
        # without colour, at half size: x, y, z only, against the half-size camera_info
        _set(g, points_rgb=False, output_width=320)
        s = next_stamp()
        d = send_and_wait(g, f'{NS}/image', image_msg(rgb, s), out=f'{NS}/depth')
        cloud_msg = _wait_cloud(g, s)
        assert cloud_msg is not None and (cloud_msg.height, cloud_msg.width) == (96, 320)
        assert [f.name for f in cloud_msg.fields] == ['x', 'y', 'z'] and cloud_msg.point_step == 12
        info = g.wait(lambda: next((m for m in g.msgs(f'{NS}/depth/camera_info') if same_stamp(m.header.stamp, s)),
                                   None))
        _check_backprojection(_cloud(cloud_msg), d, info)
        assert int(status(g, lambda v: int(v['points_published']) >= 2)['points_published']) >= 2
    finally:
        _set(g, points_rgb=False, output_width=0)


def test_depth_image_proc_layout_publishes_image_rect_beside_camera_info(out):
    g = out
    T = Transition
    _transition(g, T.TRANSITION_DEACTIVATE, T.TRANSITION_CLEANUP)
    try:
        _set(g, output_layout='depth_image_proc')
        _transition(g, T.TRANSITION_CONFIGURE, T.TRANSITION_ACTIVATE)
        g.sub(Image, f'{NS}/depth/image_rect')
        assert g.wait(lambda: g.node.count_publishers(f'{NS}/depth/image_rect') == 1
                      and g.node.count_publishers(f'{NS}/depth') == 0)
        s = next_stamp()
        rect = send_and_wait(g, f'{NS}/image', image_msg(np.full((128, 384, 3), 100, np.uint8), s),
                             out=f'{NS}/depth/image_rect')
        # what depth_image_proc's camera subscriber does: <ns>/image_rect with the sibling <ns>/camera_info,
        # paired by exact stamp
        base = f'{NS}/depth/image_rect'.rsplit('/', 1)[0]
        info = g.wait(lambda: next((m for m in g.msgs(f'{base}/camera_info') if same_stamp(m.header.stamp, s)), None))
        assert info is not None and info.header.frame_id == rect.header.frame_id == FRAME
        assert (info.width, info.height) == (rect.width, rect.height) and rect.encoding == '32FC1'
    finally:
        _transition(g, T.TRANSITION_DEACTIVATE, T.TRANSITION_CLEANUP)
        _set(g, output_layout='default')
        _transition(g, T.TRANSITION_CONFIGURE, T.TRANSITION_ACTIVATE)
    send_and_wait(g, f'{NS}/image', image_msg(np.full((128, 384, 3), 100, np.uint8), next_stamp()), out=f'{NS}/depth')
