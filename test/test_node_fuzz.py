"""Fuzzing the depth node over a real ROS 2 graph: a seeded stream of malformed and valid messages,
interleaved on every input topic (`image` or `image/compressed`, `camera_info`, `instance_mask`), into a
`depth_node` process; once per image transport (raw, compressed), each with a fresh node.

Per episode, in this order: maybe a camera_info (valid, or with NaN/inf/zero/huge focal lengths, a zero size, an
ROI outside the image, absurd binning...), a few malformed messages (undecodable or truncated PNG/JPEG, other
formats, bombs declaring more than max_image_pixels, wrong encodings, step/size mismatches, zero sizes, masks
of the wrong encoding or size, stamps anywhere), maybe a garbled JPEG/PNG (it may or may not decode), maybe a
backwards stamp jump (a looped bag), then one valid frame of a random size and encoding (the camera driver
encodings YUV 4:2:2, Bayer and 16-bit colour too), with no mask or a valid mask before or after it (other sizes
and aspect ratios, other label encodings, an instance split evenly across a depth edge).

Every message is confirmed before the next one goes out: its /diagnostics counter (diagnostics_period 0.1 s)
must go up, so nothing is dropped and each message's fate is known: deterministic on a loaded machine, not
timing-dependent. After each message the node's counters must equal the ledger of what was sent (received /
skipped by reason / paired / camera_info used or refused / stamp jumps / errors). Every valid frame must give
a depth image of its size with its stamp (values checked where the model's output is known exactly:
model-size frames), depth/camera_info for every depth frame, objects exactly for
masked frames; malformed frames give no depth; at the end the node still answers a valid frame and has
logged no traceback.

DYNADEPTH_FUZZ_SEED picks the sequence (the seed is printed; a failure names it), DYNADEPTH_FUZZ_EPISODES its
length.
"""
import math
import os
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from contract_model import expected_depth  # noqa: E402
from test_node_graph import (FRAME, INTR, camera_info_msg, depth_array, image_msg, out_stamp,  # noqa: E402
                             running_node, stamp_ns)
from test_image_codec import BAYER, bayer_mosaic, yuv422_rows  # noqa: E402
from test_node_robustness import _png_header_only, diag  # noqa: E402

SEED = int(os.environ.get('DYNADEPTH_FUZZ_SEED', '20250611'))
EPISODES = int(os.environ.get('DYNADEPTH_FUZZ_EPISODES', '30'))
NS = '/dd_fuzz_ns'
MAX_PIXELS = 1_000_000
MODEL_H, MODEL_W = 64, 192                 # the contract model's input: frames of this size are not resampled
MIN_OBJECT_PIXELS = 20                      # the node's default min_object_pixels
STEP_NS = 100_000_000                       # timeline step: more than mask_slop (50 ms), frames never share a mask
PARAMS = ('diagnostics_period:=0.1', f'max_image_pixels:={MAX_PIXELS}', 'mask_max_wait:=5.0')
COUNTERS = ('frames_in', 'frames_out', 'dropped_frames', 'bad_frames', 'errors', 'masks_in', 'bad_masks',
            'masks_dropped', 'masks_resized', 'objects_published', 'camera_info_in', 'camera_info_errors',
            'stamp_jumps_back', 'qos_incompatible_events', 'colored_published')
OTHER_SIZES = [(1, 1), (2, 5), (7, 3), (100, 100), (480, 640), (33, 333), (128, 384), (1000, 1000)]  # h, w


def _stamp(ns):
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _raw(stamp, h, w, encoding, data, step=None, bigendian=0):
    return Image(header=Header(stamp=stamp, frame_id=FRAME), height=h, width=w, encoding=encoding,
                 step=w * 3 if step is None else step, is_bigendian=bigendian, data=bytes(data))


def _compressed(stamp, fmt, data):
    return CompressedImage(header=Header(stamp=stamp, frame_id=FRAME), format=fmt, data=bytes(data))


def _encode(ext, array, *params):
    ok, buf = cv2.imencode(ext, array, list(params))
    assert ok
    return buf.tobytes()


