"""Frame readers (dynadepth_ros.datasets) on tiny fixtures written in the exact on-disk layouts."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from dynadepth_ros.camera import project
from dynadepth_ros.datasets import DatasetError, open_source
from dynadepth_ros.datasets.kitti import KittiCalib, project_velodyne
from dynadepth_ros.datasets.layout import Calib, Frame, Instance, SequenceWriter

# ---- synthetic layout ------------------------------------------------------------------------


def _write_synthetic(root, split='train', name='seq_000', n=4, h=12, w=16, seed=0):
    rng = np.random.default_rng(seed)
    K = np.array([[10.0, 0, 7.5], [0, 10.0, 5.5], [0, 0, 1]])
    frames = []
    with SequenceWriter(root, split, name, Calib(K=K, height=h, width=w, fps=10.0)) as wr:
        for i in range(n):
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            depth = rng.uniform(1, 50, (h, w)).astype(np.float32)
            depth[0] = 0.0
            mask = np.zeros((h, w), np.uint16)
            mask[2:5, 3:6] = 7
            mask[6:9, 8:12] = 300
            pose = np.eye(4)
            pose[2, 3] = 1.5 * i
            inst = [Instance(7, 'car', False, [0, 0, 0]), Instance(300, 'car', True, [0, 0, 9.0])]
            fr = Frame(i, rgb, depth, mask, inst, pose)
            wr.write(fr)
            frames.append(fr)
    return frames


def test_synthetic_reader_round_trip(tmp_path):
    frames = _write_synthetic(tmp_path)
    _write_synthetic(tmp_path, name='seq_001', n=3, seed=1)
    (tmp_path / 'train' / '.seq_002.partial').mkdir()  # a killed writer's leftovers are ignored
    src = open_source('synthetic', tmp_path, 'train')
    seqs = src.sequences()
    assert [s.name for s in seqs] == ['seq_000', 'seq_001']
    assert [len(s) for s in seqs] == [4, 3]
    s = seqs[0]
    for i, fr in enumerate(frames):
        assert np.array_equal(s.rgb(i), fr.rgb)
        assert s.rgb(i).dtype == np.uint8
        np.testing.assert_allclose(s.pose(i), fr.pose, atol=1e-9)
        gt = s.gt_depth(i)
        assert gt.dtype == np.float32 and np.array_equal(gt, fr.depth)
        m = s.instance_mask(i)
        assert m.dtype == np.int32 and np.array_equal(m, fr.mask.astype(np.int32))
        assert s.moving_ids(i) == {300}
        assert s.stamp(i) == pytest.approx(i / 10.0)
    np.testing.assert_allclose(s.K(0), [[10, 0, 7.5], [0, 10, 5.5], [0, 0, 1]])
    with pytest.raises(IndexError):
        s.rgb(4)


def test_synthetic_reader_optional_parts_and_unknown_poses(tmp_path):
    """An imported recording: no depth/, mask/, instances/; NaN pose lines mean unknown; stamps.txt."""
    _write_synthetic(tmp_path, split='val', n=3)
    seq = tmp_path / 'val' / 'seq_000'
    for sub in ('depth', 'mask', 'instances'):
        for p in (seq / sub).iterdir():
            p.unlink()
        (seq / sub).rmdir()
    lines = (seq / 'poses.txt').read_text().splitlines()
    lines[1] = ' '.join(['nan'] * 12)
    (seq / 'poses.txt').write_text('\n'.join(lines) + '\n')
    (seq / 'stamps.txt').write_text('100.0\n100.25\n100.5\n')
    s = open_source('synthetic', tmp_path, 'val').sequences()[0]
    assert s.gt_depth(0) is None and s.instance_mask(0) is None and s.moving_ids(0) is None
    assert s.pose(0) is not None and s.pose(1) is None and s.pose(2) is not None
    assert s.stamp(1) == pytest.approx(100.25)


def test_synthetic_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match='does not exist'):
        open_source('synthetic', tmp_path, 'test')
    with pytest.raises(DatasetError, match='split must be one of'):
        open_source('synthetic', tmp_path, 'training')
    with pytest.raises(DatasetError, match='unknown dataset layout'):
        open_source('nuscenes', tmp_path, 'train')


# ---- KITTI raw ------------------------------------------------------------------------------
# Real calibration values of KITTI raw 2011_09_26.
P_RECT_02 = [7.215377e+02, 0.0, 6.095593e+02, 4.485728e+01, 0.0, 7.215377e+02, 1.728540e+02, 2.163791e-01,
             0.0, 0.0, 1.0, 2.745884e-03]
P_RECT_03 = [7.215377e+02, 0.0, 6.095593e+02, -3.395242e+02, 0.0, 7.215377e+02, 1.728540e+02, 2.199936e+00,
             0.0, 0.0, 1.0, 2.729905e-03]
R_RECT_00 = [9.999239e-01, 9.837760e-03, -7.445048e-03, -9.869795e-03, 9.999421e-01, -4.278459e-03,
             7.402527e-03, 4.351614e-03, 9.999631e-01]
VELO_R = [7.533745e-03, -9.999714e-01, -6.166020e-04, 1.480249e-02, 7.280733e-04, -9.998902e-01,
          9.998621e-01, 7.523790e-03, 1.480755e-02]
VELO_T = [-4.069766e-03, -7.631618e-02, -2.717806e-01]
IMU_R = [9.999976e-01, 7.553071e-04, -2.035826e-03, -7.854027e-04, 9.998898e-01, -1.482298e-02,
         2.024406e-03, 1.482454e-02, 9.998881e-01]
IMU_T = [-8.086759e-01, 3.195559e-01, -7.997231e-01]
KITTI_H, KITTI_W = 375, 1242
DATE, DRIVE = '2011_09_26', '2011_09_26_drive_0001_sync'


def _fmt(vals):
    return ' '.join(f'{v:.6e}' for v in vals)


def _write_kitti(root, n=3):
    date = root / DATE
    date.mkdir(parents=True)
    (date / 'calib_cam_to_cam.txt').write_text(
        'calib_time: 09-Jan-2012 13:57:47\ncorner_dist: 9.950000e-02\n'
        f'S_rect_00: 1.242000e+03 3.750000e+02\nR_rect_00: {_fmt(R_RECT_00)}\n'
        f'S_rect_02: 1.242000e+03 3.750000e+02\nP_rect_02: {_fmt(P_RECT_02)}\n'
        f'S_rect_03: 1.242000e+03 3.750000e+02\nP_rect_03: {_fmt(P_RECT_03)}\n')
    (date / 'calib_velo_to_cam.txt').write_text(
        f'calib_time: 15-Mar-2012 11:37:16\nR: {_fmt(VELO_R)}\nT: {_fmt(VELO_T)}\n'
        'delta_f: 0.000000e+00 0.000000e+00\ndelta_c: 0.000000e+00 0.000000e+00\n')
    (date / 'calib_imu_to_velo.txt').write_text(
        f'calib_time: 25-May-2012 16:47:16\nR: {_fmt(IMU_R)}\nT: {_fmt(IMU_T)}\n')
    drive = date / DRIVE
    for cam in ('02', '03'):
        d = drive / f'image_{cam}' / 'data'
        d.mkdir(parents=True)
        for i in range(n):
            img = np.full((KITTI_H, KITTI_W, 3), (10 * i, 20, 30 if cam == '02' else 90), np.uint8)
            cv2.imwrite(str(d / f'{i:010d}.png'), img)
        (drive / f'image_{cam}' / 'timestamps.txt').write_text(
            '\n'.join(f'2011-09-26 13:02:25.{594360375 + 103500000 * i:09d}' for i in range(n)) + '\n')
    return drive


def _T(R, t):
    T = np.eye(4)
    T[:3, :3] = np.reshape(R, (3, 3))
    T[:3, 3] = t
    return T


def test_kitti_intrinsics_split_file_and_stamps(tmp_path):
    _write_kitti(tmp_path)
    split = tmp_path / 'my_split.txt'
    split.write_text(f'{DATE}/{DRIVE} 1 l\n{DATE}/{DRIVE} 0000000002 r\n{DATE}/{DRIVE} 2 l\n')
    seqs = open_source('kitti', tmp_path, str(split)).sequences()
    assert [(s.side, s.sample_indices()) for s in seqs] == [('l', [1, 2]), ('r', [2])]
    left, right = seqs
    np.testing.assert_allclose(left.K(0), np.reshape(P_RECT_02, (3, 4))[:, :3])
    np.testing.assert_allclose(right.K(0), np.reshape(P_RECT_03, (3, 4))[:, :3])
    assert left.rgb(2).shape == (KITTI_H, KITTI_W, 3) and tuple(left.rgb(2)[0, 0]) == (30, 20, 20)
    assert tuple(right.rgb(0)[0, 0]) == (90, 20, 0)
    assert left.stamp(2) - left.stamp(0) == pytest.approx(0.207, abs=1e-6)
    assert left.gt_depth(0) is None and left.pose(0) is None and left.instance_mask(0) is None
    # every drive when no split is given; a split naming a missing frame is refused
    assert len(open_source('kitti', tmp_path, 'all').sequences()) == 1
    split.write_text(f'{DATE}/{DRIVE} 9 l\n')
    with pytest.raises(DatasetError, match='not in'):
        open_source('kitti', tmp_path, str(split))
    with pytest.raises(DatasetError, match='not found'):
        open_source('kitti', tmp_path, 'eigen_zhou')


def test_kitti_velodyne_projection_lands_on_the_right_pixel(tmp_path):
    drive = _write_kitti(tmp_path)
    # T_cam2_velo composed here from the raw numbers: rectified cam2 = offset · R_rect · T_cam0_velo
    P = np.reshape(P_RECT_02, (3, 4))
    K = P[:, :3]
    offset = np.eye(4)
    offset[:3, 3] = np.linalg.solve(K, P[:, 3])
    R_rect = np.eye(4)
    R_rect[:3, :3] = np.reshape(R_RECT_00, (3, 3))
    T_cam_velo = offset @ R_rect @ _T(VELO_R, VELO_T)
    cam_points = np.array([[2.0, 1.0, 10.0],      # visible
                           [4.0, 2.0, 20.0],      # same ray, twice as far: hidden behind the first
                           [-5.0, 0.5, 25.0],     # visible
                           [300.0, 0.0, 10.0]])   # outside the image
    hom = np.c_[cam_points, np.ones(4)] @ np.linalg.inv(T_cam_velo).T
    behind = np.linalg.inv(T_cam_velo) @ np.array([0.0, 0.0, -10.0, 1.0])  # behind the car (velo x < 0)
    scan = np.r_[hom, behind[None]].astype(np.float32)
    scan[:, 3] = 0.5  # reflectance column
    (drive / 'velodyne_points' / 'data').mkdir(parents=True)
    scan.tofile(drive / 'velodyne_points' / 'data' / f'{1:010d}.bin')
    seq = open_source('kitti', tmp_path, None).sequences()[0]
    depth = seq.gt_depth(1)
    assert depth.shape == (KITTI_H, KITTI_W) and depth.dtype == np.float32
    uv, _ = project(cam_points[[0, 2]], K)
    cols, rows = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    np.testing.assert_allclose(depth[rows, cols], [10.0, 25.0], rtol=1e-5)
    assert np.count_nonzero(depth) == 2  # hidden, outside and behind-the-scanner points leave no trace
    assert seq.gt_depth(0) is None  # no scan for frame 0
    # the calibration object composes the same chain
    np.testing.assert_allclose(KittiCalib(tmp_path / DATE, '02').T_cam_velo(), T_cam_velo, atol=1e-9)
    # improved GT (uint16 / 256) wins over the raw scan when present
    improved = np.zeros((KITTI_H, KITTI_W), np.uint16)
    improved[100, 200] = 2560
    d = drive / 'proj_depth' / 'groundtruth' / 'image_02'
    d.mkdir(parents=True)
    cv2.imwrite(str(d / f'{1:010d}.png'), improved)
    gt = seq.gt_depth(1)
    assert gt[100, 200] == pytest.approx(10.0) and np.count_nonzero(gt) == 1


def test_project_velodyne_nearest_point_wins_regardless_of_order(tmp_path):
    _write_kitti(tmp_path)
    calib = KittiCalib(tmp_path / DATE, '02')
    T_velo_cam = np.linalg.inv(calib.T_cam_velo())
    pts = np.array([[0.0, 0.0, z, 1.0] for z in (30.0, 8.0, 15.0)]) @ T_velo_cam.T
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        d = project_velodyne(pts[order].astype(np.float32), calib, KITTI_H, KITTI_W)
        assert np.count_nonzero(d) == 1 and d.max() == pytest.approx(8.0, rel=1e-5)


def test_kitti_oxts_poses(tmp_path):
    drive = _write_kitti(tmp_path)
    oxts = drive / 'oxts' / 'data'
    oxts.mkdir(parents=True)
    lat0, lon0 = 49.015, 8.43
    for i in range(3):
        # move 1 m north per frame, heading north (yaw = pi/2 from east)
        vals = [lat0 + np.degrees(i / 6378137.0), lon0, 116.0, 0.0, 0.0, np.pi / 2] + [0.0] * 24
        (oxts / f'{i:010d}.txt').write_text(' '.join(f'{v:.12f}' for v in vals))
    seq = open_source('kitti', tmp_path, None).sequences()[0]
    np.testing.assert_allclose(seq.pose(0), np.eye(4), atol=1e-9)
    step = seq.pose(1)[:3, 3] - seq.pose(0)[:3, 3]
    assert np.linalg.norm(step) == pytest.approx(1.0, abs=2e-3)
    # heading straight north with the IMU x axis forward: the camera moves along its optical axis (+z)
    assert step[2] > 0.99
    assert np.linalg.norm(seq.pose(2)[:3, 3]) == pytest.approx(2.0, abs=4e-3)


# ---- Cityscapes preprocessed triplets -------------------------------------------------------


def _write_cityscapes(root, city='ulm', frame='ulm_000002_000025', fw=64, fh=24):
    (root / city).mkdir(parents=True, exist_ok=True)
    img = np.zeros((fh, 3 * fw, 3), np.uint8)
    for k, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):  # prev red | cur green | next blue
        img[:, k * fw:(k + 1) * fw] = colour
    cv2.imwrite(str(root / city / f'{frame}.png'), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (root / city / f'{frame}_cam.txt').write_text('1104.0,0.0,535.0,0.0,1101.0,160.0,0.0,0.0,1.0')


def test_cityscapes_triplet_split_and_intrinsics(tmp_path):
    _write_cityscapes(tmp_path)
    _write_cityscapes(tmp_path, 'aachen', 'aachen_000010_000019')
    (tmp_path / 'splits').mkdir()
    (tmp_path / 'splits' / 'train_files.txt').write_text('ulm ulm_000002_000025\n')
    seqs = open_source('cityscapes', tmp_path, 'train').sequences()
    assert len(seqs) == 1 and len(seqs[0]) == 3 and seqs[0].sample_indices() == [1]
    s = seqs[0]
    assert [tuple(s.rgb(i)[5, 5]) for i in range(3)] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert s.rgb(1).shape == (24, 64, 3)
    np.testing.assert_allclose(s.K(1), [[1104, 0, 535], [0, 1101, 160], [0, 0, 1]])
    assert s.stamp(2) - s.stamp(1) == pytest.approx(2 / 17)
    assert s.gt_depth(1) is None and s.pose(1) is None
    assert len(open_source('cityscapes', tmp_path, None).sequences()) == 2
    (tmp_path / 'ulm' / 'ulm_000002_000025_cam.txt').write_text('1,2,3')
    with pytest.raises(DatasetError, match='9 numbers'):
        open_source('cityscapes', tmp_path, 'train')


def test_readers_never_import_torch():
    code = 'import sys, dynadepth_ros.datasets; assert "torch" not in sys.modules, "torch imported"'
    subprocess.run([sys.executable, '-c', code], check=True)
