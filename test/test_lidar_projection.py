"""Lidar → camera depth: PointCloud2 parsing, tf chains, nearest point per pixel, stamp pairing."""
import numpy as np
import pytest
from bag_builders import T_CAM_LIDAR, camera_K, lidar_points_from_gt, pointcloud_msg, scene_arrays
from rosbags.typesys import Stores, get_typestore

from dynadepth_ros.camera import transform_points
from dynadepth_ros.recording.lidar_projection import (LidarProjectionError, find_transform, lidar_depth_image,
                                                      pointcloud_xyz, project_points_to_depth)
from dynadepth_ros.recording.stamp_pairing import nearest_index, pair_by_stamp

T = get_typestore(Stores.ROS2_KILTED).types
K = np.array([[100.0, 0, 10.0], [0, 100.0, 5.0], [0, 0, 1]])


def test_nearest_point_wins_and_outside_points_are_dropped():
    pts = np.array([
        [0.0, 0.0, 8.0],     # pixel (row 5, col 10)
        [0.0, 0.0, 4.0],     # same pixel, nearer → wins
        [0.001, 0.0, 6.0],   # same pixel after rounding, farther
        [0.1, 0.0, 2.0],     # u = 15 → pixel (5, 15)
        [0.0, 0.0, -3.0],    # behind the camera
        [10.0, 0.0, 1.0],    # far outside the image
    ])
    d = project_points_to_depth(pts, K, height=10, width=20)
    assert d[5, 10] == pytest.approx(4.0)
    assert d[5, 15] == pytest.approx(2.0)
    assert np.isfinite(d).sum() == 2
    # order of points must not matter
    d2 = project_points_to_depth(pts[::-1], K, height=10, width=20)
    np.testing.assert_array_equal(np.nan_to_num(d, nan=-1), np.nan_to_num(d2, nan=-1))


def test_pixel_centres_round_to_nearest_pixel():
    # u = 100*x/z + 10: x/z = 0.0049 → u = 10.49 → col 10; 0.0051 → 10.51 → col 11
    d = project_points_to_depth(np.array([[0.049, 0, 10.0], [0.0, 0.051, 10.0]]), K, 10, 20)
    assert np.isfinite(d[5, 10]) and np.isfinite(d[6, 10])


def test_pointcloud_parsing_padded_float64_and_big_endian():
    PF = T['sensor_msgs/msg/PointField']
    xyz = np.array([[1.0, 2.0, 3.0], [np.nan, 0, 0], [4.0, 5.0, 6.0]])
    rec = np.zeros(3, dtype=[('pad', '>u4'), ('z', '>f8'), ('x', '>f8'), ('y', '>f8'), ('i', '>f4')])
    rec['x'], rec['y'], rec['z'] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    step = rec.dtype.itemsize
    fields = [PF(name='z', offset=4, datatype=8, count=1), PF(name='x', offset=12, datatype=8, count=1),
              PF(name='y', offset=20, datatype=8, count=1)]
    Header = T['std_msgs/msg/Header']
    msg = T['sensor_msgs/msg/PointCloud2'](header=Header(stamp=T['builtin_interfaces/msg/Time'](sec=0, nanosec=0),
                                                         frame_id='l'), height=1, width=3, fields=fields,
                                           is_bigendian=True, point_step=step, row_step=step * 3,
                                           data=np.frombuffer(rec.tobytes(), np.uint8), is_dense=False)
    np.testing.assert_allclose(pointcloud_xyz(msg), [[1, 2, 3], [4, 5, 6]])   # NaN point dropped
    msg.fields = fields[:2]
    with pytest.raises(LidarProjectionError, match="no field \\['y'\\]"):
        pointcloud_xyz(msg)


def test_transform_chain_and_inversion():
    T_base_cam = np.eye(4)
    T_base_cam[:3, 3] = (1.0, 0.0, 2.0)
    T_base_lidar = np.eye(4)
    T_base_lidar[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    T_base_lidar[:3, 3] = (0.5, 0.5, 1.0)
    tfs = {('base', 'cam'): T_base_cam, ('base', 'lidar'): T_base_lidar}
    T_cam_lidar = find_transform(tfs, 'cam', '/lidar')
    np.testing.assert_allclose(T_cam_lidar, np.linalg.inv(T_base_cam) @ T_base_lidar, atol=1e-12)
    np.testing.assert_allclose(find_transform(tfs, 'lidar', 'cam') @ T_cam_lidar, np.eye(4), atol=1e-12)
    with pytest.raises(LidarProjectionError, match="known frames: \\['base', 'cam', 'lidar'\\]"):
        find_transform(tfs, 'cam', 'radar')


def test_projected_cloud_reproduces_depth_image():
    s = scene_arrays(0)
    Kc = camera_K()
    cloud = pointcloud_msg(T, 0, lidar_points_from_gt(s['gt'], Kc, step=3))
    d = lidar_depth_image(cloud, T_CAM_LIDAR, Kc, *s['gt'].shape)
    hit = np.isfinite(d)
    assert hit.sum() > 1000
    np.testing.assert_allclose(d[hit], s['gt'][hit], rtol=1e-5)
    # wrong extrinsics (identity) put the points elsewhere
    assert np.isfinite(lidar_depth_image(cloud, np.eye(4), Kc, *s['gt'].shape)).sum() < hit.sum() // 2
    assert np.allclose(transform_points(T_CAM_LIDAR, [1.0, 0, 0]), [0, -0.3, 1.1])


def test_pair_by_stamp_one_to_one_nearest_first():
    a = [100, 200, 300, 400]
    b = [205, 199, 390, 1000]
    p = pair_by_stamp(a, b, tolerance_ns=10)
    assert p.pairs == [(1, 1), (3, 2)]          # 200↔199 beats 200↔205; 205 left over
    assert p.unmatched_a == [0, 2] and p.unmatched_b == [0, 3]
    assert p.offsets_ns == [-1, -10]
    assert p.summary()['pairs'] == 2
    assert pair_by_stamp(a, [], 5).unmatched_a == [0, 1, 2, 3]
    assert nearest_index([10, 20, 30], 26) == 2 and nearest_index([10], 40, tolerance_ns=5) is None
