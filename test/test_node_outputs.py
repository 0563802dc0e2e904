"""The depth node's outputs for real robots, over a real ROS 2 graph: masks that never pair are reported on
/diagnostics and once in the log. One `depth_node` (mask_warn_after 1 s) is shared by the module; tests run in
file order on purpose (the first must see no mask at all).
"""
import re
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from test_node_graph import (image_msg, label_msg, next_stamp, running_node, same_stamp,  # noqa: E402
                             send_and_wait, stamp_ns)

NS, NAME = '/dd_out_ns', 'dd_out'


@pytest.fixture(scope='module')
def out(tmp_path_factory):
    yield from running_node(tmp_path_factory.mktemp('outputs'), params=('mask_warn_after:=1.0',), ns=NS, name=NAME)


def diag(g, pred=lambda v: True, timeout=10.0):
    def find():
        for arr in reversed(g.msgs('/diagnostics')):
            for st in arr.status:
                if st.name == f'{NAME}: depth':
                    v = {kv.key: kv.value for kv in st.values}
                    v['_level'], v['_message'] = st.level, st.message
                    return v if pred(v) else None
        return None
    return g.wait(find, timeout)


def _images_until(g, pred, seconds=15.0, mask_for=None):
    """Send 128x384 images (and, if given, mask_for(stamp) after each) until /diagnostics satisfies pred."""
    rgb = np.full((128, 384, 3), 100, np.uint8)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = next_stamp()
        send_and_wait(g, f'{NS}/image', image_msg(rgb, s), out=f'{NS}/depth')
        if mask_for is not None:
            g.pub(Image, f'{NS}/instance_mask').publish(mask_for(s))
        v = diag(g, pred, timeout=0.2)
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
    assert v['mask_publishers'] == '1' and v['masks_received'] == '0'
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
    assert v['_level'] == DiagnosticStatus.WARN and int(v['masks_received']) > 0 and v['objects_paired'] == '0'
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
