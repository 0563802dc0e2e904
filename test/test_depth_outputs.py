"""depth_outputs (plain numpy): intrinsics from P or K, the calibration published without camera_info, and the
organized point cloud."""
import numpy as np
import pytest

from dynadepth_ros.depth_outputs import camera_matrix, model_calibration, organized_cloud, pack_rgb
from dynadepth_ros.inference.postprocess import CameraCalibration

K = np.array([[500.0, 0.3, 320.0], [0, 510.0, 240.0], [0, 0, 1]])
P = np.array([[480.0, 0, 300.0, -48.0], [0, 490.0, 250.0, 0], [0, 0, 1, 0]])


def test_camera_matrix_reads_P_like_image_geometry_and_K_on_request():
    calib = CameraCalibration(width=640, height=480, K=K, P=P)
    np.testing.assert_array_equal(camera_matrix(calib), [[480, 0, 300], [0, 490, 250], [0, 0, 1]])
    np.testing.assert_array_equal(camera_matrix(calib, 'K'), [[500, 0, 320], [0, 510, 240], [0, 0, 1]])
    zero_p = CameraCalibration(width=640, height=480, K=K, P=np.zeros((3, 4)))
    np.testing.assert_array_equal(camera_matrix(zero_p, 'P'), camera_matrix(zero_p, 'K'))
    with pytest.raises(ValueError, match='one of'):
        camera_matrix(calib, 'R')


def test_model_calibration_is_a_distortion_free_pinhole_with_P_from_K():
    c = model_calibration(K, 640, 480)
    assert (c.width, c.height, c.distortion_model, c.D) == (640, 480, 'plumb_bob', (0.0,) * 5)
    np.testing.assert_array_equal(c.P, np.hstack([K, np.zeros((3, 1))]))
    np.testing.assert_array_equal(c.R, np.eye(3))


def test_organized_cloud_back_projects_with_nan_for_invalid_depth_and_packs_rgb():
    depth = np.array([[2.0, np.nan, 4.0], [1.0, 0.0, np.inf]], np.float32)
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]], np.uint8)
    Kc = np.array([[2.0, 0, 1.0], [0, 4.0, 0.5], [0, 0, 1]])
    c = organized_cloud(depth, Kc, rgb)
    assert c.dtype.names == ('x', 'y', 'z', 'rgb') and c.dtype.itemsize == 16 and c.shape == (2, 3)
    assert c['x'][0, 0] == (0 - 1.0) * 2.0 / 2.0 and c['y'][1, 0] == (1 - 0.5) * 1.0 / 4.0 and c['z'][0, 2] == 4.0
    for r, col in ((0, 1), (1, 1), (1, 2)):
        assert np.isnan([c['x'][r, col], c['y'][r, col], c['z'][r, col]]).all()
    assert c['rgb'].view(np.uint32)[0, 0] == 0xFF0000 and c['rgb'].view(np.uint32)[1, 2] == 0x070809
    assert organized_cloud(depth, Kc).dtype.names == ('x', 'y', 'z')
    np.testing.assert_array_equal(pack_rgb(rgb).view(np.uint32)[0], [0xFF0000, 0x00FF00, 0x0000FF])
