"""The depth node's topics (node.py): the QoS of its publishers and subscriptions, one camera's publishers and
subscriptions, and the error logged when a peer's QoS is incompatible.

Publishers are reliable, keep last 5, volatile; subscriptions use the sensor-data profile (best effort, keep
last 5), as REP 2003 asks. Every publisher and subscription declares qos_overrides.<topic>.<side>.<policy>
parameters for OVERRIDABLE_POLICIES, read at start-up. Topic names are relative to the camera's namespace
(CameraStream.topic), so `cameras:=[front]` gives front/image → front/depth.
"""
from __future__ import annotations

from rclpy.qos import (QoSDurabilityPolicy, QoSHistoryPolicy, QoSPolicyKind, QoSProfile, QoSReliabilityPolicy,
                       qos_policy_name_from_kind, qos_profile_sensor_data)
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from dynadepth_ros.camera_streams import CameraStream
from dynadepth_ros.node_parameters import OUTPUT_LAYOUTS
from dynadepth_ros.ros_compat import PublisherEventCallbacks, SubscriptionEventCallbacks

# QoS policies every publisher and subscription declares a `qos_overrides.<topic>.<side>.<policy>` parameter for
OVERRIDABLE_POLICIES = (QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH, QoSPolicyKind.RELIABILITY, QoSPolicyKind.DURABILITY)


def qos_overriding_options() -> QoSOverridingOptions:
    return QoSOverridingOptions(policy_kinds=OVERRIDABLE_POLICIES)


def publisher_qos() -> QoSProfile:
    """A new QoSProfile for one publisher: reliable, keep last 5, volatile (REP 2003). One object per publisher,
    because rclpy writes that entity's qos_overrides.* values into the profile it is given."""
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=5, reliability=QoSReliabilityPolicy.RELIABLE,
                      durability=QoSDurabilityPolicy.VOLATILE)


def sensor_qos() -> QoSProfile:
    """A new copy of rclpy's sensor-data profile for one subscription (never the shared module-level object,
    which rclpy would modify with that subscription's overrides, for every later user in the process)."""
    s = qos_profile_sensor_data
    return QoSProfile(history=s.history, depth=s.depth, reliability=s.reliability, durability=s.durability,
                      deadline=s.deadline, lifespan=s.lifespan, liveliness=s.liveliness,
                      liveliness_lease_duration=s.liveliness_lease_duration,
                      avoid_ros_namespace_conventions=s.avoid_ros_namespace_conventions)


def qos_mismatch_warning(node, topic: str, side: str, on_mismatch):
    """The incompatible-QoS event handler of `node`'s `side` ('publisher' or 'subscription') of `topic`: calls
    on_mismatch() (the node counts it for /diagnostics) and logs an error saying which policy to change where."""
    def warn(event):
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        on_mismatch()
        overridable = {k.name for k in OVERRIDABLE_POLICIES}
        fix = (f'the parameter qos_overrides.{node.resolve_topic_name(topic)}.{side}.{policy.lower()} (at start-up)'
               if policy in overridable else 'the QoS of the other side')
        node.get_logger().error(
            f'QoS mismatch on {node.resolve_topic_name(topic)}: a {"subscriber" if side == "publisher" else "publisher"} '
            f'with incompatible {policy} appeared, so no messages flow between us; change {fix} (REP 2003: '
            f'sensor subscriptions best effort, publishers reliable)')
    return warn


def create_camera_publishers(node, cam: CameraStream, output_layout: str, on_mismatch) -> None:
    """The camera's lifecycle publishers into cam.pubs: 'depth' and 'info' (topics per OUTPUT_LAYOUTS[output_layout]),
    'colored' (depth/colored), 'objects' and 'points'."""
    depth_topic, info_topic = OUTPUT_LAYOUTS[output_layout]
    for key, mtype, rel in (('depth', Image, depth_topic), ('info', CameraInfo, info_topic),
                            ('colored', Image, 'depth/colored'), ('objects', MarkerArray, 'objects'),
                            ('points', PointCloud2, 'points')):
        topic = cam.topic(rel)
        cam.pubs[key] = node.create_lifecycle_publisher(
            mtype, topic, publisher_qos(), qos_overriding_options=qos_overriding_options(),
            event_callbacks=PublisherEventCallbacks(
                incompatible_qos=qos_mismatch_warning(node, topic, 'publisher', on_mismatch)))


def subscribe_camera(node, cam: CameraStream, transport: str, subs: list, *, on_image, on_camera_info, on_mask,
                     on_mismatch) -> None:
    """The camera's subscriptions, each appended to `subs` as it is made: its image (`transport` 'raw': Image on
    image; 'compressed': CompressedImage on <image>/compressed), camera_info and instance_mask (also cam.mask_sub).
    Callbacks: on_image(cam, transport, msg), on_camera_info(cam, msg), on_mask(cam, msg)."""
    def events(topic):
        return SubscriptionEventCallbacks(incompatible_qos=qos_mismatch_warning(node, topic, 'subscription',
                                                                                on_mismatch))

    if transport == 'compressed':
        topic = node.resolve_topic_name(cam.topic('image')) + '/compressed'
        subs.append(node.create_subscription(
            CompressedImage, topic, lambda m, c=cam: on_image(c, 'compressed', m), sensor_qos(),
            qos_overriding_options=qos_overriding_options(), event_callbacks=events(topic)))
    else:
        topic = cam.topic('image')
        subs.append(node.create_subscription(
            Image, topic, lambda m, c=cam: on_image(c, 'raw', m), sensor_qos(),
            qos_overriding_options=qos_overriding_options(), event_callbacks=events(topic)))
    topic = cam.topic('camera_info')
    subs.append(node.create_subscription(
        CameraInfo, topic, lambda m, c=cam: on_camera_info(c, m), sensor_qos(),
        qos_overriding_options=qos_overriding_options(), event_callbacks=events(topic)))
    topic = cam.topic('instance_mask')
    cam.mask_sub = node.create_subscription(
        Image, topic, lambda m, c=cam: on_mask(c, m), sensor_qos(), qos_overriding_options=qos_overriding_options(),
        event_callbacks=events(topic))
    subs.append(cam.mask_sub)
