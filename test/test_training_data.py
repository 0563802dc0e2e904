"""Training data: triplet samples, consistent augmentation (the flip the reference got wrong),
data config/preparation, and rosbag recordings imported as training data."""
from __future__ import annotations

import json
import logging
import shutil

import cv2
import numpy as np
import pytest
import torch
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from bag_builders import camera_info_msg, image_msg, tf_message
from memory_frames import MemorySequence, MemorySource
from dynadepth_ros.camera import project
from dynadepth_ros.datasets import DatasetError, open_source
from dynadepth_ros.datasets.layout import Calib, Frame, Instance, SequenceWriter
from dynadepth_ros.recording.bag_reader import BagError
from training.data import AugmentConfig, DataConfig, SyntheticConfig, TripletDataset, build_dataset, prepare_data
from training.data.augment import ColourJitter, jitter_colour
from training.data.prepare import MARKER
from training.data.rosbag_import import RosbagImportError, import_bags

NO_AUG = AugmentConfig(flip_prob=0.0, colour_prob=0.0)
FLIP = AugmentConfig(flip_prob=1.0, colour_prob=0.0)


# A 32x48 frame with a red object in the upper-left quadrant (rows 4..11, cols 6..15), id 5, 7 m away,
# on a textured background 20 m away; off-centre principal point so a wrong cx flip shows.
NH, NW = 32, 48
K_NATIVE = np.array([[40.0, 0, 18.0], [0, 40.0, 14.0], [0, 0, 1]])


