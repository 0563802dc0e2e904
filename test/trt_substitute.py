"""`depth_node` with the substitute TensorRT runtime of test_inference_backends, whose engine build takes
$DYNADEPTH_TEST_TRT_BUILD_S seconds (sleeping, so with the GIL released like TensorRT's
build_serialized_network): a separate node process whose configure blocks for a known time in a TensorRT
engine build, without a GPU. Run as `python test/trt_substitute.py --ros-args ...` (any depth_node arguments).
"""
import os
import sys
import time

from dynadepth_ros.inference import tensorrt_backend
from test_inference_backends import SubstituteRuntime


class SlowBuildRuntime(SubstituteRuntime):
    """SubstituteRuntime whose build() takes build_s seconds."""

    def __init__(self, device_id=0, build_s=None):
        super().__init__()
        self.build_s = float(os.environ.get('DYNADEPTH_TEST_TRT_BUILD_S', '5') if build_s is None else build_s)

    def build(self, *args, **kwargs):
        time.sleep(self.build_s)
        return super().build(*args, **kwargs)


def command():
    """The argv that starts this substitute depth_node (append `--ros-args ...`)."""
    return [sys.executable, os.path.abspath(__file__)]


if __name__ == '__main__':
    tensorrt_backend.TensorRTRuntime = SlowBuildRuntime      # what TensorRTBackend instantiates without a runtime
    from dynadepth_ros.node import main
    raise SystemExit(main())
