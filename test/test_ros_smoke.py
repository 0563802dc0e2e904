"""A real ROS 2 graph over DDS: an image published in one process arrives intact in another."""
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from test_node_graph import stop_process  # noqa: E402

PUBLISHER = textwrap.dedent('''
    import sys, numpy as np, rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    h, w, topic = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rclpy.init()
    node = rclpy.create_node('smoke_publisher')
    pub = node.create_publisher(Image, topic, qos_profile_sensor_data)
    img = (np.arange(h * w * 3, dtype=np.uint32) * 2654435761 % 251).astype(np.uint8)
    msg = Image(height=h, width=w, encoding='rgb8', step=w * 3, data=img.tobytes())
    msg.header.frame_id = 'camera_optical'
    try:
        for i in range(400):   # 20 s at 20 Hz, the test stops us (Ctrl-C) once it has what it needs
            msg.header.stamp.sec = 1000 + i
            pub.publish(msg)
            rclpy.spin_once(node, timeout_sec=0.05)
    except KeyboardInterrupt:
        pass
    node.destroy_node()
    rclpy.try_shutdown()
''')


@pytest.mark.parametrize('height,width', [(192, 640), (720, 1280)])
def test_image_crosses_process_boundary(height, width):
    """640x192 and 1280x720 rgb8 (2.7 MB, needs the shipped FastDDS profile) arrive bit-exact with sensor-data QoS."""
    topic = f'smoke_image_{height}'
    proc = subprocess.Popen([sys.executable, '-c', PUBLISHER, str(height), str(width), topic])
    rclpy.init()
    node = rclpy.create_node('smoke_subscriber')
    got = []
    node.create_subscription(Image, topic, got.append, qos_profile_sensor_data)
    try:
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline and proc.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        stop_process(proc)
        node.destroy_node()
        rclpy.shutdown()
    assert len(got) >= 3, f'received {len(got)} images of {width}x{height} from the other process'
    msg = got[-1]
    assert (msg.height, msg.width, msg.encoding, msg.header.frame_id) == (height, width, 'rgb8', 'camera_optical')
    expected = (np.arange(height * width * 3, dtype=np.uint32) * 2654435761 % 251).astype(np.uint8)
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint8), expected)
    assert msg.header.stamp.sec >= 1000
