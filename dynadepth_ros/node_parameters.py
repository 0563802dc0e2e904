"""The depth node's parameters (node.py): each with its default, range and unit and when it takes effect
(PARAMETERS), their declaration on the node, the verdict on a change while the node runs (a parameter that
only takes effect on configure or activate is refused while it cannot), and the check of the choice-valued
ones at configure.

    declare_parameters(node)                 every PARAMETERS entry, with its descriptor
    parameter_change_result(params, phase)   SetParametersResult for the node's on-set-parameters callback
    invalid_choice(value_of)                 '' or why a choice-valued parameter is not one of its values
"""
from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.parameter import Parameter

from dynadepth_ros.depth_outputs import INTRINSICS_SOURCES
from dynadepth_ros.inference import BACKENDS, PRECISIONS
from dynadepth_ros.ros_compat import EXECUTORS

TRANSPORTS = ('raw', 'compressed')
# output_layout → (depth image topic, its camera_info topic); depth_image_proc wants image_rect + camera_info siblings
OUTPUT_LAYOUTS = {'default': ('depth', 'depth/camera_info'),
                  'depth_image_proc': ('depth/image_rect', 'depth/camera_info')}
# Parameters that only take effect on configure (model, backend) or on activate (subscriptions, pairing):
CONFIGURE_PARAMS = ('model_path', 'backend', 'precision', 'fallback', 'trt_tolerance', 'engine_cache_dir',
                    'engine_path', 'intra_op_threads', 'intra_op_spinning', 'aspect_tolerance', 'allow_relative_model', 'output_layout',
                    'cameras')
ACTIVATE_PARAMS = ('image_transport', 'mask_queue_size', 'mask_slop', 'mask_max_wait')


def _desc(text: str, *, read_only: bool = False, lo=None, hi=None, step=None, constraints: str = '') -> ParameterDescriptor:
    d = ParameterDescriptor(description=text, read_only=read_only, additional_constraints=constraints)
    if isinstance(lo, float) or isinstance(hi, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    elif lo is not None:
        d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=int(step or 1))]
    return d


_WHEN_CONF = 'takes effect on configure; rejected unless the node is unconfigured'
_WHEN_ACT = 'takes effect on activate; rejected while the node is active'

