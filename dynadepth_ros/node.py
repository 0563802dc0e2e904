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

Several cameras, one model: `cameras:=[front, left]` serves each listed namespace with the topics above under
it (front/image → front/depth, …), each camera with its own latest-frame slot, camera_info, mask pairing,
counters and /diagnostics status (`<node>: depth <camera>`, plus `<node>: backend`); the worker runs the
newest pending frame of every camera through the backend in one batch (camera_streams.py).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, Image

from dynadepth_ros import ros_messages
from dynadepth_ros.camera_streams import CameraStream, take_batch, validate_camera_names
from dynadepth_ros.camera import resize_nearest
from dynadepth_ros.colorize import colorize_depth
from dynadepth_ros.configure_progress import ConfigureProgress
from dynadepth_ros.depth_outputs import camera_matrix, model_calibration, organized_cloud
from dynadepth_ros.image_codec import ImageFormatError, check_image_pixels
from dynadepth_ros.inference import BackendError, DepthEstimator
from dynadepth_ros.inference.postprocess import (CameraCalibration, CameraInfoError, focal_ratios,
                                                 image_calibration, rescale_calibration)
from dynadepth_ros.inference.preprocess import resize_interpolation
from dynadepth_ros.mask_sync import MaskPairer, MaskWatch
from dynadepth_ros.model_format import ModelFormatError
from dynadepth_ros.node_diagnostics import (NodeCounters, backend_values, camera_values, diagnostic_statuses,
                                            mask_problem)
from dynadepth_ros.node_parameters import (PARAMETERS, TRANSPORTS, declare_parameters, invalid_choice,
                                           parameter_change_result)
from dynadepth_ros.node_topics import create_camera_publishers, subscribe_camera
from dynadepth_ros.objects import instance_depths
from dynadepth_ros.ros_compat import (export_fastdds_profile, free_participant, make_executor, resolve_executor,
                                      spin_node, uninstall_signal_handlers)

# PARAMETERS and TRANSPORTS live in node_parameters; launch-file tests and benchmarks read them from here too
__all__ = ['DepthNode', 'NODE_NAME', 'PARAMETERS', 'TRANSPORTS', 'WorkerFailure', 'main']

NODE_NAME = 'dynadepth'
THROTTLE_S = 5.0
WATCHDOG_PERIOD_S = 0.5
EXIT_GRACE_S = 1.0        # between the ERROR status on /diagnostics and the exit, so subscribers receive it
STAMP_CLOCK_WARN_S = 60.0  # image stamps this far from the node's clock make the stamp→publish latency meaningless


