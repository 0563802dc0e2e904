"""Image payload decoding: every encoding the node accepts, padded rows, byte order, and bad input."""
import cv2
import numpy as np
import pytest

from dynadepth_ros import image_codec as ic


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize('encoding,make', [
    ('rgb8', lambda a: a),
    ('bgr8', lambda a: a[..., ::-1]),
    ('rgba8', lambda a: np.dstack([a, np.full(a.shape[:2], 9, np.uint8)])),
    ('bgra8', lambda a: np.dstack([a[..., ::-1], np.full(a.shape[:2], 9, np.uint8)])),
])
def test_colour_encodings_decode_to_the_same_rgb(rgb, encoding, make):
    h, w, step, data = ic.encode(make(rgb), encoding)
    np.testing.assert_array_equal(ic.to_rgb8(encoding, h, w, step, data), rgb)


def test_mono8_is_replicated_to_grey_rgb(rgb):
    grey = rgb[..., 0]
    h, w, step, data = ic.encode(grey, 'mono8')
    out = ic.to_rgb8('mono8', h, w, step, data)
    assert out.shape == (5, 7, 3) and (out == grey[..., None]).all()


def test_padded_rows_are_skipped(rgb):
    h, w, _, _ = ic.encode(rgb, 'rgb8')
    step = w * 3 + 5
    padded = np.zeros((h, step), np.uint8)
    padded[:, :w * 3] = rgb.reshape(h, -1)
    np.testing.assert_array_equal(ic.to_rgb8('rgb8', h, w, step, padded.tobytes()), rgb)


def test_big_endian_16bit_labels():
    labels = np.array([[0, 1, 300], [65535, 2, 0]], np.uint16)
    data = labels.astype('>u2').tobytes()
    out = ic.to_labels('16UC1', 2, 3, 6, data, is_bigendian=True)
    np.testing.assert_array_equal(out, labels.astype(np.int32))


def test_depth_16uc1_millimetres_to_metres_with_nan_for_zero():
    mm = np.array([[0, 1500], [2000, 65535]], np.uint16)
    h, w, step, data = ic.encode(mm, '16UC1')
    out = ic.to_depth_m('16UC1', h, w, step, data)
    assert np.isnan(out[0, 0]) and out[0, 1] == pytest.approx(1.5) and out[1, 1] == pytest.approx(65.535)


def test_truncated_data_names_the_sizes(rgb):
    h, w, step, data = ic.encode(rgb, 'rgb8')
    with pytest.raises(ic.ImageFormatError, match=r'needs 105 bytes.*has 100'):
        ic.to_rgb8('rgb8', h, w, step, data[:100])


def test_unsupported_encoding_is_named():
    with pytest.raises(ic.ImageFormatError, match="'nv21'.*not supported"):
        ic.to_rgb8('nv21', 2, 2, 4, b'\0' * 8)
    with pytest.raises(ic.ImageFormatError, match="'rgb8'.*not a label image"):
        ic.to_labels('rgb8', 2, 2, 6, b'\0' * 12)