# name: (default, descriptor)
PARAMETERS = {
    'model_path': ('', _desc('ONNX model (design §3 contract); empty = the bundled model', constraints=_WHEN_CONF)),
    'backend': ('auto', _desc('inference backend: auto picks TensorRT > ORT TensorRT EP > ORT CUDA EP > ORT CPU',
                              constraints='one of ' + ', '.join(BACKENDS) + '; ' + _WHEN_CONF)),
    'precision': ('fp32', _desc('TensorRT precision; int8 needs an INT8 model (`python -m training quantize`), '
                                'which every backend runs in int8 (ONNX Runtime CPU runs the model as it is)',
                                constraints='one of ' + ', '.join(PRECISIONS) + '; ' + _WHEN_CONF)),
    'fallback': (True, _desc('fall back to ONNX Runtime when the requested GPU backend fails (else refuse to start)',
                             constraints=_WHEN_CONF)),
    'trt_tolerance': (0.02, _desc('largest mean relative depth error vs ONNX Runtime CPU on the start-up check '
                                  'before a GPU backend is refused', lo=1e-5, hi=1.0, constraints=_WHEN_CONF)),
    'engine_cache_dir': ('', _desc('TensorRT engine cache; empty = ~/.cache/dynadepth_ros/engines',
                                   constraints=_WHEN_CONF)),
    'engine_path': ('', _desc('use this prebuilt TensorRT engine instead of the cache (checked, never rebuilt)',
                              constraints=_WHEN_CONF)),
    'intra_op_threads': (0, _desc('ONNX Runtime CPU threads; 0 = one per core', lo=0, hi=256, constraints=_WHEN_CONF)),
    'intra_op_spinning': (False, _desc(
        'ONNX Runtime CPU threads busy-wait between operators and after a frame (ONNX Runtime\'s own default; '
        'at best a few percent faster on otherwise idle cores); false: they sleep, leaving the cores to the node\'s '
        'transport and to other processes (camera drivers, segmentation) on a shared machine',
        constraints=_WHEN_CONF)),
    'aspect_tolerance': (0.05, _desc('relative aspect-ratio difference up to which the image is resized without '
                                     'cropping; beyond it a centred crop is used and the rest of the depth is NaN',
                                     lo=0.0, hi=1.0, constraints=_WHEN_CONF)),
    'allow_relative_model': (False, _desc('accept a model whose metadata says metric=false; its output is NOT in '
                                          'metres, which REP 118 consumers will misread', constraints=_WHEN_CONF)),
    'image_transport': ('raw', _desc('raw: sensor_msgs/Image on `image`; compressed: CompressedImage (jpeg/png) on '
                                     '`<image>/compressed`', constraints='one of raw, compressed; ' + _WHEN_ACT)),
    'mask_queue_size': (10, _desc('depth frames and masks kept for stamp pairing', lo=1, hi=1000,
                                  constraints=_WHEN_ACT)),
    'mask_slop': (0.05, _desc('largest stamp difference (s) between a depth frame and its mask', lo=0.0, hi=10.0,
                              constraints=_WHEN_ACT)),
    'mask_max_wait': (1.0, _desc('longest time (s) a depth frame waits for its mask before it is given up',
                                 lo=0.0, hi=60.0, constraints=_WHEN_ACT)),
    'mask_warn_after': (5.0, _desc(
        'seconds of masks that never pair before /diagnostics warns (and the log says why, once): the mask topic has '
        'publishers but no mask arrives while depth is produced, or masks arrive but no depth frame pairs with one',
        lo=0.5, hi=3600.0)),
    'output_width': (0, _desc('depth width in pixels; 0 = input image width (or from output_height keeping the '
                              'aspect ratio)', lo=0, hi=16384)),
    'output_height': (0, _desc('depth height in pixels; 0 = input image height (or from output_width keeping the '
                               'aspect ratio)', lo=0, hi=16384)),
    'use_camera_info': (True, _desc('use camera_info for focal-length compensation, depth/camera_info and object '
                                    'positions (without it the model training intrinsics are assumed)')),
    'intrinsics_source': ('P', _desc(
        'which camera_info matrix gives the image intrinsics (focal compensation, objects, points): P, as '
        'image_geometry / depth_image_proc read it (fx=P[0], cx=P[2], fy=P[5], cy=P[6]; right for rectified '
        'images), or K (the raw camera, for unrectified input). P all zero falls back to K with a one-time warning',
        constraints='one of ' + ', '.join(INTRINSICS_SOURCES))),
    'output_layout': ('default', _desc(
        'default: depth image on `depth`, its camera_info on `depth/camera_info`; depth_image_proc: the depth image '
        'on `depth/image_rect` next to `depth/camera_info`, the sibling pair depth_image_proc subscribes to',
        constraints='one of ' + ', '.join(OUTPUT_LAYOUTS) + '; ' + _WHEN_CONF)),
    'colored_min_depth': (1.0, _desc('depth/colored: nearest depth of the colour scale (m)', lo=0.01, hi=1000.0)),
    'colored_max_depth': (80.0, _desc('depth/colored: farthest depth of the colour scale (m)', lo=0.02, hi=10000.0)),
    'points_rgb': (False, _desc('points: add the camera colour as a packed float32 `rgb` field (like depth_image_proc '
                                '`point_cloud_xyzrgb`); the image is resized to the depth size')),
    'min_object_pixels': (20, _desc('smallest instance (pixels with valid depth) reported on `objects`',
                                    lo=1, hi=100000000)),
    'max_image_pixels': (4096 * 4096, _desc(
        'largest camera image (width x height pixels) processed; bigger frames are skipped and counted as bad '
        'frames. A CompressedImage is checked from its PNG/JPEG header before decoding (a few hundred bytes can '
        'declare 16000x16000 and make the decoder allocate gigabytes), a raw Image from its height and width',
        lo=1, hi=1 << 30)),
    'worker_timeout': (30.0, _desc(
        'longest time (s) the worker may spend on one frame; beyond it (or if the worker thread dies) '
        '/diagnostics goes ERROR and the process exits with status 1 so a launch respawn / supervisor restarts it',
        lo=0.5, hi=3600.0)),
    'cameras': ([], _desc(
        'camera namespaces served by this node with one model and backend, e.g. [front, left]: camera c reads '
        'c/image (c/image/compressed), c/camera_info, c/instance_mask and publishes c/depth, c/depth/camera_info, '
        'c/depth/colored, c/points, c/objects; the newest pending frame of every camera runs in one batch. '
        'Empty: one camera on image, depth, ... (no prefix)', constraints=_WHEN_CONF)),
    'autostart': (True, _desc('configure and activate at start (false: wait for a lifecycle manager)',
                              read_only=True)),
    'executor': ('auto', _desc(
        'rclpy executor that runs the node\'s callbacks: events (rclpy.experimental.EventsExecutor, dispatch in C++; '
        'about 1 ms less from a camera\'s publish to the worker than the Python executor on 2 cores), single_threaded '
        '(rclpy\'s SingleThreadedExecutor), or auto: events on Kilted and newer, single_threaded on Jazzy (a '
        'backported EventsExecutor) and Humble (none). events falls back to single_threaded where rclpy has none',
        read_only=True, constraints='one of ' + ', '.join(EXECUTORS))),
    'diagnostics_period': (1.0, _desc('seconds between /diagnostics messages', read_only=True, lo=0.1, hi=60.0)),
}