def _object_frame(seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(60, 200, (NH, NW, 3), dtype=np.uint8)
    rgb[4:12, 6:16] = (255, 0, 0)
    mask = np.zeros((NH, NW), np.int32)
    mask[4:12, 6:16] = 5
    depth = np.full((NH, NW), 20.0, np.float32)
    depth[mask == 5] = 7.0
    return rgb, mask, depth


def _object_source():
    frames = [_object_frame(s) for s in range(3)]
    return MemorySource([MemorySequence('obj', [f[0] for f in frames], K_NATIVE, masks=[f[1] for f in frames],
                                        depths=[f[2] for f in frames], moving={5})])


def _red(frames_t):
    """bool [H,W]: pure-red pixels of a float [3,H,W] frame."""
    r, g, b = frames_t
    return (r > 0.9) & (g < 0.1) & (b < 0.1)


@pytest.mark.parametrize('native', [True, False], ids=['native-size', 'resized'])
def test_flip_keeps_image_mask_depth_and_intrinsics_aligned(native):
    h, w = (NH, NW) if native else (NH // 2, NW // 2)
    plain = TripletDataset(_object_source(), h, w, augment=NO_AUG)[0]
    flipped = TripletDataset(_object_source(), h, w, augment=FLIP)[0]
    for s in (plain, flipped):
        obj = s['mask'].numpy() == 5
        assert obj.sum() == (8 * 10 if native else 4 * 5)
        for k in range(3):  # the object pixels are red in every frame, image and mask agree exactly
            assert np.array_equal(_red(s['frames_raw'][k].numpy()), obj)
            assert np.array_equal(_red(s['frames'][k].numpy()), obj)
        assert np.array_equal(s['moving'].numpy(), obj)
        gt = s['gt_depth'][0].numpy()
        assert np.all(gt[obj] == 7.0) and np.all(gt[~obj] == 20.0)
    obj_plain, obj_flip = plain['mask'].numpy() == 5, flipped['mask'].numpy() == 5
    # flipped along the width: upper-left object → upper-right, rows unchanged (the reference flipped rows)
    assert np.array_equal(obj_flip, obj_plain[:, ::-1])
    assert obj_flip[:h // 2].any() and not obj_flip[:, :w // 2].any()
    # a 3-D point seen at pixel (u, v) of the plain sample, mirrored in x, projects with the flipped K onto
    # pixel (W-1-u, v), which is an object pixel of the flipped sample
    K0, K1 = plain['K'].double().numpy(), flipped['K'].double().numpy()
    u, v, Z = (3.0, 2.0, 7.0) if not native else (7.0, 5.0, 7.0)
    assert obj_plain[int(v), int(u)]
    P = np.array([(u - K0[0, 2]) / K0[0, 0] * Z, (v - K0[1, 2]) / K0[1, 1] * Z, Z])
    uv, _ = project(np.array([-P[0], P[1], P[2]]), K1)
    np.testing.assert_allclose(uv, [w - 1 - u, v], atol=1e-4)
    assert obj_flip[int(round(uv[1])), int(round(uv[0]))]
    np.testing.assert_allclose(flipped['inv_K'].numpy() @ flipped['K'].numpy(), np.eye(3), atol=1e-5)


def test_sample_format_resize_and_intrinsics():
    s = TripletDataset(_object_source(), 16, 24, augment=None)[0]
    assert s['frames'].shape == (3, 3, 16, 24) and s['frames'].dtype == torch.float32
    assert s['frames_raw'].shape == (3, 3, 16, 24)
    assert torch.equal(s['frames'], s['frames_raw'])  # no augmentation
    assert 0.0 <= float(s['frames'].min()) and float(s['frames'].max()) <= 1.0
    assert s['K'].dtype == torch.float32 and s['inv_K'].shape == (3, 3)
    np.testing.assert_allclose(s['K'].numpy(), [[20, 0, 9], [0, 20, 7], [0, 0, 1]])  # scale_intrinsics(0.5, 0.5)
    assert s['mask'].dtype == torch.int64 and s['mask'].shape == (16, 24)
    assert s['gt_depth'].shape == (1, 16, 24) and s['moving'].dtype == torch.bool
    assert torch.isnan(s['odom_distance']).all() and s['odom_distance'].shape == (2,)  # no poses
    assert int(s['index']) == 0 and int(s['sequence_index']) == 0 and int(s['frame_index']) == 1
    batch = next(iter(torch.utils.data.DataLoader(TripletDataset(_object_source(), 16, 24), batch_size=1)))
    assert batch['frames'].shape == (1, 3, 3, 16, 24) and batch['gt_depth'].shape == (1, 1, 16, 24)


def _sequence(name, n, step_m=1.5, unknown_pose_at=(), seed=0):
    rng = np.random.default_rng(seed)
    poses = []
    for i in range(n):
        T = np.eye(4)
        T[2, 3] = step_m * i
        poses.append(None if i in unknown_pose_at else T)
    return MemorySequence(name, [rng.integers(0, 256, (8, 12, 3), dtype=np.uint8) for _ in range(n)],
                          np.array([[10.0, 0, 6], [0, 10.0, 4], [0, 0, 1]]), poses=poses)


def test_triplets_stay_inside_sequences_and_measure_odometry():
    src = MemorySource([_sequence('a', 5), _sequence('b', 4, step_m=0.5, unknown_pose_at=(3,))])
    ds = TripletDataset(src, 8, 12, frame_gap=1)
    assert [ds.sample_location(i) for i in range(len(ds))] == [('a', 1), ('a', 2), ('a', 3), ('b', 1), ('b', 2)]
    np.testing.assert_allclose(ds[0]['odom_distance'].numpy(), [1.5, 1.5])
    np.testing.assert_allclose(ds[3]['odom_distance'].numpy(), [0.5, 0.5])
    d = ds[4]['odom_distance'].numpy()  # frame 3 of b has no pose
    assert d[0] == pytest.approx(0.5) and np.isnan(d[1])
    ds2 = TripletDataset(src, 8, 12, frame_gap=2)
    assert [ds2.sample_location(i) for i in range(len(ds2))] == [('a', 2)]
    np.testing.assert_allclose(ds2[0]['odom_distance'].numpy(), [3.0, 3.0])
    with pytest.raises(ValueError, match='no triplets'):
        TripletDataset(MemorySource([_sequence('c', 4)]), 8, 12, frame_gap=2)


def test_augmentation_is_deterministic_per_seed_epoch_index():
    src = MemorySource([_sequence('a', 12, seed=3)])
    aug = AugmentConfig()
    a, b = TripletDataset(src, 8, 12, augment=aug, seed=7), TripletDataset(src, 8, 12, augment=aug, seed=7)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    params = [a.augment_params(i) for i in range(len(a))]
    assert any(p.flip for p in params) and not all(p.flip for p in params)
    assert any(p.colour for p in params) and not all(p.colour for p in params)
    a.set_epoch(1)
    assert [a.augment_params(i) for i in range(len(a))] != params
    c = TripletDataset(src, 8, 12, augment=aug, seed=8)
    assert [c.augment_params(i) for i in range(len(c))] != params


def test_colour_jitter_is_shared_across_the_triplet_and_input_only():
    rng = np.random.default_rng(0)
    x, y = (rng.integers(30, 220, (8, 12, 3), dtype=np.uint8) for _ in range(2))
    # frames t-1 and t+1 identical: with one shared jitter their augmented versions stay identical
    src = MemorySource([MemorySequence('s', [x, y, x], np.array([[10.0, 0, 6], [0, 10.0, 4], [0, 0, 1]]))])
    ds = TripletDataset(src, 8, 12, augment=AugmentConfig(flip_prob=0.0, colour_prob=1.0, hue=0.1))
    s = ds[0]
    assert torch.equal(s['frames'][0], s['frames'][2])
    assert not torch.equal(s['frames'][0], s['frames_raw'][0])
    np.testing.assert_allclose(s['frames_raw'][0].numpy(), x.transpose(2, 0, 1) / 255.0, atol=1e-6)
    # brightness only: every frame scaled by the same factor
    ds = TripletDataset(src, 8, 12, augment=AugmentConfig(flip_prob=0.0, colour_prob=1.0, contrast=0.0,
                                                          saturation=0.0, hue=0.0))
    s = ds[0]
    ok = s['frames'] < 0.999
    ratios = (s['frames'][ok] / s['frames_raw'][ok]).numpy()
    assert ratios.std() < 1e-5 and abs(ratios.mean() - 1) > 1e-4


def test_hue_shift_turns_red_into_green():
    red = np.zeros((1, 2, 2, 3), np.float32)
    red[..., 0] = 1.0
    out = jitter_colour(red, ColourJitter(1.0, 1.0, 1.0, 1.0 / 3.0, (3, 0, 1, 2)))
    np.testing.assert_allclose(out[0, 0, 0], [0, 1, 0], atol=1e-5)


# ---- config, preparation, build -------------------------------------------------------------


def _write_layout_split(root, split, n_seq=2, n=5, h=12, w=16):
    K = np.array([[10.0, 0, 7.5], [0, 10.0, 5.5], [0, 0, 1]])
    rng = np.random.default_rng(1)
    for s in range(n_seq):
        with SequenceWriter(root, split, f'seq_{s:03d}', Calib(K=K, height=h, width=w)) as wr:
            for i in range(n):
                pose = np.eye(4)
                pose[2, 3] = 0.8 * i
                mask = np.zeros((h, w), np.uint16)
                mask[3:6, 2:5] = 4
                wr.write(Frame(i, rng.integers(0, 256, (h, w, 3), dtype=np.uint8), np.full((h, w), 9.0, np.float32),
                               mask, [Instance(4, 'car', True, [0, 0, 3.0])], pose))


def test_build_dataset_on_a_layout_folder(tmp_path):
    _write_layout_split(tmp_path, 'train')
    _write_layout_split(tmp_path, 'val', n_seq=1)
    cfg = DataConfig(root=str(tmp_path), height=6, width=8, val_split='val', test_split=None,
                     synthetic=SyntheticConfig(sequences={'train': 2, 'val': 1}, frames=5))
    ds = build_dataset(cfg, 'train', augment=True, seed=1)
    assert len(ds) == 2 * 3 and ds.augment == cfg.augment
    s = ds[0]
    assert s['frames'].shape == (3, 3, 6, 8)
    np.testing.assert_allclose(s['odom_distance'].numpy(), [0.8, 0.8], rtol=1e-6)
    assert s['moving'].any() and torch.equal(s['moving'], s['mask'] == 4)
    assert build_dataset(cfg, 'val', augment=False).augment is None
    with pytest.raises(ValueError, match='test_split is not set'):
        build_dataset(cfg, 'test', augment=False)


def test_prepare_data_refuses_data_generated_with_other_parameters(tmp_path):
    _write_layout_split(tmp_path, 'train')
    cfg = DataConfig(root=str(tmp_path), synthetic=SyntheticConfig(sequences={'train': 2}, frames=5))
    (tmp_path / 'train' / MARKER).write_text(json.dumps({'split': 'train', 'sequences': 2, 'frames': 99, 'height': 12,
                                                         'width': 16, 'seed': 0, 'noise': None,
                                                         'lead_car_fraction': None, 'complete': True}))
    with pytest.raises(DatasetError, match='other parameters'):
        prepare_data(cfg)


def test_data_config_from_yaml_dict_and_validation():
    from training.config import ConfigError, from_dict
    cfg = from_dict(DataConfig, {'source': 'rosbag', 'root': 'data/robot', 'height': 64, 'width': 192,
                                 'rosbag': {'bags': {'train': ['a/bag']}, 'odom_topic': '/odom'},
                                 'augment': {'hue': 0.05}})
    assert cfg.rosbag.bags == {'train': ['a/bag']} and cfg.augment.hue == 0.05 and cfg.augment.flip_prob == 0.5
    with pytest.raises(ConfigError, match='flip_prob'):
        from_dict(DataConfig, {'augment': {'flip_prob': 1.5}})
    with pytest.raises(ConfigError, match='frame_gap must be 1 for cityscapes'):
        from_dict(DataConfig, {'source': 'cityscapes', 'frame_gap': 2})
    with pytest.raises(ConfigError, match='unknown key'):
        from_dict(DataConfig, {'sources': 'kitti'})


def test_prepare_data_generates_synthetic_data_once(tmp_path):
    synth = pytest.importorskip('dynadepth_ros.synth')
    if not hasattr(synth, 'generate_split'):
        pytest.skip('dynadepth_ros.synth.generate_split is not available yet')
    cfg = DataConfig(root=str(tmp_path / 'syn'), height=32, width=96, val_split=None, test_split=None,
                     synthetic=SyntheticConfig(sequences={'train': 1}, frames=4, gen_height=48, gen_width=144, seed=5))
    root = prepare_data(cfg)
    seq_dirs = [p for p in (root / 'train').iterdir() if p.is_dir() and not p.name.startswith('.')]
    assert len(seq_dirs) == 1
    assert json.loads((root / 'train' / MARKER).read_text())['complete'] is True
    stamp = (seq_dirs[0] / 'calib.json').stat().st_mtime_ns
    ds = build_dataset(cfg, 'train', augment=True)  # prepares again: must not regenerate
    assert (seq_dirs[0] / 'calib.json').stat().st_mtime_ns == stamp
    s = ds[0]
    assert s['frames'].shape == (3, 3, 32, 96)
    assert torch.isfinite(s['odom_distance']).all() and float(s['odom_distance'][0]) > 0.1
    assert float(s['gt_depth'].max()) > 0


# ---- rosbag import -------------------------------------------------------------------------
BH, BW = 24, 40
T0 = 1_700_000_000 * 10**9
K_BAG = np.array([[30.0, 0, 19.5], [0, 30.0, 11.5], [0, 0, 1]])
# base_link (x forward, y left, z up) → camera_optical (z forward, x right, y down), 1.2 m up, 1.5 m ahead
T_BASE_CAM = np.array([[0, 0, 1, 1.5], [-1, 0, 0, 0.0], [0, -1, 0, 1.2], [0, 0, 0, 1]], dtype=np.float64)


def _frame_rgb(i):
    rng = np.random.default_rng(50 + i)
    return rng.integers(0, 256, (BH, BW, 3), dtype=np.uint8)


def _frame_mask(i):
    m = np.zeros((BH, BW), np.uint16)
    m[5:12, 3 + 2 * i:10 + 2 * i] = 1000 + i
    return m


def _header(T, t_ns, frame):
    return T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=t_ns // 10**9, nanosec=t_ns % 10**9),
                                    frame_id=frame)


def _write_robot_bag(path, frames=12, drop=(7,), storage='mcap', compressed=False, odom=True, tf=True, mask=True,
                     fx=30.0):
    ts = get_typestore(Stores.ROS2_KILTED)
    T = ts.types
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        img_type = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
        c_img = w.add_connection('/cam/image', img_type, typestore=ts)
        c_info = w.add_connection('/cam/info', 'sensor_msgs/msg/CameraInfo', typestore=ts)
        c_mask = w.add_connection('/cam/mask', 'sensor_msgs/msg/Image', typestore=ts) if mask else None
        c_odom = w.add_connection('/odom', 'nav_msgs/msg/Odometry', typestore=ts) if odom else None
        if tf:
            c_tf = w.add_connection('/tf_static', 'tf2_msgs/msg/TFMessage', typestore=ts)
            w.write(c_tf, T0, ts.serialize_cdr(tf_message(T, T0, {('base_link', 'cam_optical'): T_BASE_CAM}),
                                               'tf2_msgs/msg/TFMessage'))

        def put(c, t, msg):
            w.write(c, t, ts.serialize_cdr(msg, c.msgtype))

        if odom:  # 20 Hz, offset 25 ms from the frames, base moving along world x at 10 m/s (1 m per frame)
            for k in range(2 * frames + 2):
                t = T0 - 25_000_000 + k * 50_000_000
                x = 10.0 * (t - T0) * 1e-9
                hdr = _header(T, t, 'odom')
                pose = T['geometry_msgs/msg/Pose'](position=T['geometry_msgs/msg/Point'](x=x, y=0.0, z=0.0),
                                                   orientation=T['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=0.0,
                                                                                                 w=1.0))
                twist = T['geometry_msgs/msg/Twist'](linear=T['geometry_msgs/msg/Vector3'](x=10.0, y=0.0, z=0.0),
                                                     angular=T['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0))
                put(c_odom, t, T['nav_msgs/msg/Odometry'](
                    header=hdr, child_frame_id='base_link',
                    pose=T['geometry_msgs/msg/PoseWithCovariance'](pose=pose, covariance=np.zeros(36)),
                    twist=T['geometry_msgs/msg/TwistWithCovariance'](twist=twist, covariance=np.zeros(36))))
        for i in range(frames):
            t = T0 + i * 100_000_000
            info = camera_info_msg(T, t, np.array([[fx, 0, 19.5], [0, 30.0, 11.5], [0, 0, 1]]), BH, BW)
            info.header.frame_id = 'cam_optical'
            put(c_info, t, info)
            if i in drop:
                continue
            if compressed:
                ok, png = cv2.imencode('.png', cv2.cvtColor(_frame_rgb(i), cv2.COLOR_RGB2BGR))
                hdr = _header(T, t, 'cam_optical')
                put(c_img, t + 1000,
                    T['sensor_msgs/msg/CompressedImage'](header=hdr, format='png', data=png.reshape(-1)))
            else:
                put(c_img, t + 1000, image_msg(T, t, _frame_rgb(i)[..., ::-1].copy(), 'bgr8', frame='cam_optical'))
            if c_mask:
                put(c_mask, t + 3_000_000, image_msg(T, t + 2_000_000, _frame_mask(i), '16UC1', frame='cam_optical'))
    return path


def test_import_bag_layout_poses_masks_and_gap_split(tmp_path, caplog):
    bag = _write_robot_bag(tmp_path / 'drive1')
    out = tmp_path / 'data'
    with caplog.at_level(logging.WARNING):
        seqs = import_bags([bag], out, '/cam/image', '/cam/info', mask_topic='/cam/mask', odom_topic='/odom',
                           progress=False)
    # the dropped frame 7 cuts the recording: frames 0-6 and 8-11
    assert [p.name for p in seqs] == ['drive1_00', 'drive1_01']
    assert 'cut the recording into 2 sequences' in caplog.text
    src = open_source('synthetic', out, 'train')
    a, b = src.sequences()
    assert (len(a), len(b)) == (7, 4)
    assert np.array_equal(a.rgb(3), _frame_rgb(3)) and np.array_equal(b.rgb(0), _frame_rgb(8))
    assert np.array_equal(b.instance_mask(1), _frame_mask(9).astype(np.int32))
    assert a.gt_depth(0) is None and a.moving_ids(0) is None
    np.testing.assert_allclose(a.K(0), K_BAG)
    assert b.stamp(0) == pytest.approx((T0 + 800_000_000) * 1e-9)
    assert a.calib.fps == pytest.approx(10.0)
    for seq, first in ((a, 0), (b, 8)):
        for j in range(len(seq)):
            expected = T_BASE_CAM.copy()
            expected[0, 3] += 1.0 * (first + j)  # odometry interpolated to the frame stamp
            np.testing.assert_allclose(seq.pose(j), expected, atol=1e-6)
    ds = TripletDataset(src, 12, 20)
    assert len(ds) == 5 + 2
    np.testing.assert_allclose(ds[0]['odom_distance'].numpy(), [1.0, 1.0], atol=1e-5)
    # cached: a second run reads nothing and returns the same sequences
    mtime = (seqs[0] / 'rgb' / '000000.png').stat().st_mtime_ns
    again = import_bags([bag], out, '/cam/image', '/cam/info', mask_topic='/cam/mask', odom_topic='/odom',
                        progress=False)
    assert again == seqs and (seqs[0] / 'rgb' / '000000.png').stat().st_mtime_ns == mtime
    # other options re-import and replace the old sequences
    # (every 2nd frame of each run: 0, 2, 4, 6 and 8, 10 — too short, dropped)
    third = import_bags([bag], out, '/cam/image', '/cam/info', odom_topic='/odom', every_nth=2, progress=False)
    names = sorted(p.name for p in (out / 'train').iterdir() if p.is_dir() and not p.name.startswith('.'))
    assert [p.name for p in third] == names == ['drive1']
    seq = open_source('synthetic', out, 'train').sequences()[0]
    assert len(seq) == 4 and np.array_equal(seq.rgb(3), _frame_rgb(6)) and seq.calib.fps == pytest.approx(5.0)


def test_import_compressed_sqlite_bag_without_odometry(tmp_path, caplog):
    bag = _write_robot_bag(tmp_path / 'run2', frames=6, drop=(), storage='sqlite3', compressed=True, odom=False,
                           tf=False, mask=False)
    with caplog.at_level(logging.WARNING):
        seqs = import_bags([bag], tmp_path / 'data', '/cam/image', '/cam/info', split='val', progress=False)
    assert 'cannot learn metric scale' in caplog.text
    seq = open_source('synthetic', tmp_path / 'data', 'val').sequences()[0]
    assert seq.name == 'run2' and len(seq) == 6 and seqs == [seq.path]
    assert np.array_equal(seq.rgb(5), _frame_rgb(5))  # png round trip is lossless
    assert seq.pose(0) is None and seq.instance_mask(0) is None
    sample = TripletDataset(open_source('synthetic', tmp_path / 'data', 'val'), 12, 20)[0]
    assert torch.isnan(sample['odom_distance']).all()


def test_import_without_tf_static_warns_and_uses_identity(tmp_path, caplog):
    bag = _write_robot_bag(tmp_path / 'run3', frames=4, drop=(), tf=False, mask=False)
    with caplog.at_level(logging.WARNING):
        import_bags([bag], tmp_path / 'data', '/cam/image', '/cam/info', odom_topic='/odom', progress=False)
    assert 'identity base_link→cam_optical extrinsic' in caplog.text
    seq = open_source('synthetic', tmp_path / 'data', 'train').sequences()[0]
    np.testing.assert_allclose(seq.pose(2)[:3, 3], [2.0, 0, 0], atol=1e-6)


def test_import_errors_name_the_problem(tmp_path):
    bag = _write_robot_bag(tmp_path / 'bad', frames=4, drop=(), fx=0.0)
    with pytest.raises(RosbagImportError, match='is the camera calibrated'):
        import_bags([bag], tmp_path / 'data', '/cam/image', '/cam/info', progress=False)
    with pytest.raises(BagError, match='/cam/image'):  # lists the topics the bag has
        import_bags([bag], tmp_path / 'data', '/camera/image_raw', '/cam/info', progress=False)
    with pytest.raises(RosbagImportError, match='carries sensor_msgs/msg/CameraInfo'):
        import_bags([bag], tmp_path / 'data', '/cam/info', '/cam/info', progress=False)
    assert not list((tmp_path / 'data' / 'train').glob('.*.partial'))


def test_import_synthetic_generator_bag(tmp_path):
    synth = pytest.importorskip('dynadepth_ros.synth')
    if not hasattr(synth, 'generate_split'):
        pytest.skip('dynadepth_ros.synth.generate_split is not available yet')
    [seq_dir] = synth.generate_split(tmp_path / 'gen', 'test', 1, 5, 48, 144, 3, bag=True, storage='mcap')
    out = tmp_path / 'imported'
    import_bags([seq_dir / 'bag'], out, '/camera/image_raw', '/camera/camera_info', mask_topic='/camera/instance_mask',
                odom_topic='/odom', depth_topic='/camera/depth_gt', split='test', progress=False)
    gen = open_source('synthetic', tmp_path / 'gen', 'test').sequences()[0]
    imp = open_source('synthetic', out, 'test').sequences()[0]
    assert imp.name == gen.name and len(imp) == len(gen)
    for i in range(len(gen)):
        assert np.array_equal(imp.rgb(i), gen.rgb(i))
        assert np.array_equal(imp.instance_mask(i), gen.instance_mask(i))
        np.testing.assert_allclose(imp.gt_depth(i), gen.gt_depth(i), atol=1e-5)
        np.testing.assert_allclose(imp.pose(i), gen.pose(i), atol=1e-4)
    np.testing.assert_allclose(imp.K(0), gen.K(0))
    shutil.rmtree(tmp_path / 'gen')


def test_pose_interpolation_slerps_rotation_and_refuses_extrapolation():
    from training.data.pose_interpolation import interpolate_poses

    def yaw(a, x):
        T = np.eye(4)
        T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
        T[0, 3] = x
        return T
    poses = np.stack([yaw(0.0, 0.0), yaw(np.pi / 2, 4.0)])
    mid, quarter, outside = interpolate_poses(np.array([10.0, 11.0]), poses, np.array([10.5, 10.25, 11.2]))
    np.testing.assert_allclose(mid, yaw(np.pi / 4, 2.0), atol=1e-9)
    np.testing.assert_allclose(quarter, yaw(np.pi / 8, 1.0), atol=1e-9)
    assert outside is None
    [edge] = interpolate_poses(np.array([10.0, 11.0]), poses, np.array([11.05]), tolerance_s=0.1)
    np.testing.assert_allclose(edge, poses[1])




def _yaw(deg):
    """[3,3] rotation about the camera's y axis (down), i.e. a turn in the ground plane."""
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def test_odometry_pose_is_reference_to_source_and_mirrors_with_flip():
    """Camera drives along +z 1.2 m per frame, drifting 0.3 m right (+x) and turning 2 degrees per frame.
    T_ref→src maps points of the reference camera into the source cameras; a flipped sample carries the
    mirrored motion (x drift and turn reversed), which is what explains the mirrored frames."""
    frames = [_object_frame(s) for s in range(3)]
    poses = []
    for i in range(3):
        T = np.eye(4)
        T[:3, :3] = _yaw(2.0 * i)
        T[:3, 3] = [0.3 * i, 0.0, 1.2 * i]
        poses.append(T)
    src = MemorySource([MemorySequence('drive', [f[0] for f in frames], K_NATIVE, poses=poses)])
    plain = TripletDataset(src, NH, NW, augment=NO_AUG)[0]
    expect = [np.linalg.inv(poses[0]) @ poses[1], np.linalg.inv(poses[2]) @ poses[1]]
    np.testing.assert_allclose(plain['odom_pose'].numpy(), expect, atol=1e-6)
    # a point 10 m ahead of the reference camera is farther (≈ 11.2 m) from the previous camera, 1.2 m behind
    p_prev = plain['odom_pose'][0].double().numpy() @ np.array([0, 0, 10.0, 1])
    assert 11.0 < p_prev[2] < 11.4
    flipped = TripletDataset(src, NH, NW, augment=FLIP)[0]
    M = np.diag([-1.0, 1, 1, 1])
    mirrored = []
    for i in range(3):
        T = np.eye(4)
        T[:3, :3] = _yaw(-2.0 * i)
        T[:3, 3] = [-0.3 * i, 0.0, 1.2 * i]
        mirrored.append(T)
    np.testing.assert_allclose(flipped['odom_pose'].numpy(), [np.linalg.inv(mirrored[0]) @ mirrored[1],
                                                              np.linalg.inv(mirrored[2]) @ mirrored[1]], atol=1e-6)
    np.testing.assert_allclose(flipped['odom_pose'][1].numpy(), M @ expect[1] @ M, atol=1e-6)
    np.testing.assert_allclose(plain['odom_distance'].numpy(), [np.hypot(0.3, 1.2)] * 2, atol=1e-6)
    unknown = TripletDataset(_object_source(), NH, NW, augment=NO_AUG)[0]
    assert unknown['odom_pose'].shape == (2, 4, 4) and torch.isnan(unknown['odom_pose']).all()
