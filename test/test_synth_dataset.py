"""The synthetic dataset on disk and in rosbag2: layout round trip, bag contents (mcap and sqlite3)
read back with rosbags, lidar/camera/tf consistency, determinism, seeds, lead-car rule, CLI."""
import errno
import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from dynadepth_ros.datasets.layout import Sequence, SequenceWriter, list_sequences
from dynadepth_ros.synth import generate_split, has_lead_car
from dynadepth_ros.synth.bag import START_NS, TOPICS
from dynadepth_ros.synth.cli import main as synth_main
from dynadepth_ros.synth.generate import sequence_seed_id
from dynadepth_ros.synth.rig import synth_intrinsics

rosbags = pytest.importorskip('rosbags')
from rosbags.rosbag2 import Reader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

H, W, FRAMES = 64, 208, 4
TS = get_typestore(Stores.ROS2_KILTED)


@pytest.fixture(scope='module')
def mcap_split(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth_mcap')
    paths = generate_split(root, 'test', sequences=2, frames=FRAMES, height=H, width=W, seed=7, bag=True,
                           storage='mcap', noise=0.01, workers=1, progress=False)
    return root, paths


@pytest.fixture(scope='module')
def sqlite_split(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth_sqlite')
    paths = generate_split(root, 'val', sequences=1, frames=FRAMES, height=H, width=W, seed=7, bag=True,
                           storage='sqlite3', noise=0.0, workers=1, progress=False)
    return root, paths


def _read_bag(path: Path) -> dict:
    """topic -> list of (bag timestamp, deserialized message)."""
    out = {}
    with Reader(path) as rd:
        for conn, t, raw in rd.messages():
            out.setdefault(conn.topic, []).append((t, TS.deserialize_cdr(raw, conn.msgtype)))
    return out


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def _T(transform) -> np.ndarray:
    """4x4 from geometry_msgs/Transform (or Pose fields)."""
    q = transform.rotation
    x, y, z, w = q.x, q.y, q.z, q.w
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = (transform.translation.x, transform.translation.y, transform.translation.z)
    return T


def test_folder_round_trip(mcap_split):
    root, paths = mcap_split
    seqs = list_sequences(root, 'test')
    assert [s.path for s in seqs] == paths and [s.name for s in seqs] == ['seq_0000', 'seq_0001']
    for seq in seqs:
        assert len(seq) == FRAMES
        look = json.loads((Path(seq.path) / 'synth.json').read_text())['look']
        np.testing.assert_allclose(seq.calib.K, synth_intrinsics(H, W, look['focal_scale']))
        assert (seq.calib.height, seq.calib.width, seq.calib.fps) == (H, W, 10.0)
        moving_seen = False
        for i in range(FRAMES):
            f = seq.frame(i)
            assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
            assert f.depth.shape == (H, W) and f.depth.dtype == np.float32
            assert f.mask.dtype == np.uint16
            assert (f.depth[f.mask > 0] > 0).all(), 'every instance pixel has a depth'
            assert (f.depth == 0).any() and (f.depth > 0).mean() > 0.5, 'sky is invalid, the rest is not'
            ids = set(np.unique(f.mask)) - {0}
            assert ids == {inst.id for inst in f.instances}, 'metadata lists exactly the visible instances'
            for inst in f.instances:
                assert inst.cls in ('car', 'pedestrian', 'cyclist')
                assert set(inst.box) == {'center_world', 'center_cam', 'size', 'yaw_world'}
                assert inst.moving == (math.hypot(*inst.velocity[:2]) > 0.05)
                moving_seen |= inst.moving
            R = f.pose[:3, :3]
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
            assert abs(f.pose[2, 3] - look['camera_height']) < 0.15, 'camera at its drawn height above the road'
        assert moving_seen, 'every sequence has moving objects'
        # instance ids are stable: an object keeps its id (and class) from frame to frame
        first = {i.id: i.cls for i in seq.instances(0)}
        last = {i.id: i.cls for i in seq.instances(FRAMES - 1)}
        common = set(first) & set(last)
        assert common and all(first[k] == last[k] for k in common)
        # ego speed between frames: 5-15 m/s at 10 Hz
        step = np.linalg.norm(np.diff(seq.poses[:, :3, 3], axis=0), axis=1) * 10.0
        assert ((step > 5.0) & (step < 15.0)).all()


@pytest.mark.parametrize('which', ['mcap', 'sqlite3'])
def test_bag_matches_folder(which, mcap_split, sqlite_split):
    root, paths = mcap_split if which == 'mcap' else sqlite_split
    seq = Sequence(paths[0])
    bag_dir = paths[0] / 'bag'
    meta = (bag_dir / 'metadata.yaml').read_text()
    assert f'storage_identifier: {which}' in meta
    msgs = _read_bag(bag_dir)
    assert set(msgs) == set(TOPICS.values())
    for topic in set(TOPICS.values()) - {'/tf_static'}:
        assert len(msgs[topic]) == FRAMES, topic
        stamps = [_stamp(m) for _, m in msgs[topic]]
        assert stamps == [START_NS + i * 100_000_000 for i in range(FRAMES)], f'{topic} not at exactly 10 Hz'
        assert [t for t, _ in msgs[topic]] == stamps, 'bag receive time equals header stamp'
    assert len(msgs['/tf_static']) == 1
    tfs = {tr.child_frame_id: tr for tr in msgs['/tf_static'][0][1].transforms}
    assert set(tfs) == {'camera_optical', 'lidar'} and all(tr.header.frame_id == 'base_link' for tr in tfs.values())
    T_base_cam, T_base_lidar = _T(tfs['camera_optical'].transform), _T(tfs['lidar'].transform)
    assert T_base_lidar[2, 3] > T_base_cam[2, 3], 'lidar is mounted above the camera'
    for i in range(FRAMES):
        f = seq.frame(i)
        img = msgs['/camera/image_raw'][i][1]
        assert (img.encoding, img.height, img.width, img.header.frame_id) == ('rgb8', H, W, 'camera_optical')
        np.testing.assert_array_equal(img.data.reshape(H, W, 3), f.rgb)
        mask = msgs['/camera/instance_mask'][i][1]
        assert mask.encoding == '16UC1' and mask.step == 2 * W
        np.testing.assert_array_equal(mask.data.view(np.uint16).reshape(H, W), f.mask)
        dep = msgs['/camera/depth_gt'][i][1]
        assert dep.encoding == '32FC1'
        d = dep.data.view(np.float32).reshape(H, W)
        np.testing.assert_array_equal(np.isnan(d), f.depth == 0)
        np.testing.assert_array_equal(d[f.depth > 0], f.depth[f.depth > 0])
        info = msgs['/camera/camera_info'][i][1]
        np.testing.assert_allclose(info.k.reshape(3, 3), seq.calib.K)
        np.testing.assert_allclose(info.p.reshape(3, 4)[:, :3], seq.calib.K)
        assert info.distortion_model == 'plumb_bob' and not np.any(info.d) and info.header.frame_id == 'camera_optical'
        assert (info.height, info.width) == (H, W)
        odom = msgs['/odom'][i][1]
        assert (odom.header.frame_id, odom.child_frame_id) == ('odom', 'base_link')
        p = odom.pose.pose
        T_odom_base = _T(type('T', (), {'rotation': p.orientation, 'translation': p.position}))
        np.testing.assert_allclose(T_odom_base @ T_base_cam, f.pose, atol=1e-5)
        assert 5.0 < odom.twist.twist.linear.x < 15.0 and abs(odom.twist.twist.linear.y) < 0.5
    # the twist is the ego's real motion: speed matches the pose differences between frames
    pos = np.array([[m.pose.pose.position.x, m.pose.pose.position.y] for _, m in msgs['/odom']])
    speed = np.linalg.norm(np.diff(pos, axis=0), axis=1) * 10.0
    twist = np.array([m.twist.twist.linear.x for _, m in msgs['/odom']])
    np.testing.assert_allclose(speed, 0.5 * (twist[1:] + twist[:-1]), rtol=0.02)


def _lidar_depth_errors(seq: Sequence, msgs: dict) -> np.ndarray:
    tfs = {tr.child_frame_id: tr for tr in msgs['/tf_static'][0][1].transforms}
    T_cam_lidar = np.linalg.inv(_T(tfs['camera_optical'].transform)) @ _T(tfs['lidar'].transform)
    K = msgs['/camera/camera_info'][0][1].k.reshape(3, 3)
    errs = []
    for i, (_, pc) in enumerate(msgs['/lidar/points']):
        assert pc.header.frame_id == 'lidar'
        assert [fl.name for fl in pc.fields] == ['x', 'y', 'z', 'intensity'] and pc.point_step == 16
        pts = pc.data.view(np.float32).reshape(-1, 4)
        assert len(pts) > 1000 and np.isfinite(pts).all()
        assert (pts[:, 3] >= 0).all() and (pts[:, 3] <= 1).all()
        pc_cam = pts[:, :3].astype(np.float64) @ T_cam_lidar[:3, :3].T + T_cam_lidar[:3, 3]
        z = pc_cam[:, 2]
        front = z > 0.5
        u = np.round(K[0, 0] * pc_cam[front, 0] / z[front] + K[0, 2]).astype(int)
        v = np.round(K[1, 1] * pc_cam[front, 1] / z[front] + K[1, 2]).astype(int)
        ins = (u >= 0) & (u < W) & (v >= 0) & (v < H)
        gt = seq.depth(i)[v[ins], u[ins]]
        ok = gt > 0
        errs.append(np.abs(gt[ok] - z[front][ins][ok]) / z[front][ins][ok])
    return np.concatenate(errs)


@pytest.mark.parametrize('which', ['mcap', 'sqlite3'])
def test_lidar_points_land_on_gt_depth(which, mcap_split, sqlite_split):
    root, paths = mcap_split if which == 'mcap' else sqlite_split
    seq = Sequence(paths[0])
    err = _lidar_depth_errors(seq, _read_bag(paths[0] / 'bag'))
    assert len(err) > 500
    # nearest-pixel lookup of a slanted surface and the 25 cm lidar/camera parallax leave a small tail
    assert np.median(err) < 0.01
    assert np.mean(err < 0.05) > 0.9


def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    args = dict(sequences=2, frames=3, height=H, width=W, seed=11, bag=True, noise=0.01, progress=False)
    generate_split(a, 'train', workers=1, **args)
    generate_split(b, 'train', workers=2, **args)
    da, db = _tree_digest(a), _tree_digest(b)
    assert da == db, 'same arguments must give byte-identical files (folder and bag)'
    assert any(k.endswith('.mcap') for k in da)
    c = tmp_path / 'c'
    generate_split(c, 'train', workers=1, **{**args, 'seed': 12})
    assert _tree_digest(c)['train/seq_0000/rgb/000000.png'] != da['train/seq_0000/rgb/000000.png']


def test_splits_use_disjoint_seeds(tmp_path):
    ids = {split: {sequence_seed_id(0, split, i) for i in range(50)} for split in ('train', 'val', 'test')}
    assert all(len(v) == 50 for v in ids.values())
    assert not (ids['train'] & ids['val'] or ids['train'] & ids['test'] or ids['val'] & ids['test'])
    for split in ('train', 'test'):
        generate_split(tmp_path, split, sequences=1, frames=2, height=H, width=W, seed=0, workers=1, progress=False)
    tr, te = Sequence(tmp_path / 'train' / 'seq_0000'), Sequence(tmp_path / 'test' / 'seq_0000')
    assert not np.array_equal(tr.rgb(0), te.rgb(0))
    assert json.loads((tr.path / 'synth.json').read_text())['params']['seed_id'] == sequence_seed_id(0, 'train', 0)


def test_lead_car_fraction_rule(tmp_path):
    for n in range(1, 30):
        for frac in (0.0, 0.25, 0.5, 1.0):
            assert sum(has_lead_car(i, frac) for i in range(n)) == math.ceil(n * frac - 1e-9)
    paths = generate_split(tmp_path, 'test', sequences=4, frames=3, height=H, width=W, seed=3,
                           lead_car_fraction=0.25, workers=1, progress=False)
    lead_frames = 0
    for p in paths:
        meta = json.loads((p / 'synth.json').read_text())
        seq = Sequence(p)
        for i, flag in enumerate(meta['lead_frames']):
            lead = [x for x in seq.instances(i) if x.id == meta['lead_id']]
            # the flag agrees with the per-frame metadata: visible, moving, closer than 30 m
            assert flag == bool(lead and lead[0].box['center_cam'][2] < 30.0)
            if flag:
                assert lead[0].moving and lead[0].cls == 'car'
        lead_frames += sum(meta['lead_frames'])
    assert lead_frames >= 0.25 * 4 * 3
    paths0 = generate_split(tmp_path / 'none', 'test', sequences=2, frames=2, height=H, width=W, seed=3,
                            lead_car_fraction=0.0, workers=1, progress=False)
    assert all(json.loads((p / 'synth.json').read_text())['lead_id'] is None for p in paths0)


def test_existing_sequences_are_kept_and_cli_reports_errors(tmp_path, capsys):
    argv = ['--out', str(tmp_path), '--split', 'val', '--sequences', '1', '--frames', '2',
            '--height', str(H), '--width', str(W), '--seed', '5', '--workers', '1']
    assert synth_main(argv) == 0
    png = tmp_path / 'val' / 'seq_0000' / 'rgb' / '000000.png'
    mtime = png.stat().st_mtime_ns
    assert synth_main(argv) == 0
    assert png.stat().st_mtime_ns == mtime, 'an up-to-date sequence is not regenerated'
    assert synth_main(argv + ['--noise', '0', '--overwrite']) == 0
    assert png.stat().st_mtime_ns != mtime, 'changed parameters regenerate the sequence'
    assert 'lead car within 30 m in 2/2 frames' in capsys.readouterr().out
    assert synth_main(argv + ['--frames', '1']) == 2
    assert 'frames must be >= 2' in capsys.readouterr().err
    assert not list((tmp_path / 'val').glob('.*partial')), 'no half-written sequence left behind'


def _synth(tmp_path, *extra):
    return synth_main(['--out', str(tmp_path), '--split', 'val', '--frames', '2', '--height', str(H), '--width',
                       str(W), '--workers', '1', *extra])


def test_rerun_with_other_parameters_is_refused_unless_overwrite(tmp_path, capsys):
    """A split holds sequences of one set of parameters: a rerun into it with others is refused naming them
    (nothing touched), --overwrite replaces the split (old sequences beyond the new count go), the same
    parameters reuse it; a split made before the split record existed is judged by its synth.json."""
    assert _synth(tmp_path, '--sequences', '3') == 0
    seqs = tmp_path / 'val'
    before = _tree_digest(seqs)
    capsys.readouterr()
    assert _synth(tmp_path, '--sequences', '2', '--noise', '0') == 2
    assert capsys.readouterr().err.splitlines() == [
        f'dynadepth-synth: error: {seqs} holds sequences generated with other parameters (sequences 3 -> 2, '
        f'noise 0.01 -> 0.0); rerun with --overwrite to replace them, or choose another --out']
    assert _tree_digest(seqs) == before

    assert _synth(tmp_path, '--sequences', '2', '--noise', '0', '--overwrite') == 0
    assert [s.name for s in list_sequences(tmp_path, 'val')] == ['seq_0000', 'seq_0001']
    assert all(json.loads((p / 'synth.json').read_text())['params']['noise'] == 0.0 for p in seqs.iterdir()
               if p.name.startswith('seq_'))
    after = _tree_digest(seqs)
    assert _synth(tmp_path, '--sequences', '2', '--noise', '0') == 0 and _tree_digest(seqs) == after

    (seqs / '.dynadepth_synth_split.json').unlink()       # as left by an earlier dynadepth-synth
    capsys.readouterr()
    assert _synth(tmp_path, '--sequences', '2', '--frames', '3') == 2
    assert '(frames 2 -> 3, noise 0.0 -> 0.01)' in capsys.readouterr().err


@pytest.mark.parametrize('extra, message', [
    (['--height', '20000', '--width', '20000'], 'image size 20000x20000 is too large; at most 4096 px per side'),
    (['--height', '4096', '--width', '4096'], 'image size 4096x4096 is too large'),
    (['--frames', '100000000'], 'frames must be <= 2000 per sequence (got 100000000)'),
    (['--sequences', '100000'], 'sequences must be in [1, 10000], got 100000'),
    (['--sequences', '10000', '--frames', '2000', '--height', '2048', '--width', '4096'],
     'need about 1258619.5 GB under'),
])
def test_requests_beyond_bounds_or_free_space_are_refused_up_front(tmp_path, capsys, extra, message):
    t0 = time.monotonic()
    assert synth_main(['--out', str(tmp_path / 'out'), '--split', 'train', '--workers', '1', *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith('dynadepth-synth: error: ') and message in err, err
    assert time.monotonic() - t0 < 5 and not (tmp_path / 'out').exists()


def test_free_space_estimate_counts_what_is_still_to_write(tmp_path, capsys, monkeypatch):
    """The estimate is checked against the output filesystem's free space, for the sequences not yet there."""
    assert _synth(tmp_path, '--sequences', '1', '--frames', '3') == 0
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: real(p)._replace(free=300_000))
    assert _synth(tmp_path, '--sequences', '1', '--frames', '3') == 0, 'nothing to write: nothing to check'
    assert _synth(tmp_path / 'two', '--sequences', '2', '--frames', '3') == 2
    err = capsys.readouterr().err
    assert f'need about 0.8 MB under {tmp_path / "two" / "val"}, but only 0.3 MB are free there' in err, err
    assert not (tmp_path / 'two').exists()


def test_a_failed_generation_leaves_no_partial_sequence(tmp_path, capsys, monkeypatch):
    """A write that fails mid-sequence (here: the disk fills up at frame 1) ends in one error line and removes
    the half-written .partial folder."""
    real_write = SequenceWriter.write

    def write(self, frame):
        if frame.index == 1:
            raise OSError(errno.ENOSPC, 'No space left on device')
        real_write(self, frame)
    monkeypatch.setattr(SequenceWriter, 'write', write)
    assert _synth(tmp_path, '--sequences', '1', '--frames', '3') == 1
    assert 'No space left on device' in capsys.readouterr().err
    assert [p.name for p in (tmp_path / 'val').iterdir() if not p.name.startswith('.dynadepth')] == []