# parameter → the values it may take (checked on every change and again at configure)
CHOICES = {'backend': BACKENDS, 'precision': PRECISIONS, 'image_transport': TRANSPORTS,
           'intrinsics_source': INTRINSICS_SOURCES, 'output_layout': tuple(OUTPUT_LAYOUTS)}


def declare_parameters(node) -> None:
    """Declare every PARAMETERS entry on `node` (values given at start-up, e.g. --ros-args -p, take precedence)."""
    for name, (default, desc) in PARAMETERS.items():
        if isinstance(default, list):      # an empty list would be declared as a byte array: say the type
            if node.declare_parameter(name, Parameter.Type.STRING_ARRAY, desc).type_ == Parameter.Type.NOT_SET:
                node.set_parameters([Parameter(name, Parameter.Type.STRING_ARRAY, default)])
        else:
            node.declare_parameter(name, default, desc)


def parameter_change_result(params, phase: str) -> SetParametersResult:
    """Whether the node in lifecycle `phase` ('unconfigured', 'configuring', 'inactive', 'active', ...) accepts
    the change of `params`, and if not why and what to do."""
    for p in params:
        if p.name in CONFIGURE_PARAMS and phase != 'unconfigured':
            return SetParametersResult(successful=False, reason=(
                f'{p.name} takes effect on configure; the node is {phase}: deactivate and clean it up, '
                f'set {p.name}, then configure and activate'))
        if p.name in ACTIVATE_PARAMS and phase == 'active':
            return SetParametersResult(successful=False, reason=(
                f'{p.name} takes effect on activate; deactivate the node, set it, then activate'))
        if p.name in CHOICES and p.value not in CHOICES[p.name]:
            return SetParametersResult(successful=False, reason=f'{p.name} must be one of {CHOICES[p.name]}')
    return SetParametersResult(successful=True)


def invalid_choice(value_of) -> str:
    """'' when every choice-valued parameter holds one of its CHOICES, else which does not
    ('parameter backend='x' is not one of (...)'); value_of(name) gives a parameter's value."""
    for name, allowed in CHOICES.items():
        if value_of(name) not in allowed:
            return f'parameter {name}={value_of(name)!r} is not one of {allowed}'
    return ''
