"""sensor_msgs/Image and CompressedImage payloads ↔ numpy, without rclpy or cv_bridge.

Functions take the message fields (encoding, height, width, step, data, is_bigendian), so the
same code serves rclpy messages, rosbags messages and raw arrays. Rows may be padded (step >
width * bytes per pixel). Every malformed input raises ImageFormatError naming the problem.

Camera encodings are converted to rgb8 the way cv_bridge (vision_opencv, cv_bridge.cpp getConversionCodes
and toCvCopyImpl) converts them: the same OpenCV colour conversion codes (YUV 4:2:2 and Bayer included) and,
for 16-bit colour, the same scaling to 8 bit (convertTo with 255/65535, i.e. round(v / 257)).
"""
from __future__ import annotations

import cv2
import numpy as np

LABEL_ENCODINGS = ('mono8', '8UC1', 'mono16', '16UC1', '32SC1')
DEPTH_ENCODINGS = ('32FC1', '16UC1', 'mono16')

# encoding → (numpy dtype, channels)
_LAYOUT = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4),
    'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1), 'mono16': (np.uint16, 1), '16UC1': (np.uint16, 1),
    '32SC1': (np.int32, 1), '32FC1': (np.float32, 1),
    'rgb16': (np.uint16, 3), 'bgr16': (np.uint16, 3), 'rgba16': (np.uint16, 4), 'bgra16': (np.uint16, 4),
    # YUV 4:2:2, two bytes per pixel; sensor_msgs/image_encodings: YUV422 ("yuv422") is UYVY byte order,
    # YUV422_YUY2 ("yuv422_yuy2") is YUYV; newer distributions add the names "uyvy" and "yuyv" for the same
    'yuv422': (np.uint8, 2), 'uyvy': (np.uint8, 2), 'yuv422_yuy2': (np.uint8, 2), 'yuyv': (np.uint8, 2),
    'bayer_rggb8': (np.uint8, 1), 'bayer_bggr8': (np.uint8, 1), 'bayer_gbrg8': (np.uint8, 1),
    'bayer_grbg8': (np.uint8, 1),
    'bayer_rggb16': (np.uint16, 1), 'bayer_bggr16': (np.uint16, 1), 'bayer_gbrg16': (np.uint16, 1),
    'bayer_grbg16': (np.uint16, 1),
}

# camera encoding → how to_rgb8 turns its pixel array into RGB: an OpenCV cvtColor code (cv_bridge's for that
# encoding → rgb8), or None for the channel shuffles below. OpenCV names a Bayer pattern by the second row's
# second and third pixel, so ROS bayer_rggb8 (R at the top left) is OpenCV's BayerBG, and so on — the same
# pairs as cv_bridge, and checked in test_image_codec against mosaics sampled from a known RGB image.
_TO_RGB = {
    'rgb8': None, 'bgr8': None, 'rgba8': None, 'bgra8': None, 'mono8': None,
    'rgb16': None, 'bgr16': None, 'rgba16': None, 'bgra16': None, 'mono16': None,
    'yuv422': cv2.COLOR_YUV2RGB_UYVY, 'uyvy': cv2.COLOR_YUV2RGB_UYVY,
    'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUY2, 'yuyv': cv2.COLOR_YUV2RGB_YUY2,
    'bayer_rggb8': cv2.COLOR_BayerBG2RGB, 'bayer_bggr8': cv2.COLOR_BayerRG2RGB,
    'bayer_gbrg8': cv2.COLOR_BayerGR2RGB, 'bayer_grbg8': cv2.COLOR_BayerGB2RGB,
    'bayer_rggb16': cv2.COLOR_BayerBG2RGB, 'bayer_bggr16': cv2.COLOR_BayerRG2RGB,
    'bayer_gbrg16': cv2.COLOR_BayerGR2RGB, 'bayer_grbg16': cv2.COLOR_BayerGB2RGB,
}
COLOR_ENCODINGS = tuple(_TO_RGB)
_YUV422 = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv')


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


def to_8bit(arr: np.ndarray) -> np.ndarray:
    """uint8 from uint16 as cv_bridge converts 16-bit to 8-bit images: v * 255/65535 rounded = round(v / 257)
    (0 → 0, 65535 → 255; at most 1 away from v >> 8)."""
    return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)


