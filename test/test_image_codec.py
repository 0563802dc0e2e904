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
    with pytest.raises(ic.ImageFormatError, match="'yuv422'"):
        ic.to_rgb8('yuv422', 2, 2, 4, b'\0' * 8)
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