class WorkerFailure(RuntimeError):
    """The worker thread died or is stuck; raised out of the executor so that main() exits with status 1."""


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
        declare_parameters(self)             # node_parameters: each with its range, unit and when it takes effect
        self.add_on_set_parameters_callback(lambda params: parameter_change_result(params, self._phase))
        self._phase = 'unconfigured'
        self._status_error = ''
        self.executor_kind = ''               # set by main(): the executor spinning the node ('' when embedded)
        self.estimator: DepthEstimator | None = None
        self._subs: list = []
        self._lock = threading.Condition()
        # one CameraStream per camera (cameras parameter; a single unprefixed one when empty): its pending frame
        # and masks (under _lock), camera_info, mask pairing, publishers and counters — camera_streams.py
        self._streams: list[CameraStream] = [CameraStream()]
        self._next_camera = 0                     # round-robin start of the next batch (take_batch)
        self._worker: threading.Thread | None = None
        self._running = False
        self._throttle: dict[str, tuple[float, int]] = {}
        self._busy_since: float | None = None    # monotonic time the worker started on its current item
        self._worker_death = ''                   # the exception that ended the worker thread
        self._fatal = ''                          # why the node exits (worker dead or stuck)
        self._fatal_at = 0.0
        self._progress: ConfigureProgress | None = None   # while on_configure runs: what it does, for /diagnostics
        self._counters = NodeCounters()           # node-wide; each camera keeps its own (CameraStream.stats)
        self._stamp_clock_warned = False
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        # on the steady clock: with use_sim_time the node's clock stands at 0 until the first /clock, then follows
        # the bag (pauses with it, jumps back on a loop); /diagnostics and the watchdog must run regardless
        self._steady_clock = Clock(clock_type=ClockType.STEADY_TIME)
        self._diag_timer = self.create_timer(float(self.get_parameter('diagnostics_period').value),
                                             self._publish_diagnostics, clock=self._steady_clock)
        self._watchdog_timer = self.create_timer(WATCHDOG_PERIOD_S, self._watch_worker, clock=self._steady_clock)

    # ---------------------------------------------------------------- parameters and logging
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
        problem = invalid_choice(self._p)
        if problem:
            return self._configure_failed(problem)
        try:
            cameras = validate_camera_names(self._p('cameras') or [])
        except ValueError as exc:
            return self._configure_failed(f'parameter cameras: {exc}')
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
                    aspect_tolerance=float(self._p('aspect_tolerance')), max_batch=max(1, len(cameras)),
                    intra_op_threads=int(self._p('intra_op_threads')),
                    intra_op_spinning=bool(self._p('intra_op_spinning')), log=self.get_logger().warning,
                    progress=self._progress.stage)
        except (ModelFormatError, BackendError, ValueError, OSError) as exc:
            return self._configure_failed(f'cannot load the model: {exc}')
        except Exception as exc:       # never 'configure failed: see above' with nothing above
            return self._configure_failed(f'cannot load the model: {type(exc).__name__}: {exc}')
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
        if not est.metadata.metric:      # allowed by allow_relative_model: say it once per configure, as a warning
            self.get_logger().warning(
                f'model {est.model_path} is not metric (trained without odometry): the published depth is relative, '
                f'not metres (allow_relative_model:=true)')
        m = est.metadata
        self.get_logger().info(
            f'model {est.model_path} (stage {m.stage}, {"metric" if m.metric else "RELATIVE"}, input '
            f'{m.input_width}x{m.input_height}, {m.precision}, depth {m.min_depth:g}..{m.max_depth:g} m) on '
            f'{est.backend_name}')
        self._streams = [CameraStream(name) for name in cameras] or [CameraStream()]
        self._next_camera = 0
        for cam in self._streams:
            create_camera_publishers(self, cam, self._p('output_layout'), self._count_qos_mismatch)
        if cameras:
            self.get_logger().info(f'{len(cameras)} cameras ({", ".join(cameras)}) share the model, batch of up to '
                                   f'{len(cameras)} on {est.backend_name}')
        self._status_error = ''
        self._phase = 'inactive'
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._status_error = reason
        self.get_logger().error(reason)
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for cam in self._streams:
            self._subscribe(cam)
        self._running = True
        self._busy_since, self._worker_death = None, ''
        self._worker = threading.Thread(target=self._work, name='dynadepth-worker', daemon=True)
        self._worker.start()
        self._phase = 'active'
        for cam in self._streams:
            self.get_logger().info(f'active: depth from {self.resolve_topic_name(cam.topic("image"))} '
                                   f'({self._p("image_transport")}) on {cam.pubs["depth"].topic_name} '
                                   f'with {cam.pubs["info"].topic_name}')
        return super().on_activate(state)

    def _subscribe(self, cam: CameraStream) -> None:
        """The camera's image (raw or compressed), camera_info and instance_mask subscriptions (node_topics) and
        its mask pairing."""
        subscribe_camera(self, cam, self._p('image_transport'), self._subs, on_image=self._on_image,
                         on_camera_info=self._on_camera_info, on_mask=self._on_mask,
                         on_mismatch=self._count_qos_mismatch)
        cam.pairer = MaskPairer(int(self._p('mask_queue_size')), float(self._p('mask_slop')),
                                float(self._p('mask_max_wait')), on_time_jump=self._on_time_jump)
        cam.mask_watch = MaskWatch(float(self._p('mask_warn_after')))
        cam.mask_warned = set()

    def _stop_worker(self) -> bool:
        """Stop the subscriptions and the worker; False when the worker did not stop (stuck)."""
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        with self._lock:
            self._running = False
            for cam in self._streams:
                cam.slot = None
                cam.masks = []
            self._lock.notify_all()
        stopped = True
        if self._worker is not None:
            self._worker.join(timeout=1.0 if self._fatal else 10.0)
            stopped = not self._worker.is_alive()
            self._worker = None
        for cam in self._streams:
            cam.mask_sub = None
        return stopped

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._phase = 'inactive'
        return super().on_deactivate(state)

    def _release(self) -> None:
        stopped = self._stop_worker()
        for cam in self._streams:
            for pub in cam.pubs.values():
                self.destroy_lifecycle_publisher(pub)
            cam.pubs = {}
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

    # ---------------------------------------------------------------- QoS events (node_topics logs them)
    def _count_qos_mismatch(self) -> None:
        """An incompatible QoS event on one of the node's topics (node_topics logs it): counted for /diagnostics."""
        self._counters.stats['qos_incompatible'] += 1

    # ---------------------------------------------------------------- callbacks (executor thread: store only)
    def _on_image(self, cam: CameraStream, kind: str, msg) -> None:
        cam.in_rate.add()
        with self._lock:
            cam.store_frame(kind, msg)
            self._lock.notify()

    def _on_camera_info(self, cam: CameraStream, msg: CameraInfo) -> None:
        cam.camera_info = msg
        cam.stats['camera_info_in'] += 1

    def _on_mask(self, cam: CameraStream, msg: Image) -> None:
        with self._lock:
            cam.stats['masks_in'] += 1
            cam.masks.append(msg)
            if len(cam.masks) > max(1, int(self._p('mask_queue_size'))):
                del cam.masks[0]
                cam.stats['masks_dropped'] += 1
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
                while self._running and not any(c.slot is not None or c.masks for c in self._streams):
                    self._lock.wait(timeout=0.2)
                    if self._running:         # at least every 0.2 s: poll the pairers (masks given up)
                        break
                if not self._running:
                    return
                # the newest pending frame of every camera, one batch (camera_streams.take_batch)
                frames, self._next_camera = take_batch(self._streams, len(self._streams), self._next_camera)
                masks = [(c, c.masks) for c in self._streams if c.masks]
                for c, _ in masks:
                    c.masks = []
            self._busy_since = time.monotonic()
            try:
                for cam, msgs in masks:
                    for m in msgs:
                        self._guarded(cam, self._handle_mask, cam, m)
                if frames:
                    self._handle_frames(frames)
                for cam in self._streams:
                    self._guarded(cam, lambda c: self._publish_objects(c, c.pairer.poll()), cam)
            except Exception as exc:   # a bug must not silently kill the worker: log, count, carry on
                self._error(None, exc)
            finally:
                self._busy_since = None

    def _error(self, cam: CameraStream | None, exc: Exception) -> None:
        """Count and log (throttled) an unexpected error, against `cam` when it concerns one camera only."""
        self._counters.stats['errors'] += 1
        where = ''
        if cam is not None:
            cam.stats['errors'] += 1
            where = f' of camera {cam.name}' if cam.name else ''
        self._log_throttled(f'error:{type(exc).__name__}', 'error',
                            f'unexpected error while processing a frame{where}: {type(exc).__name__}: {exc}')

    def _guarded(self, cam: CameraStream, fn, *args) -> None:
        """fn(*args); an exception is counted against `cam` only, so the other cameras carry on."""
        try:
            fn(*args)
        except Exception as exc:
            self._error(cam, exc)

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

    def _image_intrinsics(self, cam: CameraStream, h: int, w: int) -> tuple[CameraCalibration, np.ndarray] | None:
        """(calibration of the camera's h x w image, its intrinsics K [3,3] per intrinsics_source), or None without
        a usable camera_info."""
        info = cam.camera_info
        if info is None or not self._p('use_camera_info'):
            cam.camera_info_note = 'no camera_info received' if info is None else 'disabled (use_camera_info)'
            return None
        source = self._p('intrinsics_source')
        if source == 'P' and not np.any(np.asarray(info.p, np.float64).reshape(3, 4)[:, :3]):
            source = 'K'
            if not cam.p_zero_warned:
                cam.p_zero_warned = True
                self._log('warning', f'{self._camera_prefix(cam)}intrinsics_source is P but camera_info P is all '
                                     f'zero (an unrectified camera driver?): using K; set intrinsics_source:=K to '
                                     f'say so')
        try:
            calib, note = image_calibration(ros_messages.camera_info_to_calibration(info), h, w)
            K = camera_matrix(calib, source)
            m = self.estimator.metadata       # implausible focal lengths: keep the model's intrinsics
            focal_ratios(self.estimator.plan_for(h, w).model_intrinsics(K), m.intrinsics, m.input_height,
                         m.input_width)
        except CameraInfoError as exc:
            cam.stats['camera_info_errors'] += 1
            cam.camera_info_note = f'ignored: {exc}'
            self._log_throttled(f'camera_info:{cam.name}:' + str(exc)[:60], 'warning',
                                f'{self._camera_prefix(cam)}camera_info ignored: {exc}')
            return None
        cam.camera_info_note = f'ok, intrinsics from {source}' + (f'; {note}' if note else '')
        if note:
            self._log_throttled(f'camera_info_note:{cam.name}:' + note[:60], 'warning', self._camera_prefix(cam) + note)
        return calib, K

    @staticmethod
    def _camera_prefix(cam: CameraStream) -> str:
        """'camera front: ' for a named camera, '' for the single camera (log lines as before)."""
        return f'camera {cam.name}: ' if cam.name else ''

    def _output_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) of the depth for an h x w image per output_height / output_width."""
        oh, ow = int(self._p('output_height')), int(self._p('output_width'))
        if not oh and not ow:
            return h, w
        if not oh:                   # one side given: keep the image's aspect ratio
            return max(1, round(h * ow / w)), ow
        if not ow:
            return oh, max(1, round(w * oh / h))
        return oh, ow

    def _decode(self, cam: CameraStream, kind: str, msg, max_pixels: int) -> np.ndarray | None:
        """uint8 [H,W,3] RGB of a camera frame, or None for a bad frame (counted against the camera, logged)."""
        try:
            if kind == 'compressed':
                return ros_messages.compressed_to_rgb(msg, max_pixels)
            check_image_pixels(int(msg.width), int(msg.height), max_pixels, f'{msg.encoding} Image')
            return ros_messages.image_to_rgb(msg)
        except ImageFormatError as exc:
            cam.stats['bad_frames'] += 1
            cam.last_bad = str(exc)
            self._log_throttled(f'frame:{cam.name}:' + str(exc)[:40], 'error',
                                f'{self._camera_prefix(cam)}skipping camera frame ({cam.stats["bad_frames"]} so far): '
                                f'{exc}')
            return None

    def _handle_frames(self, frames: list[tuple]) -> None:
        """Decode the taken frames [(camera, kind, msg)], run the good ones through the backend as one batch
        (each resized to the model input with its own crop plan and focal compensation), publish per camera."""
        max_pixels = int(self._p('max_image_pixels'))
        ready = []                           # (camera, header, rgb, intrinsics or None, output size)
        for cam, kind, msg in frames:
            rgb = self._decode(cam, kind, msg, max_pixels)
            if rgb is None:
                continue
            h, w = rgb.shape[:2]
            ready.append((cam, msg.header, rgb, self._image_intrinsics(cam, h, w), self._output_size(h, w)))
        if not ready:
            return
        est = self.estimator
        try:
            results = est.infer_detailed([r[2] for r in ready], [None if r[3] is None else r[3][1] for r in ready],
                                         [r[4] for r in ready])
        except Exception:
            if len(ready) == 1:
                raise
            # one camera's frame made the batch fail: run them one by one so the others still get depth
            results = []
            for cam, _, rgb, intr, size in ready:
                try:
                    results.append(est.infer_detailed([rgb], None if intr is None else [intr[1]], [size])[0])
                except Exception as exc:
                    self._error(cam, exc)
                    results.append(None)
        else:
            self._counters.stats['batches'] += 1
            self._counters.batch_size.add(len(ready))
            self._counters.batch_inference.add(results[0].inference_ms)
        for (cam, header, rgb, intr, size), res in zip(ready, results):
            if res is not None:
                self._guarded(cam, self._publish_depth, cam, header, rgb, intr, size, res)

    def _publish_depth(self, cam: CameraStream, header, rgb: np.ndarray, intr, size: tuple[int, int], res) -> None:
        """The camera's depth, depth/camera_info and (while subscribed) depth/colored and points; its mask pairing."""
        h, w = rgb.shape[:2]
        oh, ow = size
        pubs = cam.pubs
        pubs['depth'].publish(ros_messages.depth_to_msg(res.depth, header))
        now_ns = self.get_clock().now().nanoseconds
        if now_ns:                     # 0: use_sim_time and no /clock yet, nothing to measure the stamp against
            latency_ms = (now_ns - ros_messages.stamp_ns(header)) / 1e6
            cam.latency.add(latency_ms)
            cam.overhead.add(latency_ms - res.inference_ms)
            self._check_stamp_clock(latency_ms)
        cam.inference.add(res.inference_ms)
        cam.out_rate.add()
        cam.stats['frames_out'] += 1
        K_out = res.K                  # the camera's K, or without it the model's, at the depth size
        if intr is not None:           # the camera's calibration, K and P rescaled to the depth size
            out_calib = rescale_calibration(intr[0], oh, ow)
        else:                          # the intrinsics the model assumed, mapped back onto the depth image
            out_calib = model_calibration(K_out, ow, oh)
        pubs['info'].publish(ros_messages.calibration_to_camera_info(out_calib, header))
        if pubs['colored'].get_subscription_count() > 0:
            bgr = colorize_depth(res.depth, float(self._p('colored_min_depth')),
                                 max(float(self._p('colored_max_depth')), float(self._p('colored_min_depth')) * 1.01))
            pubs['colored'].publish(ros_messages.bgr_to_msg(bgr, header))
            cam.stats['colored_out'] += 1
        if pubs['points'].get_subscription_count() > 0:
            colour = None
            if self._p('points_rgb'):
                colour = rgb if (h, w) == (oh, ow) else cv2.resize(rgb, (ow, oh), interpolation=resize_interpolation(
                    h, w, oh, ow))
            pubs['points'].publish(ros_messages.cloud_to_msg(organized_cloud(res.depth, K_out, colour), header))
            cam.stats['points_out'] += 1
        mask_sub = cam.mask_sub
        if mask_sub is not None and (mask_sub.get_publisher_count() > 0 or cam.pairer.stats.masks_received > 0):
            # only while a mask source exists: otherwise every frame would wait for nothing
            self._publish_objects(cam, cam.pairer.add_depth(ros_messages.stamp_ns(header),
                                                            _Frame(header, res.depth, K_out)))

    def _check_stamp_clock(self, latency_ms: float) -> None:
        """Warn once when image stamps are far from the node's clock (a bag replayed without sim time)."""
        if self._stamp_clock_warned or abs(latency_ms) < STAMP_CLOCK_WARN_S * 1e3:
            return
        self._stamp_clock_warned = True
        gap_s = abs(latency_ms) / 1e3
        gap = f'{gap_s / 86400:.0f} days' if gap_s > 2 * 86400 else f'{gap_s:.0f} s'
        side = 'behind' if latency_ms > 0 else 'ahead of'
        self._log('warning', f'image stamps are {gap} {side} this node\'s clock, so the stamp→publish latency on '
                             f'/diagnostics means nothing; replaying a bag? start the node with use_sim_time:=true and '
                             f'replay with dynadepth-replay BAG --clock')

    def _handle_mask(self, cam: CameraStream, msg: Image) -> None:
        try:
            labels = ros_messages.mask_to_labels(msg)
        except ImageFormatError as exc:
            cam.stats['bad_masks'] += 1
            self._log_throttled(f'mask:{cam.name}:' + str(exc)[:40], 'error',
                                f'{self._camera_prefix(cam)}skipping instance mask ({cam.stats["bad_masks"]} so far): '
                                f'{exc}')
            return
        self._publish_objects(cam, cam.pairer.add_mask(ros_messages.stamp_ns(msg.header), labels))

    def _publish_objects(self, cam: CameraStream, pairs) -> None:
        for frame, labels in pairs:
            h, w = frame.depth.shape
            if labels.shape != (h, w):
                mh, mw = labels.shape
                if abs((mw / mh) / (w / h) - 1.0) > 0.01:
                    self._log_throttled(f'mask_aspect:{cam.name}', 'warning',
                                        f'{self._camera_prefix(cam)}instance mask is {mw}x{mh} but depth is {w}x{h} '
                                        f'(other aspect ratio); stretching the mask with nearest neighbour — publish '
                                        f'masks at the camera image geometry')
                labels = resize_nearest(labels, h, w)
                cam.stats['masks_resized'] += 1
            objs = instance_depths(frame.depth, labels, frame.K, min_pixels=int(self._p('min_object_pixels')))
            cam.pubs['objects'].publish(ros_messages.objects_to_markers(objs, frame.header))
            cam.stats['objects_out'] += 1

    # ---------------------------------------------------------------- diagnostics (node_diagnostics)
    def _phase_message(self) -> str:
        """'node is <phase>', with what configure is doing while it runs (a TensorRT build takes minutes)."""
        progress = self._progress
        return f'node is {self._phase}' + (f': {progress.describe()}' if progress is not None else '')

    def _publish_diagnostics(self) -> None:
        """One status per camera plus one for the shared backend (node_diagnostics.diagnostic_statuses)."""
        backend = backend_values(self.estimator, phase=self._phase, model_path=self._p('model_path'),
                                 streams=self._streams, executor=self.executor_kind, counters=self._counters)
        errors_grew = self._counters.errors_grew()
        cameras = []
        for cam in self._streams:
            st = dict(cam.stats)
            problem = self._mask_problem(cam, st)
            cameras.append((cam, st, camera_values(cam, self.resolve_topic_name(cam.topic('image')), problem),
                            problem))
        arr = DiagnosticArray(status=diagnostic_statuses(
            self.get_name(), backend, cameras, status_error=self._status_error, phase=self._phase,
            phase_message=self._phase_message, errors_grew=errors_grew))
        arr.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(arr)

    def _mask_problem(self, cam: CameraStream, st: dict) -> str:
        """MaskWatch's verdict while active ('' when masks pair or none are expected); logged once per kind."""
        if self._phase != 'active':
            return ''
        return mask_problem(cam, st, warn_after=float(self._p('mask_warn_after')), slop=float(self._p('mask_slop')),
                            max_wait=float(self._p('mask_max_wait')),
                            warn=lambda text: self._log('warning', f'{self._camera_prefix(cam)}masks never pair: {text}'))


