"""BagReader on real rosbag2 files (mcap and sqlite3): topics, messages, errors, tf_static, helpers."""
import os

import cv2
import numpy as np
import pytest
from bag_builders import CAM_FRAME, LIDAR_FRAME, T0_NS, BagSpec, camera_K, scene_arrays, write_eval_bag
from rosbags.typesys import Stores, get_typestore

from dynadepth_ros.image_codec import ImageFormatError
from dynadepth_ros.recording.bag_reader import (BagError, BagReader, camera_info_K, cdr_header_stamp_ns,
                                                image_msg_depth, image_msg_labels, image_msg_rgb, odometry_pose, stamp_s)

T = get_typestore(Stores.ROS2_KILTED).types


@pytest.fixture(scope='module', params=['mcap', 'sqlite3'])
def bag_path(request, tmp_path_factory):
    return write_eval_bag(tmp_path_factory.mktemp(request.param) / 'bag',
                          BagSpec(frames=3, storage=request.param, with_lidar=True))


def test_topics_messages_and_decoding(bag_path):
    with BagReader(bag_path) as bag:
        assert bag.topics['/camera/image_raw'] == ('sensor_msgs/msg/Image', 3)
        assert bag.topics['/tf_static'] == ('tf2_msgs/msg/TFMessage', 1)
        got = list(bag.messages(['/camera/image_raw', '/camera/instance_mask', '/camera/depth_gt']))
        assert [t for t, _, _ in got[:3]] == ['/camera/image_raw', '/camera/instance_mask', '/camera/depth_gt']
        assert all(a[1] <= b[1] for a, b in zip(got, got[1:]))            # bag time order
        s = scene_arrays(1)
        img, mask, depth = (m for _, _, m in got[3:6])
        np.testing.assert_array_equal(image_msg_rgb(img), s['rgb'])
        np.testing.assert_array_equal(image_msg_labels(mask), s['labels'])
        np.testing.assert_array_equal(np.isnan(image_msg_depth(depth)), np.isnan(s['gt']))
        assert stamp_s(img) == pytest.approx(T0_NS * 1e-9 + 0.1)
        raw = next(bag.raw_messages(['/camera/camera_info']))
        assert raw[0] == '/camera/camera_info' and raw[1] == 'sensor_msgs/msg/CameraInfo'
        assert cdr_header_stamp_ns(raw[3]) == T0_NS
        np.testing.assert_allclose(camera_info_K(bag.deserialize(raw[3], raw[1])), camera_K())


def test_single_storage_file_opens_too(bag_path):
    f = next(p for p in bag_path.iterdir() if p.suffix in ('.mcap', '.db3'))
    with BagReader(f) as bag:
        assert bag.topics['/camera/depth_gt'][1] == 3


def test_static_transforms(bag_path):
    with BagReader(bag_path) as bag:
        tfs = bag.static_transforms()
    assert set(tfs) == {('base_link', CAM_FRAME), ('base_link', LIDAR_FRAME)}
    R = tfs[('base_link', CAM_FRAME)][:3, :3]
    np.testing.assert_allclose(R, [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-12)   # optical axis = base x


def test_missing_topic_lists_what_the_bag_has(bag_path):
    with BagReader(bag_path) as bag:
        with pytest.raises(BagError) as err:
            bag.require(['/camera/image_raw', '/camera/image_rect'])
    text = str(err.value)
    assert 'no topic /camera/image_rect' in text
    assert '/camera/depth_gt  sensor_msgs/msg/Image  (3 msgs)' in text and '/lidar/points' in text


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_truncated_bag_is_one_clear_error(tmp_path, storage):
    p = write_eval_bag(tmp_path / 'bag', BagSpec(frames=3, storage=storage))
    f = next(x for x in p.iterdir() if x.suffix in ('.mcap', '.db3'))
    os.truncate(f, f.stat().st_size // 2)
    with pytest.raises(BagError, match=r'cannot open bag .*truncated, corrupt'):
        with BagReader(p) as bag:
            list(bag.messages())


def test_not_a_bag(tmp_path):
    with pytest.raises(BagError, match='does not exist'):
        BagReader(tmp_path / 'nope').open()
    (tmp_path / 'x.txt').write_text('hello')
    with pytest.raises(BagError, match='without metadata.yaml'):
        BagReader(tmp_path).open()
    with pytest.raises(BagError, match='neither a rosbag2 directory'):
        BagReader(tmp_path / 'x.txt').open()
    garbage = tmp_path / 'g.mcap'
    garbage.write_bytes(b'\x00' * 100)
    with pytest.raises(BagError, match='cannot open bag'):
        BagReader(garbage).open()


def _header(stamp_ns=0, frame='cam'):
    return T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9,
                                                                         nanosec=stamp_ns % 10**9), frame_id=frame)


def test_compressed_images_and_unusable_encodings():
    rgb = scene_arrays(0)['rgb']
    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    msg = T['sensor_msgs/msg/CompressedImage'](header=_header(), format='rgb8; png compressed bgr8',
                                               data=np.frombuffer(png.tobytes(), np.uint8))
    np.testing.assert_array_equal(image_msg_rgb(msg), rgb)
    with pytest.raises(ImageFormatError, match='not CompressedImage'):
        image_msg_depth(msg)
    yuv = T['sensor_msgs/msg/Image'](header=_header(), height=2, width=2, encoding='nv21', is_bigendian=0,
                                     step=4, data=np.zeros(8, np.uint8))
    with pytest.raises(ImageFormatError, match="'nv21'"):
        image_msg_rgb(yuv)


def test_camera_info_and_odometry_helpers():
    info = T['sensor_msgs/msg/CameraInfo'](
        header=_header(), height=10, width=20, distortion_model='', d=np.zeros(0), k=np.zeros(9), r=np.eye(3).ravel(),
        p=np.zeros(12), binning_x=0, binning_y=0,
        roi=T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    with pytest.raises(ValueError, match='fx=0.*is the camera calibrated'):
        camera_info_K(info)
    P = T['geometry_msgs/msg/Pose'](position=T['geometry_msgs/msg/Point'](x=1.0, y=2.0, z=3.0),
                                    orientation=T['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=np.sin(np.pi / 4),
                                                                                  w=np.cos(np.pi / 4)))
    odom = T['nav_msgs/msg/Odometry'](
        header=_header(), child_frame_id='base_link',
        pose=T['geometry_msgs/msg/PoseWithCovariance'](pose=P, covariance=np.zeros(36)),
        twist=T['geometry_msgs/msg/TwistWithCovariance'](
            twist=T['geometry_msgs/msg/Twist'](linear=T['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0),
                                               angular=T['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0)),
            covariance=np.zeros(36)))
    M = odometry_pose(odom)
    np.testing.assert_allclose(M[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(M[:3, :3] @ [1, 0, 0], [0, 1, 0], atol=1e-12)   # 90° yaw: x → y
