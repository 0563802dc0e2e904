"""The depth node's /diagnostics (node.py): what it reports of the shared model and backend and of each camera,
and the level and message of each status.

    backend_values(...)                   key/values of the model, backend, batches and node-wide counters
    camera_values(cam, image_topic, ...)  key/values of one camera: rates, latency, inference, counters
    mask_problem(cam, counters, ...)      MaskWatch's verdict on the camera's masks ('' when they pair)
    diagnostic_statuses(...)              DiagnosticStatus per camera plus one for the backend (several cameras),
                                          or the single camera's one `<node>: depth` status with both

The node-wide counters (NodeCounters) are kept by the node; each camera keeps its own (CameraStream.stats).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticStatus

from dynadepth_ros import ros_messages
from dynadepth_ros.camera_streams import CameraStream
from dynadepth_ros.latency import RollingWindow


class NodeCounters:
    """Node-wide counters for /diagnostics; each camera keeps its own (CameraStream.stats)."""

    def __init__(self):
        self.stats = dict(qos_incompatible=0, errors=0, batches=0)
        self.batch_size = RollingWindow(5.0)         # cameras per backend call
        self.batch_inference = RollingWindow(5.0)    # backend time per batch (ms)
        self.err_window = 0                          # errors + QoS mismatches at the last /diagnostics

    def errors_grew(self) -> bool:
        """Whether errors or QoS mismatches were counted since the last call (a /diagnostics message)."""
        node_errors = self.stats['errors'] + self.stats['qos_incompatible']
        grew = node_errors > self.err_window
        self.err_window = node_errors
        return grew


def mask_problem(cam: CameraStream, counters: dict, *, warn_after: float, slop: float, max_wait: float,
                 warn: Callable[[str], None]) -> str:
    """MaskWatch's verdict on the camera of an active node ('' when masks pair or none are expected), from its
    counters `counters` (a copy of cam.stats); warn(text) the first time each kind of problem appears."""
    watch, pairer, sub = cam.mask_watch, cam.pairer, cam.mask_sub
    if watch is None or pairer is None or sub is None:
        return ''
    watch.timeout_s = warn_after
    problem = watch.update(time.monotonic(), publishers=sub.get_publisher_count(),
                           masks_received=counters['masks_in'], frames_out=counters['frames_out'],
                           paired=pairer.stats.paired, unpaired=pairer.stats.unpaired, slop_s=slop,
                           max_wait_s=max_wait, last_offset_ns=pairer.stats.last_unpaired_offset_ns,
                           topic=sub.topic_name)
    if problem is None:
        return ''
    kind, text = problem
    if kind not in cam.mask_warned:
        cam.mask_warned.add(kind)
        warn(text)
    return text


def backend_values(est, *, phase: str, model_path: str, streams: list[CameraStream], executor: str,
                   counters: NodeCounters) -> dict:
    """/diagnostics values of the shared model and backend (est: the DepthEstimator, None while unconfigured;
    model_path: the parameter, shown until a model is loaded)."""
    inf = counters.batch_inference.percentiles() or {}
    sizes = counters.batch_size.percentiles((50, 100)) or {}
    return {
        'state': phase,
        'backend': est.backend_name if est else '',
        'model': str(est.model_path) if est else (model_path or 'bundled'),
        'model_stage': est.metadata.stage if est else '',
        'model_metric': str(est.metadata.metric).lower() if est else '',
        'model_input': f'{est.metadata.input_width}x{est.metadata.input_height}' if est else '',
        'model_precision': est.metadata.precision if est else '',
        'precision': getattr(est.selection.backend, 'precision', '') if est else '',
        'cameras': ','.join(c.name for c in streams if c.name),
        'executor': executor,
        'batches': counters.stats['batches'],
        'batch_size_p50': sizes.get(50, float('nan')),
        'batch_size_max': sizes.get(100, float('nan')),
        'batch_inference_p50_ms': inf.get(50, float('nan')),
        'batch_inference_p99_ms': inf.get(99, float('nan')),
        'qos_incompatible_events': counters.stats['qos_incompatible'],
        'errors': counters.stats['errors'],
        'backend_notes': ' | '.join(est.notes) if est else '',
        'backend_reason': est.selection.fallback_reason if est else '',
    }


def camera_values(cam: CameraStream, image_topic: str, mask_problem: str) -> dict:
    """/diagnostics values of one camera: rates, latency, inference (of the batch it ran in), counters."""
    st = cam.stats
    lat = cam.latency.percentiles() or {}
    inf = cam.inference.percentiles() or {}
    ovh = cam.overhead.percentiles() or {}
    pairer = cam.pairer
    return {
        'image_topic': image_topic,
        'input_rate_hz': cam.in_rate.rate(),
        'output_rate_hz': cam.out_rate.rate(),
        'latency_p50_ms': lat.get(50, float('nan')),
        'latency_p95_ms': lat.get(95, float('nan')),
        'latency_p99_ms': lat.get(99, float('nan')),
        'inference_p50_ms': inf.get(50, float('nan')),
        'inference_p95_ms': inf.get(95, float('nan')),
        'inference_p99_ms': inf.get(99, float('nan')),
        'overhead_p50_ms': ovh.get(50, float('nan')),
        'overhead_p95_ms': ovh.get(95, float('nan')),
        'frames_in': cam.in_rate.total,
        'frames_out': st['frames_out'],
        'dropped_frames': st['dropped'],
        'bad_frames': st['bad_frames'],
        'last_bad_frame': cam.last_bad,
        'masks_in': st['masks_in'],
        'bad_masks': st['bad_masks'],
        'masks_dropped': st['masks_dropped'],
        'masks_resized': st['masks_resized'],
        'objects_published': st['objects_out'],
        'colored_published': st['colored_out'],
        'points_published': st['points_out'],
        'objects_unpaired': pairer.stats.unpaired if pairer else 0,
        'objects_paired': pairer.stats.paired if pairer else 0,
        'mask_publishers': cam.mask_sub.get_publisher_count() if cam.mask_sub is not None else 0,
        'mask_problem': mask_problem,
        'stamp_jumps_back': pairer.stats.time_jumps if pairer else 0,
        'camera_info': cam.camera_info_note,
        'camera_info_in': st['camera_info_in'],
        'camera_info_errors': st['camera_info_errors'],
        'camera_errors': st['errors'],
    }


def diagnostic_statuses(node_name: str, backend: dict, cameras: list[tuple[CameraStream, dict, dict, str]], *,
                        status_error: str, phase: str, phase_message: Callable[[], str],
                        errors_grew: bool) -> list[DiagnosticStatus]:
    """One status per camera plus one for the shared backend; the single (unnamed) camera's node publishes one
    status `<node>: depth` with both (as it always has).

    cameras: (camera, a copy of its counters, camera_values, mask_problem) per camera; each camera's
    bad_window / errors_window advance to its counters (what the next message compares with).
    status_error: why the node cannot serve ('' when it can); phase_message(): 'node is <phase>...'.
    """
    single = len(cameras) == 1 and not cameras[0][0].name
    statuses = []
    hw = Path(backend['model']).name
    for cam, st, values, problem in cameras:
        bad_grew = st['bad_frames'] > cam.bad_window
        cam.bad_window = st['bad_frames']
        if status_error:
            level, message = DiagnosticStatus.ERROR, status_error
        elif phase != 'active':
            level, message = DiagnosticStatus.WARN, phase_message()
        elif errors_grew if single else st['errors'] > cam.errors_window:
            level, message = DiagnosticStatus.ERROR, 'processing errors or QoS mismatch, see log'
        elif bad_grew:
            level, message = DiagnosticStatus.WARN, f'bad camera frames skipped: {cam.last_bad}'
        elif cam.in_rate.count() == 0:
            level, message = DiagnosticStatus.WARN, f'no images on {values["image_topic"]}'
        elif problem:
            level, message = DiagnosticStatus.WARN, f'masks never pair: {problem}'
        else:
            level, message = DiagnosticStatus.OK, (f'{values["output_rate_hz"]:.1f} Hz, latency p50 '
                                                   f'{values["latency_p50_ms"]:.1f} ms on {_serving(backend)}')
        cam.errors_window = st['errors']
        if single:
            values = {**backend, **values}
            values.pop('camera_errors')
            values.pop('cameras')
            statuses.append(ros_messages.diagnostic_status(f'{node_name}: depth', level, message, hw, values))
        else:
            statuses.append(ros_messages.diagnostic_status(f'{node_name}: depth {cam.name}', level, message,
                                                           hw, {'camera': cam.name, **values}))
    if not single:
        if status_error:
            level, message = DiagnosticStatus.ERROR, status_error
        elif phase != 'active':
            level, message = DiagnosticStatus.WARN, phase_message()
        elif errors_grew:
            level, message = DiagnosticStatus.ERROR, 'processing errors or QoS mismatch, see log'
        else:
            level, message = DiagnosticStatus.OK, (
                f'{len(cameras)} cameras on {backend["backend"]}, batch p50 {backend["batch_size_p50"]:.3g}, '
                f'inference p50 {backend["batch_inference_p50_ms"]:.1f} ms' + _serving(backend, only_reason=True))
        statuses.append(ros_messages.diagnostic_status(f'{node_name}: backend', level, message, hw, backend))
    return statuses


def _serving(backend: dict, only_reason: bool = False) -> str:
    """'<backend>' for a /diagnostics message, followed by why a preferred backend does not serve, if one failed
    (e.g. 'onnxruntime[CPUExecutionProvider] (fallback: TensorRT backend not used: ...)')."""
    reason = f' (fallback: {backend["backend_reason"]})' if backend['backend_reason'] else ''
    return reason if only_reason else backend['backend'] + reason
