"""Inference core: image → metric depth with ONNX Runtime or TensorRT (no rclpy, no torch).

    from dynadepth_ros.inference import DepthEstimator, BackendError, default_model_path
"""
from dynadepth_ros.inference.backend import Backend, BackendError
from dynadepth_ros.inference.backend_selection import (BACKENDS, DEFAULT_TOLERANCE, PRECISIONS, Selection,
                                                       ToleranceReport, select_backend)
from dynadepth_ros.inference.estimator import DepthEstimator, DepthResult, baseline_model_path, default_model_path
from dynadepth_ros.inference.postprocess import CameraCalibration, CameraInfoError
from dynadepth_ros.inference.preprocess import CropPlan, plan_crop

__all__ = ['BACKENDS', 'DEFAULT_TOLERANCE', 'PRECISIONS', 'Backend', 'BackendError', 'CameraCalibration',
           'CameraInfoError', 'CropPlan', 'DepthEstimator', 'DepthResult', 'Selection', 'ToleranceReport',
           'baseline_model_path', 'default_model_path', 'plan_crop', 'select_backend']