def test_compressed_png_and_jpeg_decode_to_rgb(rgb):
    big = cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_NEAREST)
    ok, png = cv2.imencode('.png', cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(ic.decode_compressed('png', png.tobytes()), big)
    smooth = cv2.GaussianBlur(big, (9, 9), 3)
    ok, jpg = cv2.imencode('.jpg', cv2.cvtColor(smooth, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = ic.decode_compressed('rgb8; jpeg compressed bgr8', jpg.tobytes())
    assert np.abs(out.astype(int) - smooth).mean() < 3  # lossy, but RGB order and geometry preserved


def test_garbage_compressed_data_is_a_clear_error():
    with pytest.raises(ic.ImageFormatError, match='could not be decoded'):
        ic.decode_compressed('jpeg', b'not an image at all')


def _png_declaring(width, height):
    """A PNG whose IHDR declares width x height (8-bit RGB) with only a stub of image data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'\x00' * 64)) + chunk(b'IEND', b''))


def _jpeg_declaring(width, height):
    """A real small JPEG whose SOF header is rewritten to declare width x height (after an APP and a DQT segment)."""
    ok, jpg = cv2.imencode('.jpg', np.zeros((16, 24, 3), np.uint8))
    data = bytearray(jpg.tobytes())
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):     # walk the segments to the SOF
        i += 2 + int.from_bytes(data[i + 2:i + 4], 'big')
    assert int.from_bytes(data[i + 5:i + 7], 'big') == 16 and int.from_bytes(data[i + 7:i + 9], 'big') == 24
    data[i + 5:i + 7] = height.to_bytes(2, 'big')
    data[i + 7:i + 9] = width.to_bytes(2, 'big')
    return bytes(data)


def test_compressed_size_is_read_from_the_png_and_jpeg_headers():
    assert ic.compressed_image_size(_png_declaring(16000, 16000)) == (16000, 16000)
    assert ic.compressed_image_size(_jpeg_declaring(640, 480)) == (640, 480)
    ok, png = cv2.imencode('.png', np.zeros((5, 7, 3), np.uint8))
    assert ic.compressed_image_size(png.tobytes()) == (7, 5)
    for bad in (b'', b'\x89PNG\r\n\x1a\n\x00', b'\xff\xd8\xff\xe0\x00', b'GIF89a' + b'\x00' * 20):
        with pytest.raises(ic.ImageFormatError):
            ic.compressed_image_size(bad)


@pytest.mark.parametrize('kind', ['png', 'jpeg'])
def test_compressed_image_over_max_pixels_is_refused_before_decoding(kind):
    """A decompression bomb: a few hundred bytes declaring 16000x16000 (256 Mpx) is refused from its header."""
    bomb = _png_declaring(16000, 16000) if kind == 'png' else _jpeg_declaring(16000, 16000)
    assert len(bomb) < 2000
    with pytest.raises(ic.ImageFormatError, match=r'16000x16000.*max_image_pixels'):
        ic.decode_compressed(kind, bomb, max_pixels=4096 * 4096)
    ok, png = cv2.imencode('.png', np.zeros((48, 64, 3), np.uint8))
    assert ic.decode_compressed('png', png.tobytes(), max_pixels=48 * 64).shape == (48, 64, 3)
    with pytest.raises(ic.ImageFormatError, match='64x48'):
        ic.decode_compressed('png', png.tobytes(), max_pixels=48 * 64 - 1)
    with pytest.raises(ic.ImageFormatError, match='neither PNG nor JPEG'):
        ic.decode_compressed('bmp', cv2.imencode('.bmp', np.zeros((4, 4, 3), np.uint8))[1].tobytes(), max_pixels=100)


# ---------------------------------------------------------------------------- camera driver encodings
# Each message is built from a known RGB image by an encoder written here (numpy, not OpenCV), so a wrong OpenCV
# code, byte order or Bayer pattern in the node shows up as wrong colours.

def _rgb_to_ycbcr(rgb):
    """BT.601 limited range ("studio swing") YCbCr as float, the inverse of OpenCV's YUV 4:2:2 → RGB."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return y, cb, cr


def yuv422_rows(rgb, order, pad=0):
    """uint8 [H, W*2 + pad]: the rows of a YUV 4:2:2 image (`order` 'UYVY' or 'YUYV') of an RGB image with even
    width, chroma the mean of each horizontal pixel pair, each row followed by `pad` bytes of 0xEE."""
    h, w = rgb.shape[:2]
    y, cb, cr = _rgb_to_ycbcr(rgb)
    u = (cb[:, 0::2] + cb[:, 1::2]) / 2
    v = (cr[:, 0::2] + cr[:, 1::2]) / 2
    q = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)     # noqa: E731
    planes = {'Y0': q(y[:, 0::2]), 'Y1': q(y[:, 1::2]), 'U': q(u), 'V': q(v)}
    names = ['U', 'Y0', 'V', 'Y1'] if order == 'UYVY' else ['Y0', 'U', 'Y1', 'V']
    macro = np.stack([planes[n] for n in names], axis=-1).reshape(h, w * 2)
    rows = np.full((h, w * 2 + pad), 0xEE, np.uint8)
    rows[:, :w * 2] = macro
    return rows


def _yuv422_bytes(rgb, order, pad=0):
    """(step, data) of yuv422_rows."""
    rows = yuv422_rows(rgb, order, pad)
    return rows.shape[1], rows.tobytes()


def _pair_constant_rgb(h, w, seed=1):
    """Random RGB whose horizontal pixel pairs share one colour, so 4:2:2 chroma loses nothing."""
    rng = np.random.default_rng(seed)
    return np.repeat(rng.integers(0, 256, (h, w // 2, 3), dtype=np.uint8), 2, axis=1)


YUV_TOL = 3       # 8-bit rounding of Y, U and V (±0.5 each) times OpenCV's integer coefficients (≤ 2.02)


@pytest.mark.parametrize('encoding,order', [('yuv422', 'UYVY'), ('uyvy', 'UYVY'),
                                            ('yuv422_yuy2', 'YUYV'), ('yuyv', 'YUYV')])
def test_yuv422_colours_decode_to_rgb(encoding, order):
    rgb = _pair_constant_rgb(6, 10)
    step, data = _yuv422_bytes(rgb, order, pad=6)          # padded rows too
    out = ic.to_rgb8(encoding, 6, 10, step, data)
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).max() <= YUV_TOL


@pytest.mark.parametrize('encoding,order', [('yuv422', 'UYVY'), ('yuv422_yuy2', 'YUYV')])
def test_yuv422_luma_is_per_pixel(encoding, order):
    """Grey pixels that differ within a pair: luma has full horizontal resolution, chroma is 128."""
    grey = np.arange(0, 240, 4, dtype=np.uint8).reshape(6, 10)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    step, data = _yuv422_bytes(rgb, order)
    out = ic.to_rgb8(encoding, 6, 10, step, data)
    assert np.abs(out.astype(int) - rgb).max() <= 2


def test_yuv422_byte_orders_are_not_interchangeable():
    """UYVY read as YUYV (or the other way) is wrong: the test above would catch a swapped OpenCV code."""
    rgb = _pair_constant_rgb(4, 8, seed=2)
    step, data = _yuv422_bytes(rgb, 'UYVY')
    assert np.abs(ic.to_rgb8('yuv422_yuy2', 4, 8, step, data).astype(int) - rgb).max() > 50


@pytest.mark.parametrize('encoding', ['yuv422', 'yuv422_yuy2'])
def test_yuv422_odd_width_and_short_data_are_refused(encoding):
    with pytest.raises(ic.ImageFormatError, match='width 5 is odd'):
        ic.to_rgb8(encoding, 2, 5, 10, bytes(20))
    with pytest.raises(ic.ImageFormatError, match=r'step 7 < width\*2'):
        ic.to_rgb8(encoding, 2, 4, 7, bytes(16))
    with pytest.raises(ic.ImageFormatError, match='needs 16 bytes'):
        ic.to_rgb8(encoding, 2, 4, 8, bytes(15))


# ROS names the Bayer pattern by its top-left 2x2 block, row by row
BAYER = {'bayer_rggb8': 'RGGB', 'bayer_bggr8': 'BGGR', 'bayer_gbrg8': 'GBRG', 'bayer_grbg8': 'GRBG'}


def bayer_mosaic(rgb, pattern):
    """The single-channel image a sensor with colour filter `pattern` (top-left 2x2, row-major) records."""
    mosaic = np.empty(rgb.shape[:2], rgb.dtype)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, 'RGB'.index(colour)]
    return mosaic


def _gradient_rgb(h, w):
    """Channels that are different linear ramps (R along x, G along y, B along both): bilinear demosaicing
    recovers them exactly away from the border, and any channel mix-up is visible everywhere."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 20 + 200 * xx / (w - 1)
    g = 230 - 200 * yy / (h - 1)
    b = 60 + 60 * (xx / (w - 1) + yy / (h - 1))
    return np.rint(np.stack([r, g, b], axis=-1)).astype(np.uint8)


@pytest.mark.parametrize('encoding', list(BAYER))
def test_bayer_mosaics_decode_to_the_rgb_they_were_sampled_from(encoding):
    rgb = _gradient_rgb(12, 16)
    mosaic = bayer_mosaic(rgb, BAYER[encoding])
    step = 16 + 3                                                # padded rows
    rows = np.full((12, step), 0xEE, np.uint8)
    rows[:, :16] = mosaic
    out = ic.to_rgb8(encoding, 12, 16, step, rows.tobytes())
    assert out.shape == (12, 16, 3)
    inner = (slice(2, -2), slice(2, -2))                         # OpenCV extrapolates at the border
    assert np.abs(out[inner].astype(int) - rgb[inner]).max() <= 2
    assert np.abs(out.astype(int) - rgb).mean() < 4


@pytest.mark.parametrize('big_endian', [False, True], ids=['little_endian', 'big_endian'])
@pytest.mark.parametrize('encoding', list(BAYER))
def test_16bit_bayer_mosaics_decode_to_the_rgb_they_were_sampled_from_scaled_as_cv_bridge(encoding, big_endian):
    """bayer_*16 (machine-vision cameras): demosaiced in 16 bit, then 16 → 8 bit as cv_bridge scales."""
    rgb16 = _gradient_rgb(12, 16).astype(np.uint16) * 257 + 100       # 16-bit ramps whose low byte matters
    mosaic = bayer_mosaic(rgb16, BAYER[encoding]).astype('>u2' if big_endian else '<u2')
    step = 16 * 2 + 6                                                 # padded rows
    rows = np.full((12, step), 0xEE, np.uint8)
    rows[:, :32] = mosaic.view(np.uint8).reshape(12, 32)
    out = ic.to_rgb8(encoding.replace('8', '16'), 12, 16, step, rows.tobytes(), is_bigendian=big_endian)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    want = _cv_bridge_8bit(rgb16)
    inner = (slice(2, -2), slice(2, -2))                              # OpenCV extrapolates at the border
    assert np.abs(out[inner].astype(int) - want[inner]).max() <= 1
    # decoding the high bytes alone as bayer_*8 gives nearly the same picture (the pattern mapping is shared)
    high = ic.to_rgb8(encoding, 12, 16, 16, (bayer_mosaic(rgb16, BAYER[encoding]) >> 8).astype(np.uint8).tobytes())
    assert np.abs(out[inner].astype(int) - high[inner]).max() <= 2


@pytest.mark.parametrize('encoding', list(BAYER))
def test_bayer_pattern_of_a_flat_colour(encoding):
    """A uniform orange: every other pattern name reads it with red and blue (or green) swapped."""
    rgb = np.empty((8, 8, 3), np.uint8)
    rgb[...] = (200, 100, 30)
    out = ic.to_rgb8(encoding, 8, 8, 8, bayer_mosaic(rgb, BAYER[encoding]).tobytes())
    np.testing.assert_array_equal(out[2:-2, 2:-2], rgb[2:-2, 2:-2])
    for other, pattern in BAYER.items():
        if other != encoding:
            wrong = ic.to_rgb8(other, 8, 8, 8, bayer_mosaic(rgb, BAYER[encoding]).tobytes())
            assert not np.array_equal(wrong[2:-2, 2:-2], rgb[2:-2, 2:-2]), other


def test_bayer_truncated_data_is_refused():
    with pytest.raises(ic.ImageFormatError, match='needs 32 bytes'):
        ic.to_rgb8('bayer_rggb8', 4, 8, 8, bytes(31))


def _cv_bridge_8bit(v16):
    """cv_bridge's 16 → 8 bit: convertTo(CV_8U, 255/65535), i.e. v * 255 / 65535 rounded."""
    return np.rint(v16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


@pytest.mark.parametrize('encoding,channels', [('rgb16', 'RGB'), ('bgr16', 'BGR'), ('rgba16', 'RGBA'),
                                               ('bgra16', 'BGRA'), ('mono16', 'L')])
@pytest.mark.parametrize('bigendian', [False, True])
def test_16bit_colour_scales_to_8bit_like_cv_bridge(encoding, channels, bigendian):
    rng = np.random.default_rng(3)
    rgb16 = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    rgb16[0, :3] = [[0, 0, 0], [65535, 65535, 65535], [385, 386, 65400]]   # ends, and where >> 8 differs
    if channels == 'L':
        rgb16[..., 1] = rgb16[..., 2] = rgb16[..., 0]
    planes = {'R': rgb16[..., 0], 'G': rgb16[..., 1], 'B': rgb16[..., 2], 'A': np.full((5, 6), 1234, np.uint16),
              'L': rgb16[..., 0]}
    arr = np.stack([planes[c] for c in channels], axis=-1)
    row = arr.reshape(5, -1).astype('>u2' if bigendian else '<u2').view(np.uint8)
    step = row.shape[1] + 4                                      # padded rows
    rows = np.zeros((5, step), np.uint8)
    rows[:, :row.shape[1]] = row
    out = ic.to_rgb8(encoding, 5, 6, step, rows.tobytes(), is_bigendian=bigendian)
    np.testing.assert_array_equal(out, _cv_bridge_8bit(rgb16))
    # 385 → 1, 386 → 2 and 65400 → 254, where v >> 8 would give 1, 1 and 255
    assert tuple(out[0, 2]) == ((1, 1, 1) if channels == 'L' else (1, 2, 254))


def test_16bit_truncated_data_is_refused():
    with pytest.raises(ic.ImageFormatError, match='needs 24 bytes'):
        ic.to_rgb8('rgb16', 2, 2, 12, bytes(23))
