"""sensor_msgs/Image and CompressedImage payloads ↔ numpy, without rclpy or cv_bridge.

Functions take the message fields (encoding, height, width, step, data, is_bigendian), so the
same code serves rclpy messages, rosbags messages and raw arrays. Rows may be padded (step >
width * bytes per pixel). Every malformed input raises ImageFormatError naming the problem.
"""
from __future__ import annotations

import cv2
import numpy as np

COLOR_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8')
LABEL_ENCODINGS = ('mono8', '8UC1', 'mono16', '16UC1', '32SC1')
DEPTH_ENCODINGS = ('32FC1', '16UC1', 'mono16')

# encoding → (numpy dtype, channels)
_LAYOUT = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4),
    'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1), 'mono16': (np.uint16, 1), '16UC1': (np.uint16, 1),
    '32SC1': (np.int32, 1), '32FC1': (np.float32, 1),
}


class ImageFormatError(ValueError):
    """An image message that cannot be decoded; the message says why."""


def _as_bytes(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    # rclpy gives array.array('B') or a list for uint8[] fields
    return np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, list) else np.asarray(data, np.uint8)


def image_array(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False) -> np.ndarray:
    """The pixel array [H,W] or [H,W,C] of an Image message, in its own encoding's dtype (native byte order)."""
    if encoding not in _LAYOUT:
        raise ImageFormatError(f'unsupported image encoding {encoding!r}; supported: {sorted(_LAYOUT)}')
    if height <= 0 or width <= 0:
        raise ImageFormatError(f'image has size {width}x{height}; width and height must be positive')
    dtype, ch = _LAYOUT[encoding]
    itemsize = np.dtype(dtype).itemsize
    row = width * ch * itemsize
    if step < row:
        raise ImageFormatError(f'{encoding} image step {step} < width*{ch * itemsize} = {row} bytes')
    buf = _as_bytes(data)
    if buf.size < step * (height - 1) + row:
        raise ImageFormatError(f'{encoding} {width}x{height} image needs {step * height} bytes '
                               f'(step {step}), message has {buf.size}')
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row), strides=(step, 1))
    dt = np.dtype(dtype).newbyteorder('>' if is_bigendian else '<') if itemsize > 1 else np.dtype(dtype)
    arr = np.ascontiguousarray(rows).view(dt).reshape(height, width, ch)
    if itemsize > 1 and dt.byteorder not in ('=', '|') and dt.byteorder != np.dtype(dtype).byteorder:
        arr = arr.astype(dtype)
    return arr[..., 0] if ch == 1 else arr


def to_rgb8(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False) -> np.ndarray:
    """uint8 [H,W,3] RGB from an rgb8/bgr8/rgba8/bgra8/mono8 Image."""
    if encoding not in COLOR_ENCODINGS:
        raise ImageFormatError(f'camera image encoding {encoding!r} is not supported; use one of {COLOR_ENCODINGS} '
                               f'(or a CompressedImage jpeg/png)')
    arr = image_array(encoding, height, width, step, data, is_bigendian)
    if encoding == 'rgb8':
        return arr
    if encoding == 'bgr8':
        return np.ascontiguousarray(arr[..., ::-1])
    if encoding == 'rgba8':
        return np.ascontiguousarray(arr[..., :3])
    if encoding == 'bgra8':
        return np.ascontiguousarray(arr[..., 2::-1])
    return np.repeat(arr[..., None], 3, axis=2)  # mono8


def to_labels(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False) -> np.ndarray:
    """int32 [H,W] instance ids (0 = background) from a mono8/8UC1/mono16/16UC1/32SC1 label image."""
    if encoding not in LABEL_ENCODINGS:
        raise ImageFormatError(f'instance mask encoding {encoding!r} is not a label image; use one of {LABEL_ENCODINGS}')
    return image_array(encoding, height, width, step, data, is_bigendian).astype(np.int32)


def to_depth_m(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False) -> np.ndarray:
    """float32 [H,W] metres, NaN invalid, from REP 118 depth: 32FC1 metres or 16UC1/mono16 millimetres (0 invalid)."""
    if encoding not in DEPTH_ENCODINGS:
        raise ImageFormatError(f'depth encoding {encoding!r} is not supported; use 32FC1 (m) or 16UC1 (mm)')
    arr = image_array(encoding, height, width, step, data, is_bigendian)
    if encoding == '32FC1':
        out = arr.astype(np.float32, copy=True)
        out[~np.isfinite(out) | (out <= 0)] = np.nan
        return out
    out = arr.astype(np.float32) / 1000.0
    out[arr == 0] = np.nan
    return out


def decode_compressed(fmt: str, data) -> np.ndarray:
    """uint8 [H,W,3] RGB from a CompressedImage (jpeg/png; `format` like 'jpeg' or 'bgr8; jpeg compressed bgr8')."""
    f = (fmt or '').lower()
    if 'compresseddepth' in f:
        raise ImageFormatError(f'CompressedImage format {fmt!r} is a depth stream, not a camera image')
    buf = _as_bytes(data)
    if buf.size == 0:
        raise ImageFormatError('CompressedImage has no data')
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageFormatError(f'CompressedImage ({fmt!r}, {buf.size} bytes) could not be decoded as jpeg/png')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode(array: np.ndarray, encoding: str) -> tuple[int, int, int, bytes]:
    """(height, width, step, data) for an Image of `encoding` from an array in that layout (little-endian)."""
    if encoding not in _LAYOUT:
        raise ImageFormatError(f'unsupported image encoding {encoding!r}')
    dtype, ch = _LAYOUT[encoding]
    arr = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder('<'))
    expect = 2 if ch == 1 else 3
    if arr.ndim != expect or (ch > 1 and arr.shape[2] != ch):
        raise ImageFormatError(f'{encoding} needs an array of shape [H,W{"" if ch == 1 else f",{ch}"}], got {arr.shape}')
    h, w = arr.shape[:2]
    return h, w, w * ch * arr.itemsize, arr.tobytes()
