"""What a recording holds and which of its topics to train on.

`survey_bag(path)` lists a rosbag2's topics with their types and message counts and, for image topics, the
encoding (or compressed format) and frame of their first message, which says what an Image topic is:

    camera   rgb8 / bgr8 / rgba8 / bgra8 / mono8 Image, jpeg / png CompressedImage
    mask     instance ids: 16UC1 / mono16 / 32SC1 Image (or mono8 / 8UC1 named like a mask)
    depth    32FC1 Image, or a 16UC1 / mono16 one whose name says depth (REP 118 millimetres)

`choose_topics(surveys, **given)` picks the camera (with its camera_info: `<ns>/camera_info` beside
`<ns>/image...`, else the CameraInfo topic with the image's frame_id), odometry, instance masks, depth and lidar
topics when the recordings leave one choice, and otherwise raises RecordingError: one line naming the
candidates and the flag that chooses.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from dynadepth_ros.recording.bag_reader import BagError, BagReader
from training.recordings import RecordingError

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
ODOMETRY = 'nav_msgs/msg/Odometry'
POINTCLOUD = 'sensor_msgs/msg/PointCloud2'
TF_STATIC = '/tf_static'
COLOUR_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', '8uc3')
LABEL_ENCODINGS = ('16uc1', 'mono16', '32sc1', 'mono8', '8uc1')
MASK_WORDS = ('mask', 'instance', 'label', 'segment', 'panoptic')
FLAGS = {'image': '--image-topic', 'camera_info': '--camera-info-topic', 'odom': '--odom-topic',
         'mask': '--mask-topic', 'depth': '--depth-topic', 'lidar': '--lidar-topic'}


@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int
    encoding: str = ''     # Image encoding or CompressedImage format of the first message
    frame_id: str = ''
    size: tuple[int, int] | None = None   # (height, width) of a raw Image / CameraInfo

    @property
    def role(self) -> str:
        """camera | mask | depth | camera_info | odometry | lidar | other."""
        enc, name = self.encoding.lower(), self.name.lower()
        if self.msgtype == COMPRESSED:
            return 'depth' if 'compresseddepth' in name or 'depth' in enc else 'camera'
        if self.msgtype == IMAGE:
            masky = any(w in name for w in MASK_WORDS)
            if enc == '32fc1' or (enc in ('16uc1', 'mono16') and 'depth' in name):
                return 'depth'
            if enc in ('16uc1', 'mono16', '32sc1') or (enc in ('mono8', '8uc1') and masky):
                return 'mask'
            if enc in COLOUR_ENCODINGS:
                return 'camera'
            return 'other'
        return {CAMERA_INFO: 'camera_info', ODOMETRY: 'odometry', POINTCLOUD: 'lidar'}.get(self.msgtype, 'other')

    def describe(self) -> str:
        kind = self.msgtype.rsplit('/', 1)[-1]
        return f'{self.name} ({kind}{" " + self.encoding if self.encoding else ""}, {self.count} msgs)'


@dataclass
class BagSurvey:
    path: Path
    topics: dict[str, TopicInfo] = field(default_factory=dict)

    def of_role(self, role: str) -> list[TopicInfo]:
        return [t for t in self.topics.values() if t.role == role and t.count > 0]

    def listing(self) -> str:
        return ', '.join(f'{t.name} [{t.msgtype}]' for t in self.topics.values()) or 'no topics'


def survey_bag(path: str | Path) -> BagSurvey:
    """The topics of one rosbag2 (directory or .mcap/.db3), image topics with their first message's encoding."""
    path = Path(path)
    survey = BagSurvey(path)
    with BagReader(path) as reader:
        for name, (msgtype, count) in reader.topics.items():
            info = TopicInfo(name, msgtype, count)
            if msgtype in (IMAGE, COMPRESSED, CAMERA_INFO) and count > 0:
                try:
                    _, _, msg = next(reader.messages([name]))
                except StopIteration:
                    pass
                except BagError as exc:
                    raise RecordingError(f'{exc}') from None
                else:
                    info.frame_id = msg.header.frame_id.lstrip('/')
                    if msgtype == IMAGE:
                        info.encoding, info.size = str(msg.encoding), (int(msg.height), int(msg.width))
                    elif msgtype == COMPRESSED:
                        info.encoding = str(msg.format)
                    else:
                        info.size = (int(msg.height), int(msg.width))
            survey.topics[name] = info
    return survey


@dataclass
class TopicChoice:
    """The topics a run trains and evaluates on (None: the recordings have none)."""

    image: str
    camera_info: str
    compressed: bool
    odom: str | None = None
    mask: str | None = None
    depth: str | None = None
    lidar: str | None = None
    tf_static: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {'image': self.image, 'camera_info': self.camera_info, 'compressed': self.compressed,
                'odom': self.odom, 'mask': self.mask, 'depth': self.depth, 'lidar': self.lidar,
                'tf_static': self.tf_static}


def _namespace(topic: str) -> str:
    return posixpath.dirname(topic.rstrip('/'))


def camera_info_for(image: TopicInfo, infos: list[TopicInfo]) -> TopicInfo | None:
    """The CameraInfo topic of an image topic: `<ns>/camera_info` for an image under `<ns>/` (the deepest such
    namespace), else the only CameraInfo topic with the image's frame_id."""
    by_ns = [i for i in infos if image.name.startswith(_namespace(i.name).rstrip('/') + '/')]
    if by_ns:
        return max(by_ns, key=lambda i: len(_namespace(i.name)))
    same_frame = [i for i in infos if image.frame_id and i.frame_id == image.frame_id]
    return same_frame[0] if len(same_frame) == 1 else None


