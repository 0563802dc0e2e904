"""Reading rosbag2 recordings (mcap or sqlite3) with `rosbags`, plus message → numpy helpers.

    with BagReader('run1/bag') as bag:          # a bag directory, or one .mcap / .db3 file
        bag.require(['/camera/image_raw'])      # BagError listing the bag's topics if one is missing
        for topic, t_ns, msg in bag.messages(['/camera/image_raw', '/camera/camera_info']):
            rgb = image_msg_rgb(msg)            # uint8 [H,W,3]

Messages are deserialised by a ROS 2 (Kilted) typestore extended with the message definitions
stored in the bag, so custom types work too. Every failure to open or read the bag (missing,
truncated, corrupt, unknown storage) raises BagError with one message naming the bag and the
problem. Helpers accept rosbags messages and rclpy messages alike (same field names).
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from dynadepth_ros import image_codec

TF_STATIC_TOPIC = '/tf_static'


class BagError(RuntimeError):
    """A bag that cannot be used as asked; the message names the bag and says what to do."""


class MessageDecodeError(BagError):
    """One message's bytes cannot be decoded (the rest of the bag may still be fine)."""


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().rstrip('.') or type(exc).__name__
    return f'{type(exc).__name__}: {text}' if type(exc).__name__ not in text else text