def to_rgb8(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False) -> np.ndarray:
    """uint8 [H,W,3] RGB from a camera Image of any encoding in COLOR_ENCODINGS: rgb8/bgr8/rgba8/bgra8/mono8,
    16-bit rgb16/bgr16/rgba16/bgra16/mono16 (scaled to 8 bit as cv_bridge does), YUV 4:2:2 yuv422 (= uyvy) and
    yuv422_yuy2 (= yuyv), Bayer bayer_rggb8/bggr8/gbrg8/grbg8 and their 16-bit forms bayer_*16 (demosaiced with
    OpenCV in the image's own depth, then scaled to 8 bit, as cv_bridge does)."""
    if encoding not in COLOR_ENCODINGS:
        raise ImageFormatError(f'camera image encoding {encoding!r} is not supported; use one of {COLOR_ENCODINGS} '
                               f'(or a CompressedImage jpeg/png)')
    if encoding in _YUV422 and width % 2:
        raise ImageFormatError(f'{encoding} image width {width} is odd; YUV 4:2:2 shares U and V between two '
                               f'neighbouring pixels, so the width must be even')
    arr = image_array(encoding, height, width, step, data, is_bigendian)
    code = _TO_RGB[encoding]
    if code is not None:
        rgb = cv2.cvtColor(np.ascontiguousarray(arr), code)
        return to_8bit(rgb) if rgb.dtype == np.uint16 else rgb
    if arr.dtype == np.uint16:
        arr = to_8bit(arr)
    if arr.ndim == 2:                                    # mono8, mono16
        return np.repeat(arr[..., None], 3, axis=2)
    if encoding.startswith('rgb'):
        return np.ascontiguousarray(arr[..., :3])
    return np.ascontiguousarray(arr[..., 2::-1])         # bgr, bgra


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


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic): FFC0..FFCF
# except DHT (C4), JPG (C8) and DAC (CC), which are not frame headers.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def compressed_image_size(data) -> tuple[int, int]:
    """(width, height) a PNG (IHDR) or JPEG (SOF) declares in its header, read without decoding any pixel.

    ImageFormatError when the data is neither PNG nor JPEG or its header is truncated or corrupt.
    """
    buf = _as_bytes(data)
    head = buf[:24].tobytes()
    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b'IHDR':
            raise ImageFormatError('PNG header is truncated or does not start with IHDR')
        return int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')
    if not head.startswith(b'\xff\xd8'):
        raise ImageFormatError(f'it is neither PNG nor JPEG (starts with {head[:8]!r})')
    b = buf.tobytes()
    i = 2
    while i + 1 < len(b):
        if b[i] != 0xFF:
            raise ImageFormatError(f'JPEG header is corrupt (no segment marker at byte {i})')
        marker = b[i + 1]
        if marker == 0xFF:                                   # fill byte before a marker
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:         # segments without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):                           # end of image / start of scan: no frame header
            break
        if i + 4 > len(b):
            break
        length = int.from_bytes(b[i + 2:i + 4], 'big')
        if length < 2:
            raise ImageFormatError(f'JPEG header is corrupt (segment FF{marker:02X} of length {length})')
        if marker in _JPEG_SOF:
            if i + 9 > len(b):
                break
            return int.from_bytes(b[i + 7:i + 9], 'big'), int.from_bytes(b[i + 5:i + 7], 'big')
        i += 2 + length
    raise ImageFormatError('JPEG has no frame header (SOF) before its image data, so its size is unknown')


def check_image_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    """ImageFormatError when a width x height image has more than max_pixels pixels (or an empty size)."""
    if width <= 0 or height <= 0:
        raise ImageFormatError(f'{what} declares {width}x{height} pixels; width and height must be positive')
    if width * height > max_pixels:
        raise ImageFormatError(
            f'{what} declares {width}x{height} = {width * height / 1e6:.1f} Mpx, more than max_image_pixels = '
            f'{max_pixels} ({max_pixels / 1e6:.1f} Mpx); not decoded. A decompression bomb, or a camera mode '
            f'larger than expected (then raise max_image_pixels)')


def decode_compressed(fmt: str, data, max_pixels: int | None = None) -> np.ndarray:
    """uint8 [H,W,3] RGB from a CompressedImage (jpeg/png; `format` like 'jpeg' or 'bgr8; jpeg compressed bgr8').

    With max_pixels, the size the PNG/JPEG header declares is checked before anything is decoded (a few hundred
    bytes can declare 16000x16000 and make the decoder allocate gigabytes), and other formats are refused
    because their size cannot be checked first.
    """
    f = (fmt or '').lower()
    if 'compresseddepth' in f:
        raise ImageFormatError(f'CompressedImage format {fmt!r} is a depth stream, not a camera image')
    buf = _as_bytes(data)
    if buf.size == 0:
        raise ImageFormatError('CompressedImage has no data')
    if max_pixels is not None:
        what = f'CompressedImage ({fmt!r}, {buf.size} bytes)'
        try:
            w, h = compressed_image_size(buf)
        except ImageFormatError as exc:
            raise ImageFormatError(f'{what} could not be decoded: {exc}') from None
        check_image_pixels(w, h, int(max_pixels), what)
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
