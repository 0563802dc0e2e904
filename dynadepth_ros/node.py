"""The depth node `dynadepth` (executable `depth_node`): camera image in, REP 118 metric depth out.

A lifecycle node (rclpy.lifecycle.LifecycleNode): configure loads the model and creates the publishers,
activate creates the subscriptions and starts the worker thread, deactivate/cleanup undo that. With
`autostart` (default true, read-only) it configures and activates itself at start, so `ros2 run` alone gives
a working node; if that configure fails the process exits with status 1 and the reason in the log.
A watchdog checks the worker thread: if it died, or spent more than `worker_timeout` seconds on one frame,
/diagnostics goes ERROR with the reason and the process exits with status 1 a moment later, so a launch
respawn or a supervisor restarts it (a process that lives on without publishing would look healthy).

Topics (relative, remappable)                                    QoS (defaults; change via qos_overrides.*)
  in  image               sensor_msgs/Image, image_codec.COLOR_ENCODINGS      sensor data (best effort, depth 5)
      image/compressed    sensor_msgs/CompressedImage (image_transport:=compressed)
      camera_info         sensor_msgs/CameraInfo (optional)                   sensor data
      instance_mask       sensor_msgs/Image mono8/8UC1/mono16/16UC1/32SC1 ids sensor data
  out depth               sensor_msgs/Image 32FC1 metres, NaN invalid, the image's header   reliable, depth 5
      depth/camera_info   CameraInfo rescaled to the depth size (always; the model's intrinsics reliable
                          without camera_info), identical header
      depth/colored       bgr8 (only computed while someone subscribes)                      reliable
      points              organized PointCloud2 x,y,z(,rgb) float32, NaN invalid (only while  reliable
                          someone subscribes)
      objects             visualization_msgs/MarkerArray per instance (needs masks)          reliable
      /diagnostics        diagnostic_msgs/DiagnosticArray at 1 Hz                            reliable

Processing is latest-frame-wins on one worker thread: the subscription callback only stores the newest
image (a frame replaced before the worker took it counts as dropped), so there is never a backlog. Masks are
paired with computed depth frames by stamp (mask_sync.py); depth never waits for a mask. Masks that never pair
(publishers but nothing received, or received but never matching) turn /diagnostics WARN after
`mask_warn_after`. Frames larger than `max_image_pixels` (a CompressedImage by its PNG/JPEG header, before
decoding) are skipped as bad frames; camera_info with a focal length outside 0.1x..10x of the model's is
ignored (with a throttled warning). Camera intrinsics come from camera_info P (or K, `intrinsics_source`).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (QoSDurabilityPolicy, QoSHistoryPolicy, QoSPolicyKind, QoSProfile, QoSReliabilityPolicy,
                       qos_policy_name_from_kind, qos_profile_sensor_data)
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from dynadepth_ros import ros_messages
from dynadepth_ros.camera import resize_nearest
from dynadepth_ros.colorize import colorize_depth
from dynadepth_ros.configure_progress import ConfigureProgress
from dynadepth_ros.depth_outputs import INTRINSICS_SOURCES, camera_matrix, model_calibration, organized_cloud
from dynadepth_ros.image_codec import ImageFormatError, check_image_pixels
from dynadepth_ros.inference import BACKENDS, PRECISIONS, BackendError, DepthEstimator
from dynadepth_ros.inference.postprocess import (CameraCalibration, CameraInfoError, focal_ratios,
                                                 image_calibration, rescale_calibration)
from dynadepth_ros.inference.preprocess import resize_interpolation
from dynadepth_ros.latency import RollingWindow
from dynadepth_ros.mask_sync import MaskPairer, MaskWatch
from dynadepth_ros.model_format import ModelFormatError
from dynadepth_ros.objects import instance_depths
from dynadepth_ros.ros_compat import PublisherEventCallbacks, SubscriptionEventCallbacks, export_fastdds_profile

NODE_NAME = 'dynadepth'
TRANSPORTS = ('raw', 'compressed')
# output_layout → (depth image topic, its camera_info topic); depth_image_proc wants image_rect + camera_info siblings
OUTPUT_LAYOUTS = {'default': ('depth', 'depth/camera_info'),
                  'depth_image_proc': ('depth/image_rect', 'depth/camera_info')}
# Parameters that only take effect on configure (model, backend) or on activate (subscriptions, pairing):
CONFIGURE_PARAMS = ('model_path', 'backend', 'precision', 'fallback', 'trt_tolerance', 'engine_cache_dir',
                    'engine_path', 'intra_op_threads', 'aspect_tolerance', 'allow_relative_model', 'output_layout')
ACTIVATE_PARAMS = ('image_transport', 'mask_queue_size', 'mask_slop', 'mask_max_wait')
THROTTLE_S = 5.0
WATCHDOG_PERIOD_S = 0.5
EXIT_GRACE_S = 1.0        # between the ERROR status on /diagnostics and the exit, so subscribers receive it
# QoS policies every publisher and subscription declares a `qos_overrides.<topic>.<side>.<policy>` parameter for
OVERRIDABLE_POLICIES = (QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH, QoSPolicyKind.RELIABILITY, QoSPolicyKind.DURABILITY)


def _qos_options() -> QoSOverridingOptions:
    return QoSOverridingOptions(policy_kinds=OVERRIDABLE_POLICIES)


def _publisher_qos() -> QoSProfile:
    """A new QoSProfile for one publisher: reliable, keep last 5, volatile (REP 2003). One object per publisher,
    because rclpy writes that entity's qos_overrides.* values into the profile it is given."""
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=5, reliability=QoSReliabilityPolicy.RELIABLE,
                      durability=QoSDurabilityPolicy.VOLATILE)