class BagReader:
    """A rosbag2 recording opened for reading (context manager).

    path: a rosbag2 directory (with metadata.yaml) or a single .mcap / .db3 file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._reader = None
        self._typestore = None

    # ---- opening -------------------------------------------------------------------------
    def open(self) -> 'BagReader':
        from rosbags.rosbag2 import Reader
        from rosbags.typesys import Stores, get_typestore

        if not self.path.exists():
            raise BagError(f'bag {self.path} does not exist; pass a rosbag2 directory or a .mcap/.db3 file')
        if self.path.is_dir() and not (self.path / 'metadata.yaml').exists():
            inner = sorted(p.name for p in self.path.iterdir())[:8]
            raise BagError(f'{self.path} is a directory without metadata.yaml, so it is not a rosbag2 bag '
                           f'(it holds {inner}); pass the bag directory itself or its .mcap/.db3 file')
        if self.path.is_file() and self.path.suffix not in ('.mcap', '.db3'):
            raise BagError(f'{self.path} is neither a rosbag2 directory nor a .mcap/.db3 file')
        try:
            reader = Reader(self.path)
            reader.open()
            connections = list(reader.connections)
        except Exception as exc:  # rosbags raises ReaderError, apsw/sqlite errors, OSError, KeyError...
            raise BagError(f'cannot open bag {self.path}: {_describe(exc)}. The bag is truncated, corrupt or '
                           f'not a rosbag2 recording; if the recorder was killed, re-index it '
                           f'(`ros2 bag reindex`) or record it again') from None
        self._reader = reader
        self._typestore = get_typestore(Stores.ROS2_KILTED)
        self._register_bag_types(connections)
        return self

    def _register_bag_types(self, connections) -> None:
        """Add message definitions stored in the bag for types the Kilted store does not know."""
        from rosbags.interfaces import MessageDefinitionFormat
        from rosbags.typesys import get_types_from_idl, get_types_from_msg

        types: dict = {}
        for c in connections:
            if c.msgtype in self._typestore.types or c.msgdef.format == MessageDefinitionFormat.NONE:
                continue
            try:
                if c.msgdef.format == MessageDefinitionFormat.MSG:
                    types.update(get_types_from_msg(c.msgdef.data, c.msgtype))
                else:
                    types.update(get_types_from_idl(c.msgdef.data))
            except Exception:  # an unparsable definition only matters if that topic is read
                continue
        if types:
            try:
                self._typestore.register(types)
            except Exception:
                pass

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None

    def __enter__(self) -> 'BagReader':
        return self.open()

    def __exit__(self, *_exc) -> None:
        self.close()

    # ---- description ---------------------------------------------------------------------
    def _open_reader(self):
        if self._reader is None:
            raise BagError(f'bag {self.path} is not open; use `with BagReader(path) as bag:`')
        return self._reader

    @property
    def topics(self) -> dict[str, tuple[str, int]]:
        """{topic: (message type like 'sensor_msgs/msg/Image', message count)}, sorted by topic."""
        reader = self._open_reader()
        return {name: (info.msgtype or 'mixed', int(info.msgcount)) for name, info in sorted(reader.topics.items())}

    @property
    def start_ns(self) -> int:
        return int(self._open_reader().start_time)

    @property
    def end_ns(self) -> int:
        return int(self._open_reader().end_time)

    @property
    def message_count(self) -> int:
        return int(self._open_reader().message_count)

    def transient_local_topics(self) -> set[str]:
        """Topics recorded from a transient-local (latched) publisher, e.g. /tf_static."""
        out = set()
        for c in self._open_reader().connections:
            for q in getattr(c.ext, 'offered_qos_profiles', None) or []:
                if getattr(getattr(q, 'durability', None), 'name', '') == 'TRANSIENT_LOCAL':
                    out.add(c.topic)
        return out

    def topics_text(self) -> str:
        """The bag's topics, one per line: '  /topic  type  (N msgs)'."""
        rows = [f'  {t}  {ty}  ({n} msgs)' for t, (ty, n) in self.topics.items()]
        return '\n'.join(rows) if rows else '  (the bag has no topics)'

    def require(self, topics: Iterable[str]) -> None:
        """Raise BagError naming the missing topics and listing the topics the bag has."""
        have = self.topics
        missing = [t for t in topics if t and t not in have]
        if missing:
            raise BagError(f'bag {self.path} has no topic {", ".join(missing)}; it has:\n{self.topics_text()}\n'
                           f'choose the topics with the command-line options (see --help)')

    # ---- reading -------------------------------------------------------------------------
    def _connections(self, topics: Iterable[str] | None):
        reader = self._open_reader()
        if topics is None:
            return list(reader.connections)
        wanted = set(topics)
        self.require(sorted(wanted))
        return [c for c in reader.connections if c.topic in wanted]

    def raw_messages(self, topics: Iterable[str] | None = None, start_ns: int | None = None,
                     stop_ns: int | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        """Yield (topic, msgtype, t_ns receive time, CDR bytes) in bag time order."""
        conns = self._connections(topics)
        if not conns:
            return
        it = self._reader.messages(connections=conns, start=start_ns, stop=stop_ns)
        while True:
            try:
                conn, t_ns, raw = next(it)
            except StopIteration:
                return
            except Exception as exc:
                raise BagError(f'bag {self.path} is damaged: reading stopped with {_describe(exc)}; the messages '
                               f'before this point were read. Re-index or re-record the bag') from None
            yield conn.topic, conn.msgtype, int(t_ns), bytes(raw)

    def messages(self, topics: Iterable[str] | None = None, start_ns: int | None = None,
                 stop_ns: int | None = None) -> Iterator[tuple[str, int, object]]:
        """Yield (topic, t_ns receive time, deserialised rosbags message) in bag time order."""
        for topic, msgtype, t_ns, raw in self.raw_messages(topics, start_ns, stop_ns):
            yield topic, t_ns, self.deserialize(raw, msgtype, topic)

    def deserialize(self, raw: bytes, msgtype: str, topic: str = '?') -> object:
        """A rosbags message from CDR bytes; MessageDecodeError if the type is unknown or the bytes are corrupt."""
        try:
            return self._typestore.deserialize_cdr(raw, msgtype)
        except Exception as exc:
            raise MessageDecodeError(f'bag {self.path}: a {msgtype} message on {topic} cannot be decoded '
                           f'({_describe(exc)}); the bag is corrupt or uses an unknown message definition') from None

    def static_transforms(self, topic: str = TF_STATIC_TOPIC) -> dict[tuple[str, str], np.ndarray]:
        """{(parent, child): float64 [4,4] T_parent_child} from every tf2_msgs/TFMessage on `topic`.

        T_parent_child maps points in the child frame into the parent frame. Empty if the bag has
        no such topic. Frame ids lose a leading '/'.
        """
        topics = self.topics
        if topic not in topics:
            return {}
        if topics[topic][0] != 'tf2_msgs/msg/TFMessage':
            raise BagError(f'bag {self.path}: {topic} holds {topics[topic][0]}, not tf2_msgs/msg/TFMessage; '
                           f'pass the static transform topic (usually /tf_static)')
        out: dict[tuple[str, str], np.ndarray] = {}
        for _t, _ns, msg in self.messages([topic]):
            for tf in msg.transforms:
                parent = tf.header.frame_id.lstrip('/')
                child = tf.child_frame_id.lstrip('/')
                out[(parent, child)] = transform_matrix(tf.transform.translation, tf.transform.rotation)
        return out


# ---- geometry and message helpers ----------------------------------------------------------
def quaternion_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """float64 [3,3] rotation of a (normalised here) quaternion (x, y, z, w)."""
    q = np.array([x, y, z, w], dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f'quaternion {tuple(q)} has zero or non-finite length')
    x, y, z, w = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def transform_matrix(translation, rotation) -> np.ndarray:
    """float64 [4,4] from geometry_msgs Vector3/Point `translation` and Quaternion `rotation`."""
    T = np.eye(4)
    T[:3, :3] = quaternion_matrix(rotation.x, rotation.y, rotation.z, rotation.w)
    T[:3, 3] = (translation.x, translation.y, translation.z)
    return T


def cdr_header_stamp_ns(raw: bytes) -> int:
    """header.stamp (ns) of a serialised message whose first field is std_msgs/Header, without decoding it.

    CDR: 4-byte encapsulation (byte 1: 1 = little endian, 0 = big endian), then int32 sec, uint32 nanosec.
    Raises ValueError for data too short or with an unknown encapsulation.
    """
    if len(raw) < 12:
        raise ValueError(f'message of {len(raw)} bytes is too short to hold a header')
    if raw[0] != 0 or raw[1] not in (0, 1):
        raise ValueError(f'unknown CDR encapsulation {raw[0]:#04x}{raw[1]:02x}')
    sec, nsec = struct.unpack_from('<iI' if raw[1] == 1 else '>iI', raw, 4)
    return sec * 1_000_000_000 + nsec


def stamp_ns(msg) -> int:
    """header.stamp of a message as integer nanoseconds."""
    st = msg.header.stamp
    return int(st.sec) * 1_000_000_000 + int(st.nanosec)


def stamp_s(msg) -> float:
    """header.stamp of a message in seconds (float)."""
    return stamp_ns(msg) * 1e-9


def camera_info_K(msg) -> np.ndarray:
    """float64 [3,3] K of a sensor_msgs/CameraInfo; ValueError if it is not a calibrated pinhole."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if K.size != 9:
        raise ValueError(f'camera_info K has {K.size} numbers, expected 9')
    K = K.reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f'camera_info has fx={K[0, 0]:g}, fy={K[1, 1]:g}; is the camera calibrated?')
    return K


def camera_info_size(msg) -> tuple[int, int]:
    """(height, width) of a CameraInfo's image; ValueError if unset."""
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise ValueError(f'camera_info has image size {w}x{h}; is the camera calibrated?')
    return h, w


def odometry_pose(msg) -> np.ndarray:
    """float64 [4,4] T_frame_child (e.g. T_odom_base_link) of a nav_msgs/Odometry."""
    p = msg.pose.pose
    return transform_matrix(p.position, p.orientation)


def is_compressed(msg) -> bool:
    """True for a sensor_msgs/CompressedImage (has `format`, no `encoding`)."""
    return hasattr(msg, 'format') and not hasattr(msg, 'encoding')


def image_msg_rgb(msg) -> np.ndarray:
    """uint8 [H,W,3] RGB from an Image (rgb8/bgr8/rgba8/bgra8/mono8) or CompressedImage (jpeg/png).

    Raises image_codec.ImageFormatError for encodings that cannot be used.
    """
    if is_compressed(msg):
        return image_codec.decode_compressed(msg.format, msg.data)
    return image_codec.to_rgb8(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


def image_msg_labels(msg) -> np.ndarray:
    """int32 [H,W] instance ids (0 = background) from a label Image (mono8/mono16/16UC1/32SC1)."""
    if is_compressed(msg):
        raise image_codec.ImageFormatError('instance masks must be raw sensor_msgs/Image, not CompressedImage')
    return image_codec.to_labels(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


def image_msg_depth(msg) -> np.ndarray:
    """float32 [H,W] metres, NaN invalid, from a REP 118 depth Image (32FC1 m or 16UC1 mm)."""
    if is_compressed(msg):
        raise image_codec.ImageFormatError('depth must be a raw sensor_msgs/Image (32FC1 or 16UC1), '
                                           'not CompressedImage')
    return image_codec.to_depth_m(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