def _common(surveys: list[BagSurvey], role: str) -> list[TopicInfo]:
    """Topics of `role` present in every recording (described as in the first)."""
    first = surveys[0].of_role(role)
    return [t for t in first if all(t.name in s.topics and s.topics[t.name].count > 0 for s in surveys[1:])]


def _given(surveys: list[BagSurvey], topic: str, role: str, allowed: tuple[str, ...]) -> TopicInfo:
    """A topic named on the command line: in every recording and of an allowed type, else one line."""
    for s in surveys:
        if topic not in s.topics:
            raise RecordingError(f'{FLAGS[role]} {topic}: recording {s.path} has no such topic; it has '
                                 f'{s.listing()}')
        t = s.topics[topic]
        if t.msgtype not in allowed:
            raise RecordingError(f'{FLAGS[role]} {topic} carries {t.msgtype} in {s.path}; the {role} topic must be '
                                 f'{" or ".join(allowed)}: name the right topic with {FLAGS[role]}')
        if t.count == 0:
            raise RecordingError(f'{FLAGS[role]} {topic} has no messages in {s.path}; record it or leave it out')
    return surveys[0].topics[topic]


def _one(candidates: list[TopicInfo], role: str, what: str, none_flag: str | None = None) -> TopicInfo | None:
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    names = ', '.join(c.describe() for c in candidates)
    extra = f' (or {none_flag} to use none)' if none_flag else ''
    raise RecordingError(f'several {what} topics: {names}; choose one with {FLAGS[role]} TOPIC{extra}')


def choose_topics(surveys: list[BagSurvey], image: str | None = None, camera_info: str | None = None,
                  odom: str | None = None, mask: str | None = None, depth: str | None = None,
                  lidar: str | None = None, no_odom: bool = False, no_mask: bool = False) -> TopicChoice:
    """The topics to use across all recordings; RecordingError (one line) when a choice is missing or wrong."""
    if not surveys:
        raise RecordingError('no recordings given: pass rosbag2 directories or .mcap/.db3 files to --bags')
    # camera + camera_info
    infos = _common(surveys, 'camera_info')
    if image:
        cam = _given(surveys, image, 'image', (IMAGE, COMPRESSED))
        if cam.role != 'camera' and cam.msgtype == IMAGE:
            raise RecordingError(f'--image-topic {image} is a {cam.encoding} image ({cam.role}), not a camera '
                                 f'picture; the camera must be rgb8/bgr8/rgba8/bgra8/mono8 or a jpeg/png '
                                 f'CompressedImage')
        cameras = [cam]
    else:
        cameras = _common(surveys, 'camera')
        if not cameras:
            s = next((s for s in surveys if not s.of_role('camera')), surveys[0])
            raise RecordingError(f'no camera image topic in {s.path} (sensor_msgs/Image rgb8/bgr8/mono8 or '
                                 f'CompressedImage jpeg/png); it has {s.listing()}: record the camera, or name it '
                                 f'with --image-topic')
    if camera_info:
        info = _given(surveys, camera_info, 'camera_info', (CAMERA_INFO,))
        pairs = [(c, info) for c in cameras]
    else:
        pairs = [(c, camera_info_for(c, infos)) for c in cameras]
        paired = [(c, i) for c, i in pairs if i is not None]
        if not paired:
            names = ', '.join(c.name for c in cameras)
            have = ', '.join(i.name for i in infos) or 'none'
            raise RecordingError(f'no usable image / camera_info pairing: camera topic(s) {names} have no '
                                 f'sensor_msgs/CameraInfo beside them (<namespace>/camera_info) or with their '
                                 f'frame_id (CameraInfo topics: {have}); record the calibrated camera_info of the '
                                 f'camera, or name it with --camera-info-topic')
        pairs = paired
    if len(pairs) > 1:
        names = ', '.join(f'{c.describe()} with {i.name}' for c, i in pairs)
        raise RecordingError(f'several camera topics: {names}; choose one with --image-topic TOPIC')
    cam, info = pairs[0]
    choice = TopicChoice(image=cam.name, camera_info=info.name, compressed=cam.msgtype == COMPRESSED)

    # odometry
    if no_odom:
        choice.odom = None
    elif odom:
        choice.odom = _given(surveys, odom, 'odom', (ODOMETRY,)).name
    else:
        t = _one(_common(surveys, 'odometry'), 'odom', 'odometry (nav_msgs/Odometry)', '--no-odom')
        choice.odom = t.name if t else None
    if choice.odom is None:
        choice.notes.append('no odometry: depth will be relative (scale-ambiguous), not metres; the exported model '
                            'says dynadepth.metric=false and the node needs allow_relative_model:=true')
    # instance masks
    if no_mask:
        choice.mask = None
    elif mask:
        choice.mask = _given(surveys, mask, 'mask', (IMAGE,)).name
    else:
        t = _one(_common(surveys, 'mask'), 'mask', 'instance-mask', '--no-mask')
        choice.mask = t.name if t else None
    # ground truth for evaluation: a depth image, else a lidar point cloud
    if depth:
        choice.depth = _given(surveys, depth, 'depth', (IMAGE,)).name
    elif not lidar:
        t = _one([d for d in _common(surveys, 'depth') if d.msgtype == IMAGE], 'depth', 'depth image')
        choice.depth = t.name if t else None
    if lidar:
        choice.lidar = _given(surveys, lidar, 'lidar', (POINTCLOUD,)).name
    elif choice.depth is None:
        t = _one(_common(surveys, 'lidar'), 'lidar', 'lidar (PointCloud2)')
        choice.lidar = t.name if t else None
    choice.tf_static = all(TF_STATIC in s.topics for s in surveys)
    if choice.odom and not choice.tf_static:
        choice.notes.append('no /tf_static: the camera is assumed to sit at the odometry frame (identity '
                            'extrinsic); distances stay right, camera rotation may not')
    return choice