def _sensor_qos() -> QoSProfile:
    """A new copy of rclpy's sensor-data profile for one subscription (never the shared module-level object,
    which rclpy would modify with that subscription's overrides, for every later user in the process)."""
    s = qos_profile_sensor_data
    return QoSProfile(history=s.history, depth=s.depth, reliability=s.reliability, durability=s.durability,
                      deadline=s.deadline, lifespan=s.lifespan, liveliness=s.liveliness,
                      liveliness_lease_duration=s.liveliness_lease_duration,
                      avoid_ros_namespace_conventions=s.avoid_ros_namespace_conventions)


class WorkerFailure(RuntimeError):
    """The worker thread died or is stuck; raised out of the executor so that main() exits with status 1."""


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
    'precision': ('fp32', _desc('TensorRT precision (ONNX Runtime CPU always runs fp32)',
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
    'autostart': (True, _desc('configure and activate at start (false: wait for a lifecycle manager)',
                              read_only=True)),
    'diagnostics_period': (1.0, _desc('seconds between /diagnostics messages', read_only=True, lo=0.1, hi=60.0)),
}


@dataclass
class _Frame:
    """A computed depth frame waiting for its mask."""
    header: object
    depth: np.ndarray        # float32 [h,w] metres
    K: np.ndarray            # float64 [3,3] intrinsics of `depth` (from camera_info, or assumed)


class DepthNode(LifecycleNode):
    """Lifecycle node publishing metric depth; see the module docstring."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        for name, (default, desc) in PARAMETERS.items():
            self.declare_parameter(name, default, desc)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._phase = 'unconfigured'
        self._status_error = ''
        self.estimator: DepthEstimator | None = None
        self._pubs: dict = {}
        self._subs: list = []
        self._lock = threading.Condition()
        self._slot = None                  # (kind, msg) latest unprocessed image
        self._masks: list = []              # unprocessed mask messages
        self._worker: threading.Thread | None = None
        self._running = False
        self._camera_info: CameraInfo | None = None
        self._camera_info_note = 'no camera_info received'
        self._p_zero_warned = False               # intrinsics_source P with an all-zero P: warned once
        self._pairer: MaskPairer | None = None
        self._mask_sub = None
        self._mask_watch: MaskWatch | None = None
        self._mask_warned: set[str] = set()      # MaskWatch problem kinds already logged since activation
        self._throttle: dict[str, tuple[float, int]] = {}
        self._busy_since: float | None = None    # monotonic time the worker started on its current item
        self._worker_death = ''                   # the exception that ended the worker thread
        self._fatal = ''                          # why the node exits (worker dead or stuck)
        self._fatal_at = 0.0
        self._progress: ConfigureProgress | None = None   # while on_configure runs: what it does, for /diagnostics
        self._reset_stats()
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_timer = self.create_timer(float(self.get_parameter('diagnostics_period').value),
                                             self._publish_diagnostics)
        self._watchdog_timer = self.create_timer(WATCHDOG_PERIOD_S, self._watch_worker)

    # ---------------------------------------------------------------- parameters
    def _on_set_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name in CONFIGURE_PARAMS and self._phase != 'unconfigured':
                return SetParametersResult(successful=False, reason=(
                    f'{p.name} takes effect on configure; the node is {self._phase}: deactivate and clean it up, '
                    f'set {p.name}, then configure and activate'))
            if p.name in ACTIVATE_PARAMS and self._phase == 'active':
                return SetParametersResult(successful=False, reason=(
                    f'{p.name} takes effect on activate; deactivate the node, set it, then activate'))
            if p.name == 'backend' and p.value not in BACKENDS:
                return SetParametersResult(successful=False, reason=f'backend must be one of {BACKENDS}')
            if p.name == 'precision' and p.value not in PRECISIONS:
                return SetParametersResult(successful=False, reason=f'precision must be one of {PRECISIONS}')
            if p.name == 'image_transport' and p.value not in TRANSPORTS:
                return SetParametersResult(successful=False, reason=f'image_transport must be one of {TRANSPORTS}')
            if p.name == 'intrinsics_source' and p.value not in INTRINSICS_SOURCES:
                return SetParametersResult(successful=False,
                                           reason=f'intrinsics_source must be one of {INTRINSICS_SOURCES}')
            if p.name == 'output_layout' and p.value not in OUTPUT_LAYOUTS:
                return SetParametersResult(successful=False,
                                           reason=f'output_layout must be one of {tuple(OUTPUT_LAYOUTS)}')
        return SetParametersResult(successful=True)

    def _p(self, name: str):
        return self.get_parameter(name).value

    def _log_throttled(self, key: str, level: str, text: str) -> None:
        """Log `text` now if `key` is new or was last logged THROTTLE_S ago, with how many were suppressed."""
        now = time.monotonic()
        last, suppressed = self._throttle.get(key, (-1e9, 0))
        if now - last < THROTTLE_S:
            self._throttle[key] = (last, suppressed + 1)
            return
        self._throttle[key] = (now, 0)
        more = f' ({suppressed} similar in the last {THROTTLE_S:.0f} s not shown)' if suppressed else ''
        self._log(level, text + more)

    def _log(self, level: str, text: str) -> None:
        """Log at `level` ('error', 'warning' or 'info'), one call site per severity: rclpy refuses a call site
        whose severity changes between calls (ValueError), which would kill the worker."""
        logger = self.get_logger()
        if level == 'error':
            logger.error(text)
        elif level == 'warning':
            logger.warning(text)
        else:
            logger.info(text)

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        for name, allowed in (('backend', BACKENDS), ('precision', PRECISIONS), ('image_transport', TRANSPORTS),
                              ('intrinsics_source', INTRINSICS_SOURCES), ('output_layout', tuple(OUTPUT_LAYOUTS))):
            if self._p(name) not in allowed:
                return self._configure_failed(f'parameter {name}={self._p(name)!r} is not one of {allowed}')
        model_path = self._p('model_path') or None
        # the executor is blocked until configure returns (a TensorRT engine build takes minutes): /diagnostics
        # keeps coming from ConfigureProgress's own thread, saying what is being done and for how long
        self._progress = ConfigureProgress(float(self._p('diagnostics_period')), self._publish_diagnostics,
                                           on_error=lambda exc: self._log_throttled(
                                               'progress', 'error', f'/diagnostics during configure: {exc!r}'))
        self._status_error, self._phase = '', 'configuring'
        try:
            with self._progress:
                est = DepthEstimator(
                    model_path, backend=self._p('backend'), precision=self._p('precision'),
                    engine_cache_dir=self._p('engine_cache_dir') or None, fallback=bool(self._p('fallback')),
                    trt_tolerance=float(self._p('trt_tolerance')), engine_path=self._p('engine_path') or None,
                    aspect_tolerance=float(self._p('aspect_tolerance')), max_batch=1,
                    intra_op_threads=int(self._p('intra_op_threads')), log=self.get_logger().warning,
                    progress=self._progress.stage)
        except (ModelFormatError, BackendError, ValueError, OSError) as exc:
            return self._configure_failed(f'cannot load the model: {exc}')
        finally:
            self._progress, self._phase = None, 'unconfigured'
        if not est.metadata.metric and not self._p('allow_relative_model'):
            est.close()
            return self._configure_failed(
                f'model {est.model_path} is not metric (dynadepth.metric=false): its depth is relative, not metres, '
                f'and REP 118 consumers would misread it. Use a metric model, or set allow_relative_model:=true '
                f'if you accept relative depth on the 32FC1 topic')
        self.estimator = est
        for note in est.notes:
            self.get_logger().warning(note)
        m = est.metadata
        self.get_logger().info(
            f'model {est.model_path} (stage {m.stage}, {"metric" if m.metric else "RELATIVE"}, input '
            f'{m.input_width}x{m.input_height}, depth {m.min_depth:g}..{m.max_depth:g} m) on {est.backend_name}')
        depth_topic, info_topic = OUTPUT_LAYOUTS[self._p('output_layout')]
        for key, mtype, topic in (('depth', Image, depth_topic), ('info', CameraInfo, info_topic),
                                  ('colored', Image, 'depth/colored'), ('objects', MarkerArray, 'objects'),
                                  ('points', PointCloud2, 'points')):
            self._pubs[key] = self.create_lifecycle_publisher(
                mtype, topic, _publisher_qos(), qos_overriding_options=_qos_options(),
                event_callbacks=PublisherEventCallbacks(incompatible_qos=self._qos_warning(topic, 'publisher')))
        self._status_error = ''
        self._phase = 'inactive'
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._status_error = reason
        self.get_logger().error(reason)
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        opts = _qos_options
        if self._p('image_transport') == 'compressed':
            topic = self.resolve_topic_name('image') + '/compressed'
            self._subs.append(self.create_subscription(
                CompressedImage, topic, lambda m: self._on_image('compressed', m), _sensor_qos(),
                qos_overriding_options=opts(), event_callbacks=self._sub_events(topic)))
        else:
            self._subs.append(self.create_subscription(
                Image, 'image', lambda m: self._on_image('raw', m), _sensor_qos(), qos_overriding_options=opts(),
                event_callbacks=self._sub_events('image')))
        self._subs.append(self.create_subscription(
            CameraInfo, 'camera_info', self._on_camera_info, _sensor_qos(), qos_overriding_options=opts(),
            event_callbacks=self._sub_events('camera_info')))
        self._mask_sub = self.create_subscription(
            Image, 'instance_mask', self._on_mask, _sensor_qos(), qos_overriding_options=opts(),
            event_callbacks=self._sub_events('instance_mask'))
        self._subs.append(self._mask_sub)
        self._pairer = MaskPairer(int(self._p('mask_queue_size')), float(self._p('mask_slop')),
                                  float(self._p('mask_max_wait')), on_time_jump=self._on_time_jump)
        self._mask_watch = MaskWatch(float(self._p('mask_warn_after')))
        self._mask_warned = set()
        self._running = True
        self._busy_since, self._worker_death = None, ''
        self._worker = threading.Thread(target=self._work, name='dynadepth-worker', daemon=True)
        self._worker.start()
        self._phase = 'active'
        self.get_logger().info(f'active: depth from {self.resolve_topic_name("image")} '
                               f'({self._p("image_transport")}) on {self._pubs["depth"].topic_name} '
                               f'with {self._pubs["info"].topic_name}')
        return super().on_activate(state)

    def _stop_worker(self) -> bool:
        """Stop the subscriptions and the worker; False when the worker did not stop (stuck)."""
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        with self._lock:
            self._running = False
            self._slot = None
            self._masks = []
            self._lock.notify_all()
        stopped = True
        if self._worker is not None:
            self._worker.join(timeout=1.0 if self._fatal else 10.0)
            stopped = not self._worker.is_alive()
            self._worker = None
        self._mask_sub = None
        return stopped

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._phase = 'inactive'
        return super().on_deactivate(state)

    def _release(self) -> None:
        stopped = self._stop_worker()
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self.estimator is not None:
            if stopped:              # a stuck worker may still be inside the backend: leave it to process exit
                self.estimator.close()
            self.estimator = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._phase = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._phase = 'finalized'
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._phase = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    # ---------------------------------------------------------------- QoS events
    def _qos_warning(self, topic: str, side: str):
        def warn(event):
            policy = qos_policy_name_from_kind(event.last_policy_kind)
            self._stats['qos_incompatible'] += 1
            overridable = {k.name for k in OVERRIDABLE_POLICIES}
            fix = (f'the parameter qos_overrides.{self.resolve_topic_name(topic)}.{side}.{policy.lower()} (at start-up)'
                   if policy in overridable else 'the QoS of the other side')
            self.get_logger().error(
                f'QoS mismatch on {self.resolve_topic_name(topic)}: a {"subscriber" if side == "publisher" else "publisher"} '
                f'with incompatible {policy} appeared, so no messages flow between us; change {fix} (REP 2003: '
                f'sensor subscriptions best effort, publishers reliable)')
        return warn

    def _sub_events(self, topic: str) -> SubscriptionEventCallbacks:
        return SubscriptionEventCallbacks(incompatible_qos=self._qos_warning(topic, 'subscription'))

    # ---------------------------------------------------------------- callbacks (executor thread: store only)
    def _on_image(self, kind: str, msg) -> None:
        self._in_rate.add()
        with self._lock:
            if self._slot is not None:
                self._stats['dropped'] += 1
            self._slot = (kind, msg)
            self._lock.notify()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg
        self._stats['camera_info_in'] += 1

    def _on_mask(self, msg: Image) -> None:
        with self._lock:
            self._stats['masks_in'] += 1
            self._masks.append(msg)
            if len(self._masks) > max(1, int(self._p('mask_queue_size'))):
                del self._masks[0]
                self._stats['masks_dropped'] += 1
            self._lock.notify()

    # ---------------------------------------------------------------- worker thread
    def _work(self) -> None:
        try:
            self._work_loop()
        except BaseException as exc:          # recorded for the watchdog (_watch_worker), then the thread ends
            self._worker_death = f'{type(exc).__name__}: {exc}'
            raise

    def _work_loop(self) -> None:
        while True:
            with self._lock:
                while self._running and self._slot is None and not self._masks:
                    self._lock.wait(timeout=0.2)
                    if self._pairer is not None and self._running:
                        break
                if not self._running:
                    return
                item, self._slot = self._slot, None
                masks, self._masks = self._masks, []
            self._busy_since = time.monotonic()
            try:
                for m in masks:
                    self._handle_mask(m)
                if item is not None:
                    self._handle_image(*item)
                self._publish_objects(self._pairer.poll())
            except Exception as exc:   # a bug must not silently kill the worker: log, count, carry on
                self._stats['errors'] += 1
                self._log_throttled(f'error:{type(exc).__name__}', 'error',
                                    f'unexpected error while processing a frame: {type(exc).__name__}: {exc}')
            finally:
                self._busy_since = None

    def _on_time_jump(self, stream: str, stamp_ns: int, newest_ns: int) -> None:
        self.get_logger().warning(
            f'{"image" if stream == "depth" else "instance_mask"} stamps went backwards by '
            f'{(newest_ns - stamp_ns) / 1e9:.3f} s (looped bag, restarted driver or sim time reset?): '
            f'mask pairing restarted from the new stamps')

    # ---------------------------------------------------------------- watchdog (executor thread)
    def _worker_failure(self) -> str:
        """Why the worker can no longer publish depth ('' while it is healthy or not supposed to run)."""
        worker = self._worker
        if worker is None or not self._running:
            return ''
        if not worker.is_alive():
            return f'worker thread died ({self._worker_death or "no exception recorded"}); no depth is published'
        busy = self._busy_since
        limit = float(self._p('worker_timeout'))
        if busy is not None and time.monotonic() - busy > limit:
            return (f'worker stuck for {time.monotonic() - busy:.1f} s on one frame (worker_timeout {limit:g} s); '
                    f'no depth is published')
        return ''

    def _watch_worker(self) -> None:
        """Timer: on a dead or stuck worker report ERROR on /diagnostics, then (EXIT_GRACE_S later) raise
        WorkerFailure out of the executor so that main() exits with status 1."""
        if self._fatal:
            if time.monotonic() - self._fatal_at >= EXIT_GRACE_S:
                raise WorkerFailure(self._fatal)
            return
        reason = self._worker_failure()
        if not reason:
            return
        self._fatal = self._status_error = reason
        self._fatal_at = time.monotonic()
        self.get_logger().fatal(f'{reason}; exiting with status 1 so that a supervisor (launch respawn) '
                                f'restarts the node')
        self._publish_diagnostics()

    def _image_intrinsics(self, h: int, w: int) -> tuple[CameraCalibration, np.ndarray] | None:
        """(calibration of the h x w image, its intrinsics K [3,3] per intrinsics_source), or None without a
        usable camera_info."""
        info = self._camera_info
        if info is None or not self._p('use_camera_info'):
            self._camera_info_note = 'no camera_info received' if info is None else 'disabled (use_camera_info)'
            return None
        source = self._p('intrinsics_source')
        if source == 'P' and not np.any(np.asarray(info.p, np.float64).reshape(3, 4)[:, :3]):
            source = 'K'
            if not self._p_zero_warned:
                self._p_zero_warned = True
                self._log('warning', 'intrinsics_source is P but camera_info P is all zero (an unrectified camera '
                                     'driver?): using K; set intrinsics_source:=K to say so')
        try:
            calib, note = image_calibration(ros_messages.camera_info_to_calibration(info), h, w)
            K = camera_matrix(calib, source)
            m = self.estimator.metadata       # implausible focal lengths: keep the model's intrinsics
            focal_ratios(self.estimator.plan_for(h, w).model_intrinsics(K), m.intrinsics, m.input_height,
                         m.input_width)
        except CameraInfoError as exc:
            self._stats['camera_info_errors'] += 1
            self._camera_info_note = f'ignored: {exc}'
            self._log_throttled('camera_info:' + str(exc)[:60], 'warning', f'camera_info ignored: {exc}')
            return None
        self._camera_info_note = f'ok, intrinsics from {source}' + (f'; {note}' if note else '')
        if note:
            self._log_throttled('camera_info_note:' + note[:60], 'warning', note)
        return calib, K

    def _handle_image(self, kind: str, msg) -> None:
        max_pixels = int(self._p('max_image_pixels'))
        try:
            if kind == 'compressed':
                rgb = ros_messages.compressed_to_rgb(msg, max_pixels)
            else:
                check_image_pixels(int(msg.width), int(msg.height), max_pixels, f'{msg.encoding} Image')
                rgb = ros_messages.image_to_rgb(msg)
        except ImageFormatError as exc:
            self._stats['bad_frames'] += 1
            self._last_bad = str(exc)
            self._log_throttled('frame:' + str(exc)[:40], 'error',
                                f'skipping camera frame ({self._stats["bad_frames"]} so far): {exc}')
            return
        h, w = rgb.shape[:2]
        oh, ow = int(self._p('output_height')), int(self._p('output_width'))
        if not oh and not ow:
            oh, ow = h, w
        elif not oh:                   # one side given: keep the image's aspect ratio
            oh = max(1, round(h * ow / w))
        elif not ow:
            ow = max(1, round(w * oh / h))
        intr = self._image_intrinsics(h, w)
        est = self.estimator
        res = est.infer_detailed([rgb], None if intr is None else [intr[1]], (oh, ow))[0]
        header = msg.header
        self._pubs['depth'].publish(ros_messages.depth_to_msg(res.depth, header))
        now_ns = self.get_clock().now().nanoseconds
        latency_ms = (now_ns - ros_messages.stamp_ns(header)) / 1e6
        self._latency.add(latency_ms)
        self._inference.add(res.inference_ms)
        self._overhead.add(latency_ms - res.inference_ms)
        self._out_rate.add()
        self._stats['frames_out'] += 1
        K_out = res.K                  # the camera's K, or without it the model's, at the depth size
        if intr is not None:           # the camera's calibration, K and P rescaled to the depth size
            out_calib = rescale_calibration(intr[0], oh, ow)
        else:                          # the intrinsics the model assumed, mapped back onto the depth image
            out_calib = model_calibration(K_out, ow, oh)
        self._pubs['info'].publish(ros_messages.calibration_to_camera_info(out_calib, header))
        if self._pubs['colored'].get_subscription_count() > 0:
            bgr = colorize_depth(res.depth, float(self._p('colored_min_depth')),
                                 max(float(self._p('colored_max_depth')), float(self._p('colored_min_depth')) * 1.01))
            self._pubs['colored'].publish(ros_messages.bgr_to_msg(bgr, header))
            self._stats['colored_out'] += 1
        if self._pubs['points'].get_subscription_count() > 0:
            colour = None
            if self._p('points_rgb'):
                colour = rgb if (h, w) == (oh, ow) else cv2.resize(rgb, (ow, oh), interpolation=resize_interpolation(
                    h, w, oh, ow))
            self._pubs['points'].publish(ros_messages.cloud_to_msg(organized_cloud(res.depth, K_out, colour), header))
            self._stats['points_out'] += 1
        mask_sub = self._mask_sub
        if mask_sub is not None and (mask_sub.get_publisher_count() > 0 or self._pairer.stats.masks_received > 0):
            # only while a mask source exists: otherwise every frame would wait for nothing
            self._publish_objects(self._pairer.add_depth(ros_messages.stamp_ns(header),
                                                         _Frame(header, res.depth, K_out)))

    def _handle_mask(self, msg: Image) -> None:
        try:
            labels = ros_messages.mask_to_labels(msg)
        except ImageFormatError as exc:
            self._stats['bad_masks'] += 1
            self._log_throttled('mask:' + str(exc)[:40], 'error',
                                f'skipping instance mask ({self._stats["bad_masks"]} so far): {exc}')
            return
        self._publish_objects(self._pairer.add_mask(ros_messages.stamp_ns(msg.header), labels))

    def _publish_objects(self, pairs) -> None:
        for frame, labels in pairs:
            h, w = frame.depth.shape
            if labels.shape != (h, w):
                mh, mw = labels.shape
                if abs((mw / mh) / (w / h) - 1.0) > 0.01:
                    self._log_throttled('mask_aspect', 'warning',
                                        f'instance mask is {mw}x{mh} but depth is {w}x{h} (other aspect ratio); '
                                        f'stretching the mask with nearest neighbour — publish masks at the camera '
                                        f'image geometry')
                labels = resize_nearest(labels, h, w)
                self._stats['masks_resized'] += 1
            objs = instance_depths(frame.depth, labels, frame.K, min_pixels=int(self._p('min_object_pixels')))
            self._pubs['objects'].publish(ros_messages.objects_to_markers(objs, frame.header))
            self._stats['objects_out'] += 1

    # ---------------------------------------------------------------- diagnostics
    def _reset_stats(self) -> None:
        self._stats = dict(dropped=0, bad_frames=0, masks_in=0, bad_masks=0, masks_dropped=0, masks_resized=0,
                           frames_out=0, objects_out=0, colored_out=0, camera_info_in=0, camera_info_errors=0,
                           qos_incompatible=0, errors=0, points_out=0)
        self._last_bad = ''
        self._in_rate = RollingWindow(5.0)
        self._out_rate = RollingWindow(5.0)
        self._latency = RollingWindow(5.0)
        self._inference = RollingWindow(5.0)
        self._overhead = RollingWindow(5.0)        # per frame: stamp→publish latency minus inference time
        self._bad_window = (0, 0)

    def _mask_problem(self, st: dict) -> str:
        """MaskWatch's verdict while active ('' when masks pair or none are expected); logged once per kind."""
        watch, pairer, sub = self._mask_watch, self._pairer, self._mask_sub
        if self._phase != 'active' or watch is None or pairer is None or sub is None:
            return ''
        watch.timeout_s = float(self._p('mask_warn_after'))
        problem = watch.update(time.monotonic(), publishers=sub.get_publisher_count(), masks_received=st['masks_in'],
                               frames_out=st['frames_out'], paired=pairer.stats.paired, unpaired=pairer.stats.unpaired,
                               slop_s=float(self._p('mask_slop')), max_wait_s=float(self._p('mask_max_wait')),
                               last_offset_ns=pairer.stats.last_unpaired_offset_ns, topic=sub.topic_name)
        if problem is None:
            return ''
        kind, text = problem
        if kind not in self._mask_warned:
            self._mask_warned.add(kind)
            self._log('warning', f'masks never pair: {text}')
        return text

    def _publish_diagnostics(self) -> None:
        st = dict(self._stats)
        mask_problem = self._mask_problem(st)
        est = self.estimator
        lat = self._latency.percentiles() or {}
        inf = self._inference.percentiles() or {}
        ovh = self._overhead.percentiles() or {}
        values = {
            'state': self._phase,
            'backend': est.backend_name if est else '',
            'model': str(est.model_path) if est else (self._p('model_path') or 'bundled'),
            'model_stage': est.metadata.stage if est else '',
            'model_metric': str(est.metadata.metric).lower() if est else '',
            'model_input': f'{est.metadata.input_width}x{est.metadata.input_height}' if est else '',
            'input_rate_hz': self._in_rate.rate(),
            'output_rate_hz': self._out_rate.rate(),
            'latency_p50_ms': lat.get(50, float('nan')),
            'latency_p95_ms': lat.get(95, float('nan')),
            'latency_p99_ms': lat.get(99, float('nan')),
            'inference_p50_ms': inf.get(50, float('nan')),
            'inference_p95_ms': inf.get(95, float('nan')),
            'inference_p99_ms': inf.get(99, float('nan')),
            'overhead_p50_ms': ovh.get(50, float('nan')),
            'overhead_p95_ms': ovh.get(95, float('nan')),
            'frames_in': self._in_rate.total,
            'frames_out': st['frames_out'],
            'dropped_frames': st['dropped'],
            'bad_frames': st['bad_frames'],
            'last_bad_frame': self._last_bad,
            'masks_in': st['masks_in'],
            'bad_masks': st['bad_masks'],
            'masks_dropped': st['masks_dropped'],
            'masks_resized': st['masks_resized'],
            'objects_published': st['objects_out'],
            'colored_published': st['colored_out'],
            'points_published': st['points_out'],
            'objects_unpaired': self._pairer.stats.unpaired if self._pairer else 0,
            'objects_paired': self._pairer.stats.paired if self._pairer else 0,
            'mask_publishers': self._mask_sub.get_publisher_count() if self._mask_sub is not None else 0,
            'mask_problem': mask_problem,
            'stamp_jumps_back': self._pairer.stats.time_jumps if self._pairer else 0,
            'camera_info': self._camera_info_note,
            'camera_info_in': st['camera_info_in'],
            'camera_info_errors': st['camera_info_errors'],
            'qos_incompatible_events': st['qos_incompatible'],
            'errors': st['errors'],
            'backend_notes': ' | '.join(est.notes) if est else '',
        }
        prev_bad, prev_err = self._bad_window
        self._bad_window = (st['bad_frames'], st['errors'] + st['qos_incompatible'])
        if self._status_error:
            level, message = DiagnosticStatus.ERROR, self._status_error
        elif self._phase != 'active':
            progress = self._progress
            level, message = DiagnosticStatus.WARN, f'node is {self._phase}' + (
                f': {progress.describe()}' if progress is not None else '')
        elif st['errors'] + st['qos_incompatible'] > prev_err:
            level, message = DiagnosticStatus.ERROR, 'processing errors or QoS mismatch, see log'
        elif st['bad_frames'] > prev_bad:
            level, message = DiagnosticStatus.WARN, f'bad camera frames skipped: {self._last_bad}'
        elif self._in_rate.count() == 0:
            level, message = DiagnosticStatus.WARN, f'no images on {self.resolve_topic_name("image")}'
        elif mask_problem:
            level, message = DiagnosticStatus.WARN, f'masks never pair: {mask_problem}'
        else:
            level, message = DiagnosticStatus.OK, (f'{values["output_rate_hz"]:.1f} Hz, latency p50 '
                                                   f'{values["latency_p50_ms"]:.1f} ms on {values["backend"]}')
        status = ros_messages.diagnostic_status(f'{self.get_name()}: depth', level, message,
                                                Path(values['model']).name, values)
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)


def main(args=None) -> int:
    """Entry point of `depth_node`: create, (auto)start and spin the node until shutdown."""
    export_fastdds_profile()      # the profile under the variable name this distribution's Fast DDS reads
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = DepthNode()
        if node.get_parameter('autostart').value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal(f'configure failed, exiting: {node._status_error or "see above"}')
                return 1
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('activate failed, exiting')
                return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except WorkerFailure:                 # already logged (fatal) and reported on /diagnostics
        code = 1
    finally:
        if node is not None:
            try:
                node._release()
            finally:
                node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    raise SystemExit(main())