def _scene(rng, h, w):
    """RGB with a red depth edge at the middle column (one side near, the other far) and noise in green/blue,
    so a channel mix-up changes the depth."""
    near, far = int(rng.integers(0, 40)), int(rng.integers(200, 256))
    left, right = (near, far) if rng.random() < 0.5 else (far, near)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[..., 0] = left
    rgb[:, w // 2:, 0] = right
    return rgb


# ---------------------------------------------------------------------------- malformed messages
def _bad_raw(rng, stamp):
    """(name, Image, text of the node's last_bad_frame)."""
    good = rng.integers(0, 256, (MODEL_H, MODEL_W, 3), dtype=np.uint8).tobytes()
    enc = str(rng.choice(['nv21', '16UC1', '32FC1', 'bayer_rggb12', '', 'RGB8', 'YUV422']))
    cases = [
        (f'encoding {enc!r}', lambda: _raw(stamp, MODEL_H, MODEL_W, enc, good), 'is not supported'),
        ('yuv422 of odd width', lambda: _raw(stamp, MODEL_H, MODEL_W - 1, 'yuv422', good, step=(MODEL_W - 1) * 2),
         'is odd'),
        ('bayer one byte short', lambda: _raw(stamp, MODEL_H, MODEL_W, 'bayer_grbg8', good[:MODEL_H * MODEL_W - 1],
                                              step=MODEL_W), 'needs'),
        ('zero width', lambda: _raw(stamp, MODEL_H, 0, 'rgb8', b''), 'must be positive'),
        ('zero height', lambda: _raw(stamp, 0, MODEL_W, 'rgb8', b''), 'must be positive'),
        ('declares 100000x100000', lambda: _raw(stamp, 100000, 100000, 'rgb8', b'\x07' * 16), 'max_image_pixels'),
        ('1001x1000 mono8, one row over max_image_pixels',
         lambda: _raw(stamp, 1001, 1000, 'mono8', bytes(1001 * 1000), step=1000), 'max_image_pixels'),
        ('step < width*3', lambda: _raw(stamp, MODEL_H, MODEL_W, 'rgb8', good, step=MODEL_W * 3 - 1), 'step'),
        ('one byte short', lambda: _raw(stamp, MODEL_H, MODEL_W, 'rgb8', good[:-1]), 'needs'),
        ('no data', lambda: _raw(stamp, MODEL_H, MODEL_W, 'rgb8', b''), 'needs'),
        ('step 2^32-1', lambda: _raw(stamp, 2, 4, 'rgb8', good[:100], step=2**32 - 1), 'needs'),
    ]
    name, make, reason = cases[rng.integers(len(cases))]
    return name, make(), reason


def _jpeg_with_size(jpeg: bytes, w: int, h: int) -> bytes:
    """`jpeg` with its frame header (SOF0) patched to declare w x h."""
    i = jpeg.index(b'\xff\xc0')
    return jpeg[:i + 5] + h.to_bytes(2, 'big') + w.to_bytes(2, 'big') + jpeg[i + 9:]


def _bad_compressed(rng, stamp):
    """(name, CompressedImage, text of the node's last_bad_frame)."""
    rgb = _scene(rng, MODEL_H, MODEL_W)
    png, jpg = _encode('.png', rgb), _encode('.jpg', rgb)
    cases = [
        ('empty', lambda: _compressed(stamp, 'jpeg', b''), 'has no data'),
        ('random bytes', lambda: _compressed(stamp, 'jpeg', b'\x00' + rng.bytes(int(rng.integers(1, 500)))),
         'neither PNG nor JPEG'),
        ('a BMP', lambda: _compressed(stamp, 'bmp', _encode('.bmp', rgb)), 'neither PNG nor JPEG'),
        ('truncated PNG', lambda: _compressed(stamp, 'png', png[:int(rng.integers(40, len(png) - 1))]),
         'could not be decoded'),
        ('truncated JPEG', lambda: _compressed(stamp, 'jpeg', jpg[:int(rng.integers(4, len(jpg) - 1))]),
         'could not be decoded'),
        ('PNG signature only', lambda: _compressed(stamp, 'png', png[:12]), 'could not be decoded'),
        ('JPEG without a frame header', lambda: _compressed(stamp, 'jpeg', b'\xff\xd8\xff\xd9'), 'no frame header'),
        ('JPEG segment of length 1', lambda: _compressed(stamp, 'jpeg', b'\xff\xd8\xff\xe0\x00\x01' + bytes(20)),
         'corrupt'),
        ('PNG declaring 16000x16000', lambda: _compressed(stamp, 'png', _png_header_only(16000, 16000)),
         'max_image_pixels'),
        ('JPEG declaring 20000x20000', lambda: _compressed(stamp, 'jpeg', _jpeg_with_size(jpg, 20000, 20000)),
         'max_image_pixels'),
        ('PNG declaring 0x10', lambda: _compressed(stamp, 'png', _png_header_only(0, 10)), 'must be positive'),
        ('1001x1000 PNG', lambda: _compressed(stamp, 'png', _encode('.png', np.zeros((1000, 1001), np.uint8))),
         'max_image_pixels'),
        ('compressedDepth', lambda: _compressed(stamp, '16UC1; compressedDepth png', png), 'depth stream'),
    ]
    name, make, reason = cases[rng.integers(len(cases))]
    return name, make(), reason


def _garbled(rng, stamp):
    """(name, CompressedImage, (h, w)): a JPEG or PNG with bytes flipped in its image data (the header, so the
    size, intact); it may decode."""
    h, w = int(rng.integers(8, 100)), int(rng.integers(8, 200))
    ext = str(rng.choice(['.jpg', '.png']))
    data = bytearray(_encode(ext, rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    start = data.index(b'\xff\xda') + 20 if ext == '.jpg' else 40      # after the JPEG scan header / PNG IHDR
    for i in rng.integers(start, len(data) - 2, 5):
        data[i] ^= int(rng.integers(1, 256))
    return f'garbled {ext[1:]} {w}x{h}', _compressed(stamp, ext[1:], data), (h, w)


def _bad_mask(rng, stamp):
    """(name, Image): an instance mask the node must skip as bad."""
    labels = np.zeros((MODEL_H, MODEL_W), np.uint16)
    data = labels.tobytes()
    enc = str(rng.choice(['rgb8', 'bgr8', '32FC1', 'yuv422', '']))
    cases = [
        (f'mask encoding {enc!r}', lambda: _raw(stamp, MODEL_H, MODEL_W, enc, data, step=MODEL_W * 2)),
        ('mask of zero width', lambda: _raw(stamp, MODEL_H, 0, '16UC1', b'', step=0)),
        ('mask step < width*2', lambda: _raw(stamp, MODEL_H, MODEL_W, '16UC1', data, step=MODEL_W)),
        ('mask one byte short', lambda: _raw(stamp, MODEL_H, MODEL_W, '16UC1', data[:-1], step=MODEL_W * 2)),
        ('mask declaring 60000x60000', lambda: _raw(stamp, 60000, 60000, 'mono8', b'\x01' * 10, step=60000)),
    ]
    name, make = cases[rng.integers(len(cases))]
    return name, make()


def _bad_stamp(rng, timeline_ns, seq):
    """A stamp anywhere (zero, negative, far future, far back, now), unique by its nanoseconds."""
    nanosec = 12345 + seq                              # never a multiple of STEP_NS: no valid frame has it
    sec = int(rng.choice([0, -5, 2**31 - 1, timeline_ns // 10**9 - 1000, timeline_ns // 10**9]))
    return Time(sec=sec, nanosec=nanosec)


# ---------------------------------------------------------------------------- camera_info
K_TO_P = {0: 0, 2: 2, 4: 5, 5: 6}                    # fx, cx, fy, cy: index in K -> index in P


def _info(w, h, lens=1.0, k=(), p=(), **fields):
    """CameraInfo of the model's training intrinsics at w x h, focal lengths times `lens`; k/p: {index: value}."""
    info = camera_info_msg(w, h, lens * INTR[0] * w, lens * INTR[1] * h, _stamp(time.time_ns()))
    # the node reads P (intrinsics_source default): a K entry changed changes P's entry too, unless p says otherwise
    p = {**{K_TO_P[i]: v for i, v in dict(k).items() if i in K_TO_P}, **dict(p)}
    for name, changes in (('k', k), ('p', p)):
        values = list(getattr(info, name))
        for i, v in dict(changes).items():
            values[i] = v
        setattr(info, name, values)
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _camera_info(rng):
    """(name, CameraInfo, lens factor when usable for 3:1 images else None)."""
    w, h = [(192, 64), (384, 128), (96, 32)][rng.integers(3)]
    fx, fy = INTR[0] * w, INTR[1] * h
    lens = float(rng.choice([0.5, 1.0, 2.0]))
    valid = [
        (f'{w}x{h}, lens x{lens:g}', lambda: _info(w, h, lens), lens),
        ('P all zero', lambda: _info(w, h, p={i: 0.0 for i in range(12)}), 1.0),
        ('1000 distortion coefficients', lambda: _info(w, h, d=[0.0] * 1000, distortion_model='rational_polynomial'),
         1.0),
    ]
    odd = [
        ('fx NaN', lambda: _info(w, h, k={0: math.nan})), ('fx inf', lambda: _info(w, h, k={0: math.inf})),
        ('fx 0', lambda: _info(w, h, k={0: 0.0})), ('fx negative', lambda: _info(w, h, k={0: -fx})),
        ('fy -inf', lambda: _info(w, h, k={4: -math.inf})), ('cx NaN', lambda: _info(w, h, k={2: math.nan})),
        ('P NaN', lambda: _info(w, h, p={0: math.nan})),
        ('fx 1e300', lambda: _info(w, h, k={0: 1e300})),
        ('fx, fy 1e-300', lambda: _info(w, h, k={0: 1e-300, 4: 1e-300})),
        ('fy 100x', lambda: _info(w, h, k={4: 100 * fy})),
        ('size 0x0', lambda: _info(w, h, width=0, height=0)),
        ('ROI outside the image', lambda: _info(w, h, roi=RegionOfInterest(x_offset=w - 10, y_offset=0,
                                                                            width=100, height=h))),
        ('binning_x 4e9', lambda: _info(w, h, binning_x=4_000_000_000)),
        ('binning_y 1000', lambda: _info(w, h, binning_y=1000)),
    ]
    if rng.random() < 0.4:
        name, make, lens = valid[rng.integers(len(valid))]
        return name, make(), lens
    name, make = odd[rng.integers(len(odd))]
    return name, make(), None


# ---------------------------------------------------------------------------- valid frames and masks
DRIVER_ENCODINGS = ('yuv422', 'yuv422_yuy2', 'bayer_rggb8', 'bayer_bggr8', 'bayer_gbrg8', 'bayer_grbg8',
                    'bayer_rggb16', 'bayer_gbrg16', 'rgb16', 'bgr16', 'rgba16', 'bgra16', 'mono16')


def _driver_frame(rng, stamp, rgb, encoding):
    """(Image, rgb the node must see or None) for `rgb` as a camera driver publishes it in `encoding`: YUV 4:2:2
    and Bayer lose colour detail (None: only the depth size is checked), 16 bit carries it exactly (each value
    v * 257 plus noise below 128, which cv_bridge's 16 → 8 bit scaling maps back to v), in either byte order."""
    h, w = rgb.shape[:2]
    if encoding in ('yuv422', 'yuv422_yuy2'):
        return _raw(stamp, h, w, encoding, yuv422_rows(rgb, 'UYVY' if encoding == 'yuv422' else 'YUYV').tobytes(),
                    step=w * 2), None
    if encoding.endswith('16') and encoding.startswith('bayer_'):
        mosaic = bayer_mosaic(rgb.astype(np.uint16) * 257, BAYER[encoding.replace('16', '8')])
        return _raw(stamp, h, w, encoding, mosaic.tobytes(), step=w * 2), None
    if encoding.startswith('bayer_'):
        return _raw(stamp, h, w, encoding, bayer_mosaic(rgb, BAYER[encoding]).tobytes(), step=w), None
    if encoding == 'mono16':
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
    noise = rng.integers(-128, 128, rgb.shape)
    rgb16 = np.clip(rgb.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)
    planes = {'r': rgb16[..., 0], 'g': rgb16[..., 1], 'b': rgb16[..., 2], 'a': rgb16[..., 0] ^ 0x5A5A}
    order = 'r' if encoding == 'mono16' else encoding[:-2]
    arr = np.stack([planes[c] for c in order], axis=-1)
    big = bool(rng.random() < 0.5)
    data = arr.astype('>u2' if big else '<u2').tobytes()
    return _raw(stamp, h, w, encoding, data, step=w * len(order) * 2, bigendian=int(big)), rgb


def _valid_raw(rng, stamp, exact):
    """(name, Image, rgb the node must see or None (lossy encoding), (h, w)); exact: at the model size."""
    if exact:
        rgb = _scene(rng, MODEL_H, MODEL_W)
        kind = str(rng.choice(['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'padded rgb8', 'bigendian rgb8',
                               'driver']))
        if kind == 'driver':                           # what camera drivers publish (YUV 4:2:2, Bayer, 16 bit)
            enc = str(rng.choice(DRIVER_ENCODINGS))
            msg, seen = _driver_frame(rng, stamp, rgb, enc)
            return enc, msg, seen, rgb.shape[:2]
        if kind == 'mono8':
            rgb = np.repeat(rgb[..., :1], 3, axis=2)
        if kind == 'padded rgb8':                      # rows padded with garbage: step > width*3
            pad = rng.integers(0, 256, (MODEL_H, 13), dtype=np.uint8)
            rows = np.concatenate([rgb.reshape(MODEL_H, -1), pad], 1)
            msg = _raw(stamp, MODEL_H, MODEL_W, 'rgb8', rows.tobytes(), step=MODEL_W * 3 + 13)
            return kind, msg, rgb, rgb.shape[:2]
        if kind == 'bigendian rgb8':                   # byte order is irrelevant for 8-bit channels
            return kind, _raw(stamp, MODEL_H, MODEL_W, 'rgb8', rgb.tobytes(), bigendian=1), rgb, rgb.shape[:2]
        return kind, image_msg(rgb, stamp, kind), rgb, rgb.shape[:2]
    h, w = OTHER_SIZES[rng.integers(len(OTHER_SIZES))]
    rgb = _scene(rng, h, w)
    if rng.random() < 0.3:                             # a driver encoding at this size (YUV 4:2:2: even widths)
        enc = str(rng.choice([e for e in DRIVER_ENCODINGS if w % 2 == 0 or not e.startswith('yuv')]))
        return f'{enc} {w}x{h}', _driver_frame(rng, stamp, rgb, enc)[0], None, (h, w)
    return f'rgb8 {w}x{h}', image_msg(rgb, stamp), rgb, (h, w)


def _valid_compressed(rng, stamp, exact):
    """(name, CompressedImage, rgb the node must see or None (lossy), (h, w))."""
    if exact:
        rgb = _scene(rng, MODEL_H, MODEL_W)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        kind = str(rng.choice(['png', 'gray png', 'rgba png', 'png named jpeg']))
        if kind == 'gray png':
            rgb = np.repeat(rgb[..., :1], 3, axis=2)
            return kind, _compressed(stamp, 'mono8; png compressed mono8', _encode('.png', rgb[..., 0])), rgb, \
                rgb.shape[:2]
        if kind == 'rgba png':
            bgra = np.dstack([bgr, rng.integers(0, 256, (MODEL_H, MODEL_W), dtype=np.uint8)])
            return kind, _compressed(stamp, 'rgba8; png compressed rgba8', _encode('.png', bgra)), rgb, rgb.shape[:2]
        fmt = 'jpeg' if kind == 'png named jpeg' else str(rng.choice(['png', 'PNG', 'bgr8; png compressed bgr8', '']))
        return kind, _compressed(stamp, fmt, _encode('.png', bgr)), rgb, rgb.shape[:2]
    h, w = OTHER_SIZES[rng.integers(len(OTHER_SIZES))]
    bgr = np.ascontiguousarray(_scene(rng, h, w)[..., ::-1])
    kind = str(rng.choice(['jpeg', 'progressive jpeg', 'gray jpeg', '16-bit png']))
    data = {'jpeg': lambda: _encode('.jpg', bgr),
            'progressive jpeg': lambda: _encode('.jpg', bgr, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
            'gray jpeg': lambda: _encode('.jpg', bgr[..., 0]),
            '16-bit png': lambda: _encode('.png', bgr.astype(np.uint16) * 257)}[kind]()
    return f'{kind} {w}x{h}', _compressed(stamp, 'png' if 'png' in kind else 'jpeg', data), None, (h, w)


def _labels(rng, h, w, max_id, straddle):
    """int64 [h, w] instance ids: a few rectangles (some below min_object_pixels), and with `straddle` an
    instance split evenly across the middle column (the scene's depth edge)."""
    labels = np.zeros((h, w), np.int64)
    for iid in rng.integers(1, max_id + 1, size=3):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        labels[y0:y0 + int(rng.integers(1, 30)), x0:x0 + int(rng.integers(1, 40))] = iid
    if straddle and h >= 8 and w >= 8:
        y0 = int(rng.integers(0, h - 7))
        labels[y0:y0 + 8, w // 2 - 3:w // 2 + 3] = max_id          # 24 px on each side of the edge
    return labels


def _mask(rng, stamp, h, w):
    """(name, Image, labels it carries) for a frame of h x w: same size or not, any label encoding."""
    geometry = str(rng.choice(['same size', 'same size', 'half size', 'other aspect']))
    mh, mw = {'same size': (h, w), 'half size': (max(1, h // 2), max(1, w // 2)),
              'other aspect': (h, max(1, w // 3))}[geometry]
    enc = str(rng.choice(['mono8', '8UC1', '16UC1', 'mono16', '32SC1']))
    max_id = {'mono8': 255, '8UC1': 255, '16UC1': 65535, 'mono16': 65535, '32SC1': 2**31 - 1}[enc]
    labels = _labels(rng, mh, mw, min(max_id, int(rng.choice([9, max_id]))), straddle=rng.random() < 0.5)
    if enc == '32SC1':
        labels[rng.random(labels.shape) < 0.05] = -7                  # negative ids are background
    dtype = {'mono8': np.uint8, '8UC1': np.uint8, '16UC1': np.uint16, 'mono16': np.uint16, '32SC1': np.int32}[enc]
    big = enc in ('16UC1', 'mono16') and rng.random() < 0.5
    arr = np.ascontiguousarray(labels.astype(dtype).astype(np.dtype(dtype).newbyteorder('>' if big else '<')))
    msg = Image(header=Header(stamp=stamp, frame_id=FRAME), height=mh, width=mw, encoding=enc,
                step=arr.strides[0], is_bigendian=int(big), data=arr.tobytes())
    return f'{geometry} {enc}{" big-endian" if big else ""} mask', msg, labels


def _expected_objects(labels, depth):
    """{instance id: median depth} of the instances the node must report (min_object_pixels valid pixels)."""
    out = {}
    for iid in np.unique(labels[labels > 0]):
        z = depth[(labels == iid) & np.isfinite(depth)]
        if z.size >= MIN_OBJECT_PIXELS:
            out[int(iid)] = float(np.median(z.astype(np.float64)))
    return out


# ---------------------------------------------------------------------------- the fuzzer
class Fuzzer:
    """Sends one message at a time and keeps the ledger of what the node's counters must say."""

    def __init__(self, g, transport, name, rng):
        self.g, self.transport, self.name, self.rng = g, transport, name, rng
        compressed = transport == 'compressed'
        self.pubs = {'image': g.pub(CompressedImage if compressed else Image,
                                    f'{NS}/image/compressed' if compressed else f'{NS}/image'),
                     'camera_info': g.pub(CameraInfo, f'{NS}/camera_info'),
                     'mask': g.pub(Image, f'{NS}/instance_mask')}
        self.t_ns = time.time_ns() // STEP_NS * STEP_NS
        self.lens = None                       # the node's camera_info: lens factor if usable for 3:1 images
        self.ledger = {}
        self.events = []
        self.sent = {'valid': 0, 'malformed': 0, 'garbled': 0, 'camera_info': 0, 'masks': 0, 'jumps': 0}
        self.depth_stamps, self.bad_stamps, self.info_stamps = set(), set(), set()
        self.resends = 0
        self.jump_pending = False

    # ------------------------------------------------------------ plumbing
    def fail(self, text):
        log = self.g.log_path.read_text()
        pytest.fail(f'[seed {SEED}, {self.transport}] {text}\nlast events: {self.events[-8:]}\n'
                    f'node log (tail):\n{log[-3000:]}')

    def next_stamp(self):
        self.t_ns += STEP_NS
        return _stamp(self.t_ns)

    def counters(self, v):
        return {k: int(v[k]) for k in COUNTERS}

    def settle(self, extra=None, what='counters'):
        """Wait until /diagnostics shows the ledger (and extra(v)); return the values."""
        want = dict(self.ledger)
        v = diag(self.g, self.name, lambda v: self.counters(v) == want and (extra is None or extra(v)), 20.0)
        if v is None:
            last = diag(self.g, self.name, timeout=1.0) or {}
            diff = {k: (n, last.get(k)) for k, n in want.items() if str(n) != last.get(k)}
            self.fail(f'{what}: /diagnostics differs from what was sent, {{counter: (expected, node)}}: {diff}; '
                      f'last_bad_frame {last.get("last_bad_frame")!r}')
        return v

    def deliver(self, topic, msg, counter, what):
        """Publish msg until the node's `counter` goes up (best effort: a lost copy is sent again); the ledger
        takes the copies received; returns their number."""
        self.events.append(what)
        before = self.ledger[counter]
        for attempt in range(3):
            self.pubs[topic].publish(msg)
            v = diag(self.g, self.name, lambda v: int(v[counter]) > before, 8.0)
            if v is not None:
                break
            self.resends += 1
        else:
            self.fail(f'{what}: the node never received it ({counter} stays {before})')
        if attempt:                            # a slow first copy may still arrive
            time.sleep(1.0)
            v = diag(self.g, self.name, timeout=2.0)
        k = int(v[counter]) - before
        self.ledger[counter] += k
        return k

    def output(self, topic, stamp, timeout=10.0):
        s = stamp_ns(stamp)
        return self.g.wait(lambda: next((m for m in self.g.msgs(f'{NS}/{topic}') if stamp_ns(out_stamp(m)) == s),
                                        None), timeout)

    # ------------------------------------------------------------ events
    def warm_up(self):
        """Discovery: repeat until each topic is matched both ways, then start the ledger from the node's counters."""
        stamp = self.next_stamp()
        self.lens = 1.0
        msgs = {'camera_info': (_info(MODEL_W, MODEL_H), 'camera_info_in'),
                'mask': (_raw(stamp, MODEL_H, MODEL_W, 'rgb8', bytes(MODEL_H * MODEL_W * 3)), 'masks_in'),
                'image': (self._valid(stamp, exact=True)[1], 'frames_out')}
        for topic, (msg, counter) in msgs.items():
            for _ in range(30):
                self.pubs[topic].publish(msg)
                if diag(self.g, self.name, lambda v: int(v[counter]) > 0, 1.0) is not None:
                    break
            else:
                self.fail(f'warm-up: no {counter} after 30 s')
        time.sleep(1.0)                        # copies still on their way
        v = diag(self.g, self.name, lambda v: int(v['frames_in']) == int(v['frames_out']), 10.0)
        if v is None:
            self.fail('warm-up: the valid frame was not processed')
        self.ledger = self.counters(v)
        self.depth_stamps.add(stamp_ns(stamp))

    def _valid(self, stamp, exact):
        make = _valid_compressed if self.transport == 'compressed' else _valid_raw
        return make(self.rng, stamp, exact)

    def camera_info(self):
        name, info, lens = _camera_info(self.rng)
        self.deliver('camera_info', info, 'camera_info_in', f'camera_info {name}')
        self.lens = lens
        self.sent['camera_info'] += 1
        self.settle(what=f'camera_info {name}')

    def malformed(self):
        self.sent['malformed'] += 1
        stamp = _bad_stamp(self.rng, self.t_ns, len(self.bad_stamps))
        self.bad_stamps.add(stamp_ns(stamp))
        if self.rng.random() < 0.35:
            name, msg = _bad_mask(self.rng, stamp)
            k = self.deliver('mask', msg, 'masks_in', name)
            self.ledger['bad_masks'] += k
            return self.settle(what=name)
        make = _bad_compressed if self.transport == 'compressed' else _bad_raw
        name, msg, reason = make(self.rng, stamp)
        k = self.deliver('image', msg, 'frames_in', name)
        self.ledger['bad_frames'] += k
        v = self.settle(lambda v: reason in v['last_bad_frame'], what=name)
        assert self.g.proc.poll() is None, f'[seed {SEED}] the node died on {name}'
        return v

    def garbled(self):
        """A JPEG/PNG with flipped bytes: skipped as bad or decoded; either way counted once, never an error."""
        self.sent['garbled'] += 1
        stamp = self.next_stamp()
        name, msg, (h, w) = _garbled(self.rng, stamp)
        k = self.deliver('image', msg, 'frames_in', name)
        n = self.ledger['frames_in']
        v = diag(self.g, self.name, lambda v: int(v['frames_out']) + int(v['bad_frames']) + int(v['dropped_frames'])
                 + int(v['errors']) == n, 20.0)
        if v is None:
            self.fail(f'{name}: never processed')
        if int(v['bad_frames']) > self.ledger['bad_frames']:
            self.ledger['bad_frames'] += k
            self.bad_stamps.add(stamp_ns(stamp))
        else:
            self.ledger['frames_out'] += k
            self.ledger['camera_info_errors'] += k * (self._info_use(h, w) is None)
            out = self.output('depth', stamp)
            assert out is not None and (out.height, out.width) == (h, w), f'[seed {SEED}] {name}: depth {out}'
            self.depth_stamps.add(stamp_ns(stamp))
        self.settle(what=name)

    def jump_back(self):
        """Loop the timeline: the next valid stamps are 60..600 s older (the node restarts mask pairing)."""
        self.sent['jumps'] += 1
        self.t_ns -= int(self.rng.integers(600, 6000)) * STEP_NS
        self.events.append('stamps jump back')
        self.jump_pending = True

    def _count_jump(self):
        """The node counts a jump when the first valid frame or mask of the new timeline is processed."""
        self.ledger['stamp_jumps_back'] += self.jump_pending
        self.jump_pending = False

    def _info_use(self, h, w):
        """The lens factor the node applies to an h x w frame, None when its camera_info cannot be used."""
        return self.lens if self.lens is not None and abs(w / h / 3.0 - 1.0) <= 0.01 else None

    def valid_frame(self, mask_mode):
        """One valid frame (mask_mode: None, 'early' = mask first, 'late' = mask after the depth)."""
        self.sent['valid'] += 1
        stamp = self.next_stamp()
        exact = self.rng.random() < 0.6
        name, msg, rgb, (h, w) = self._valid(stamp, exact)
        lens = self._info_use(h, w)
        depth = None
        if exact and rgb is not None:
            depth = expected_depth(rgb[..., 0]) * np.float32(1.0 if lens is None else lens)
        mask = None
        if mask_mode == 'early' and self.sent['masks']:   # a stream's first mask cannot jump: the frame does
            self._count_jump()
        if mask_mode:
            self.sent['masks'] += 1
            mask = _mask(self.rng, stamp, h, w)
        if mask_mode == 'early':
            self.deliver('mask', mask[1], 'masks_in', mask[0] + ' (before its frame)')
            self.settle(what=mask[0])
        self._count_jump()
        k = self.deliver('image', msg, 'frames_in', f'{name} ({"no" if lens is None else "with"} camera_info)')
        self.ledger['frames_out'] += k
        self.ledger['camera_info_errors'] += k * (lens is None)
        out = self.output('depth', stamp)
        if out is None:
            self.fail(f'valid frame {name}: no depth')
        self.depth_stamps.add(stamp_ns(stamp))
        d = depth_array(out)
        assert d.shape == (h, w), f'[seed {SEED}] {name}: depth {d.shape}, frame {(h, w)}'
        if depth is not None:
            np.testing.assert_allclose(d, depth, rtol=1e-5, err_msg=f'[seed {SEED}] {name}, lens {lens}')
        info = self.output('depth/camera_info', stamp)   # the camera's, or the model's when unusable
        assert info is not None and (info.width, info.height) == (w, h), f'[seed {SEED}] {name}: {info}'
        self.info_stamps.add(stamp_ns(stamp))
        if mask_mode == 'late':
            self.deliver('mask', mask[1], 'masks_in', mask[0])
        if mask_mode:
            self._check_objects(stamp, mask, d if depth is not None else None, (h, w), name, k)
        self.settle(what=name)

    def _check_objects(self, stamp, mask, depth, hw, frame_name, copies):
        name, msg, labels = mask
        objs = self.output('objects', stamp)
        if objs is None:
            self.fail(f'{name} for {frame_name}: no objects')
        self.ledger['objects_published'] += copies
        self.ledger['masks_resized'] += copies * (labels.shape != hw)
        assert objs.markers[0].action == Marker.DELETEALL
        bodies = {m.id: m for m in objs.markers if m.ns == 'dynadepth_objects' and m.action == Marker.ADD}
        for m in bodies.values():
            p = m.pose.position
            assert np.isfinite([p.x, p.y, p.z]).all(), f'[seed {SEED}] {name}: object {m.id} at {p}'
        if depth is not None and labels.shape == depth.shape:
            want = _expected_objects(labels, depth)
            assert sorted(bodies) == sorted(want), f'[seed {SEED}] {name}: objects {sorted(bodies)}, want {want}'
            for iid, z in want.items():
                assert bodies[iid].pose.position.z == pytest.approx(z, rel=1e-5), (SEED, name, iid)
        else:
            assert set(bodies) <= set(int(i) for i in np.unique(labels[labels > 0])), (SEED, name, sorted(bodies))

    def episode(self):
        if self.rng.random() < 0.3:
            self.camera_info()
        for _ in range(int(self.rng.integers(0, 4))):
            if self.rng.random() < 0.25:
                self.camera_info()
            else:
                self.malformed()
        if self.transport == 'compressed' and self.rng.random() < 0.3:
            self.garbled()
        if self.rng.random() < 0.12:
            self.jump_back()
        self.valid_frame(self.rng.choice([None, 'early', 'late', 'late']))


@pytest.fixture(params=['raw', 'compressed'])
def fuzz_graph(request, tmp_path):
    """A fresh depth_node for one image transport (the node subscribes to `image` or `image/compressed`)."""
    compressed = request.param == 'compressed'
    params = (('image_transport:=compressed',) if compressed else ()) + PARAMS
    yield from running_node(tmp_path, CompressedImage if compressed else Image,
                            'image/compressed' if compressed else 'image', params, NS, f'dd_fuzz_{request.param}')


def test_fuzzed_inputs_leave_the_node_alive_with_exact_counters(fuzz_graph, request):
    g = fuzz_graph
    transport = request.node.callspec.params['fuzz_graph']
    print(f'fuzz seed {SEED} (DYNADEPTH_FUZZ_SEED overrides), {transport}, {EPISODES} episodes')
    t0 = time.monotonic()
    f = Fuzzer(g, transport, f'dd_fuzz_{transport}', np.random.default_rng([SEED, int(transport == 'compressed')]))
    f.warm_up()
    for _ in range(EPISODES):
        f.episode()
    f.valid_frame('late')          # still answering; its mask also decides every frame still waiting for one
    v = f.settle(lambda v: int(v['objects_unpaired']) == int(v['frames_out']) - int(v['objects_published']),
                 'the end (every depth frame paired or given up)')
    assert g.proc.poll() is None
    assert (v['errors'], v['dropped_frames'], v['masks_dropped']) == ('0', '0', '0'), v
    assert int(v['frames_in']) == int(v['frames_out']) + int(v['bad_frames'])
    assert v['_level'] != DiagnosticStatus.ERROR, v['_message']
    depth = {stamp_ns(m.header.stamp) for m in g.msgs(f'{NS}/depth')}
    assert depth == f.depth_stamps, f'[seed {SEED}] depth for {sorted(depth - f.depth_stamps)}, ' \
                                    f'none for {sorted(f.depth_stamps - depth)}'
    info = {stamp_ns(m.header.stamp) for m in g.msgs(f'{NS}/depth/camera_info')}
    assert f.info_stamps <= info and not info & f.bad_stamps, f'[seed {SEED}] depth/camera_info'
    log = g.log_path.read_text()
    assert 'Traceback' not in log, log[-3000:]
    print(f'{transport}: {f.sent}, {f.resends} resent; node: frames in {v["frames_in"]} / out {v["frames_out"]} / '
          f'bad {v["bad_frames"]}, masks in {v["masks_in"]} / bad {v["bad_masks"]} / resized {v["masks_resized"]}, '
          f'objects {v["objects_published"]} / unpaired {v["objects_unpaired"]}, camera_info in '
          f'{v["camera_info_in"]} / refused for {v["camera_info_errors"]} frames, stamp jumps {v["stamp_jumps_back"]}; '
          f'{time.monotonic() - t0:.1f} s')
