"""rclpy messages ↔ numpy for the node: images in, REP 118 depth out, CameraInfo, MarkerArray, diagnostics.

Thin glue around image_codec (pixel layouts), inference.postprocess (CameraCalibration) and objects
(ObjectDepth); everything with logic lives in those plain modules.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration as DurationMsg
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from dynadepth_ros import image_codec
from dynadepth_ros.inference.postprocess import CameraCalibration
from dynadepth_ros.objects import ObjectDepth


def stamp_ns(header: Header) -> int:
    """Header stamp as integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _buf(data):
    """A zero-copy view of an rclpy uint8[] field (array.array) for numpy."""
    try:
        return memoryview(data)
    except TypeError:
        return data


def image_to_rgb(msg: Image) -> np.ndarray:
    """uint8 [H,W,3] RGB from an Image in any of image_codec.COLOR_ENCODINGS (ImageFormatError otherwise)."""
    return image_codec.to_rgb8(msg.encoding, msg.height, msg.width, msg.step, _buf(msg.data), bool(msg.is_bigendian))


def compressed_to_rgb(msg: CompressedImage, max_pixels: int | None = None) -> np.ndarray:
    """uint8 [H,W,3] RGB from a jpeg/png CompressedImage (ImageFormatError otherwise, and for more than
    max_pixels pixels by its header, before decoding)."""
    return image_codec.decode_compressed(msg.format, _buf(msg.data), max_pixels)


def mask_to_labels(msg: Image) -> np.ndarray:
    """int32 [H,W] instance ids from a mono8/8UC1/mono16/16UC1/32SC1 label Image."""
    return image_codec.to_labels(msg.encoding, msg.height, msg.width, msg.step, _buf(msg.data), bool(msg.is_bigendian))


def depth_to_msg(depth: np.ndarray, header: Header) -> Image:
    """REP 118 Image: 32FC1, metres, NaN invalid, little-endian, with `header` (stamp and frame_id) copied."""
    h, w, step, data = image_codec.encode(depth.astype(np.float32, copy=False), '32FC1')
    return Image(header=header, height=h, width=w, encoding='32FC1', is_bigendian=0, step=step, data=data)


def bgr_to_msg(bgr: np.ndarray, header: Header) -> Image:
    h, w, step, data = image_codec.encode(bgr, 'bgr8')
    return Image(header=header, height=h, width=w, encoding='bgr8', is_bigendian=0, step=step, data=data)


def cloud_to_msg(points: np.ndarray, header: Header) -> PointCloud2:
    """Organized PointCloud2 (height x width = the array's shape, not dense) from a structured float32 array
    [H,W] (depth_outputs.organized_cloud), one FLOAT32 field per array field, little-endian."""
    h, w = points.shape
    fields = [PointField(name=name, offset=int(points.dtype.fields[name][1]), datatype=PointField.FLOAT32, count=1)
              for name in points.dtype.names]
    step = int(points.dtype.itemsize)
    return PointCloud2(header=header, height=int(h), width=int(w), fields=fields, is_bigendian=False,
                       point_step=step, row_step=step * int(w), data=np.ascontiguousarray(points).tobytes(),
                       is_dense=False)


def camera_info_to_calibration(msg: CameraInfo) -> CameraCalibration:
    return CameraCalibration(
        width=int(msg.width), height=int(msg.height), K=np.asarray(msg.k, np.float64).reshape(3, 3),
        P=np.asarray(msg.p, np.float64).reshape(3, 4), R=np.asarray(msg.r, np.float64).reshape(3, 3),
        D=tuple(float(v) for v in msg.d), distortion_model=str(msg.distortion_model),
        binning_x=int(msg.binning_x), binning_y=int(msg.binning_y),
        roi=(int(msg.roi.x_offset), int(msg.roi.y_offset), int(msg.roi.width), int(msg.roi.height),
             bool(msg.roi.do_rectify)))


def calibration_to_camera_info(calib: CameraCalibration, header: Header) -> CameraInfo:
    x, y, w, h, rect = calib.roi
    return CameraInfo(header=header, height=int(calib.height), width=int(calib.width),
                      distortion_model=calib.distortion_model, d=[float(v) for v in calib.D],
                      k=[float(v) for v in np.asarray(calib.K).reshape(-1)],
                      r=[float(v) for v in np.asarray(calib.R).reshape(-1)],
                      p=[float(v) for v in np.asarray(calib.P).reshape(-1)],
                      binning_x=int(calib.binning_x), binning_y=int(calib.binning_y),
                      roi=RegionOfInterest(x_offset=int(x), y_offset=int(y), width=int(w), height=int(h),
                                           do_rectify=bool(rect)))


def _distance_colour(d: float, near: float = 3.0, far: float = 40.0) -> tuple[float, float, float]:
    t = float(np.clip((d - near) / (far - near), 0.0, 1.0))
    return 1.0 - t, t, 0.2           # red when close, green when far


def objects_to_markers(objects: list[ObjectDepth], header: Header, lifetime_s: float = 0.0) -> MarkerArray:
    """MarkerArray: a DELETEALL, then per object a sphere at its 3-D position (sized by its robust extent)
    and a text label '#id 12.3 m' above it. Objects without a position are skipped."""
    arr = MarkerArray()
    arr.markers.append(Marker(header=header, ns='dynadepth_objects', action=Marker.DELETEALL))
    life = DurationMsg(sec=int(lifetime_s), nanosec=int((lifetime_s % 1.0) * 1e9))
    for ob in objects:
        if ob.position is None:
            continue
        x, y, z = ob.position
        w, h = ob.size if ob.size is not None else (0.5, 0.5)
        r, g, b = _distance_colour(ob.distance)
        body = Marker(header=header, ns='dynadepth_objects', id=int(ob.instance_id), type=Marker.SPHERE,
                      action=Marker.ADD, lifetime=life)
        body.pose.position.x, body.pose.position.y, body.pose.position.z = float(x), float(y), float(z)
        body.pose.orientation.w = 1.0
        body.scale.x = body.scale.z = float(max(w, 0.2))
        body.scale.y = float(max(h, 0.2))
        body.color.r, body.color.g, body.color.b, body.color.a = r, g, b, 0.6
        text = Marker(header=header, ns='dynadepth_labels', id=int(ob.instance_id), type=Marker.TEXT_VIEW_FACING,
                      action=Marker.ADD, lifetime=life, text=f'#{ob.instance_id} {ob.distance:.1f} m')
        text.pose.position.x, text.pose.position.z = float(x), float(z)
        text.pose.position.y = float(y - max(h, 0.2) / 2 - 0.4)     # optical frame: y points down
        text.pose.orientation.w = 1.0
        text.scale.z = 0.5
        text.color.r = text.color.g = text.color.b = text.color.a = 1.0
        arr.markers += [body, text]
    return arr


def diagnostic_status(name: str, level, message: str, hardware_id: str, values: dict) -> DiagnosticStatus:
    """DiagnosticStatus (level: DiagnosticStatus.OK/WARN/ERROR/STALE or 0..3) with `values` as KeyValue strings
    (floats with 4 significant digits)."""
    def fmt(v):
        if isinstance(v, float):
            return f'{v:.4g}'
        return str(v)
    return DiagnosticStatus(level=level if isinstance(level, bytes) else bytes([int(level)]),
                            name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=str(k), value=fmt(v)) for k, v in values.items()])