def main(args=None) -> int:
    """Entry point of `depth_node`: create, (auto)start and spin the node until shutdown."""
    export_fastdds_profile()      # the profile under the variable name this distribution's Fast DDS reads
    rclpy.init(args=args)
    node = executor = None      # executor: referenced until main() returns (make_executor says why)
    code = 0
    try:
        node = DepthNode()
        executor = node.get_parameter('executor').value
        try:
            node.executor_kind = resolve_executor(executor)
        except ValueError as exc:
            node.get_logger().fatal(f'parameter {exc}')
            return 1
        if executor == 'events' and node.executor_kind != executor:
            node.get_logger().warning(f'this rclpy has no EventsExecutor (Humble?): using {node.executor_kind}')
        if node.get_parameter('autostart').value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal(f'configure failed, exiting: {node._status_error or "see above"}')
                return 1
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('activate failed, exiting')
                return 1
        executor = make_executor(node, node.executor_kind)
        spin_node(node, executor)
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
        uninstall_signal_handlers()       # joins rclpy's signal thread before the executor is freed (make_executor)
        executor = None
        # now, not at exit: a stuck worker (a daemon thread) references the node for ever, and the participant
        # would then never be freed, leaving its Fast DDS shared memory in /dev/shm (ros_compat.free_participant)
        free_participant(node, rclpy.get_default_context())
    return code


if __name__ == '__main__':
    raise SystemExit(main())
