"""QoS overrides over a real ROS 2 graph: an override on one topic changes that topic only (each publisher and
subscription has its own QoSProfile — rclpy writes an entity's overrides into the profile object it is given),
and the QoS-mismatch log names only override parameters the node really declares.

One `depth_node` started with two overrides: its `depth` publisher best effort, its `image` subscription
reliable. The other topics are checked from this test process with get_publishers_info_by_topic /
get_subscriptions_info_by_topic.
"""
import re

import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from test_node_graph import running_node  # noqa: E402

NS, NAME = '/dd_qos_ns', 'dd_qos'
OVERRIDES = (f'qos_overrides.{NS}/depth.publisher.reliability:=best_effort',
             f'qos_overrides.{NS}/image.subscription.reliability:=reliable')


@pytest.fixture(scope='module')
def qos_graph(tmp_path_factory):
    yield from running_node(tmp_path_factory.mktemp('qos'), params=OVERRIDES, ns=NS, name=NAME)


def _node_qos(g, topic, kind):
    """{reliability, durability} of the node's endpoint on `topic` (kind: 'publisher' or 'subscription')."""
    def find():
        infos = (g.node.get_publishers_info_by_topic(topic) if kind == 'publisher'
                 else g.node.get_subscriptions_info_by_topic(topic))
        mine = [i for i in infos if i.node_name == NAME and i.node_namespace == NS]
        return mine[0].qos_profile if mine else None
    q = g.wait(find, 15)
    assert q is not None, f'the node has no {kind} on {topic}'
    return q.reliability, q.durability


def test_an_override_on_one_topic_leaves_the_others_unchanged(qos_graph):
    g = qos_graph
    assert _node_qos(g, f'{NS}/depth', 'publisher')[0] == ReliabilityPolicy.BEST_EFFORT
    for topic in ('depth/camera_info', 'depth/colored', 'objects'):
        assert _node_qos(g, f'{NS}/{topic}', 'publisher') == \
            (ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE), f'{topic} publisher took the depth override'
    assert _node_qos(g, f'{NS}/image', 'subscription')[0] == ReliabilityPolicy.RELIABLE
    for topic in ('camera_info', 'instance_mask'):
        assert _node_qos(g, f'{NS}/{topic}', 'subscription')[0] == ReliabilityPolicy.BEST_EFFORT, \
            f'{topic} subscription took the image override'
    params = AsyncParameterClient(g.node, f'{NS}/{NAME}')
    assert params.wait_for_services(10)
    names = [f'qos_overrides.{NS}/{t}.{side}.reliability' for t, side in (
        ('depth', 'publisher'), ('depth/camera_info', 'publisher'), ('depth/colored', 'publisher'),
        ('objects', 'publisher'), ('image', 'subscription'), ('camera_info', 'subscription'),
        ('instance_mask', 'subscription'))]
    values = [v.string_value for v in g.call(params.get_parameters(names)).values]
    assert values == ['best_effort', 'reliable', 'reliable', 'reliable', 'reliable', 'best_effort', 'best_effort']


def test_qos_mismatch_advice_names_only_declared_overrides(qos_graph):
    g = qos_graph
    # reliability: a reliable subscriber against the best-effort depth publisher;
    # durability: a transient-local subscriber against the volatile depth/camera_info publisher
    g.node.create_subscription(Image, f'{NS}/depth', lambda m: None, QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE))
    g.node.create_subscription(CameraInfo, f'{NS}/depth/camera_info', lambda m: None, QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))

    def advice():
        lines = [ln for ln in g.log_path.read_text().splitlines() if 'QoS mismatch' in ln]
        return lines if any('DURABILITY' in ln for ln in lines) and any('RELIABILITY' in ln for ln in lines) else None
    lines = g.wait(advice, 15)
    assert lines, f'no QoS mismatch logged:\n{g.log_path.read_text()[-3000:]}'
    named = sorted({n for ln in lines for n in re.findall(r'qos_overrides\.[\w/]+\.\w+\.\w+', ln)})
    assert f'qos_overrides.{NS}/depth.publisher.reliability' in named
    assert f'qos_overrides.{NS}/depth/camera_info.publisher.durability' in named
    params = AsyncParameterClient(g.node, f'{NS}/{NAME}')
    assert params.wait_for_services(10)
    declared = set(g.call(params.list_parameters(prefixes=['qos_overrides'], depth=10)).result.names)
    missing = [n for n in named if n not in declared]
    assert not missing, f'the log advises overrides the node never declared: {missing}'
    assert g.proc.poll() is None
