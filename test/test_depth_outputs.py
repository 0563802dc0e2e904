"""depth_outputs (plain numpy): intrinsics from P or K, and the calibration published without camera_info."""
import numpy as np
import pytest

from dynadepth_ros.depth_outputs import camera_matrix, model_calibration
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
