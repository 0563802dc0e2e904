"""Geometric truth of the synthetic generator: GT depth + GT poses explain the images.

Rendered in memory (no files) at small sizes; noise off so photometric errors are the renderer's own.
"""
import numpy as np
import pytest

cv2 = pytest.importorskip('cv2')

from dynadepth_ros.camera import backproject, project, transform_points  # noqa: E402
from dynadepth_ros.synth.generate import SequenceRenderer, SynthParams, sequence_seed  # noqa: E402
from dynadepth_ros.synth.rig import synth_intrinsics  # noqa: E402

H, W = 96, 320


def _rot_z(yaw):
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope='module')
def frames():
    """Two consecutive frames of three different worlds (all with a lead car)."""
    out = []
    for seed in range(3):
        r = SequenceRenderer(sequence_seed(seed, 'test', 0), SynthParams(frames=10, height=H, width=W, noise=0.0), True)
        f0, _, _ = r.render(3)
        f1, _, _ = r.render(4)
        out.append((r, f0, f1))
    return out


def _warp(f0, f1, K, T10):
    """Frame-1 colours and depths sampled where frame-0 pixels land under the rigid motion T10."""
    P = transform_points(T10, backproject(f0.depth, K))
    uv, z = project(P, K)
    mx, my = uv[..., 0].astype(np.float32), uv[..., 1].astype(np.float32)
    rgb = cv2.remap(f1.rgb.astype(np.float32) / 255, mx, my, cv2.INTER_LINEAR, borderValue=(-1, -1, -1))
    d1 = cv2.remap(f1.depth, mx, my, cv2.INTER_NEAREST, borderValue=0)
    inside = (mx > 1) & (mx < W - 2) & (my > 1) & (my < H - 2)
    return rgb, d1, z, inside


def test_static_scene_warps_onto_next_frame(frames):
    for r, f0, f1 in frames:
        T10 = np.linalg.inv(f1.pose) @ f0.pose
        rgb, d1, z, inside = _warp(f0, f1, r.K, T10)
        moving = np.isin(f0.mask, [i.id for i in f0.instances if i.moving])
        visible = np.abs(d1 - z) < 0.02 * np.maximum(z, 1e-6)          # not occluded in frame 1
        ok = (f0.depth > 0) & ~moving & inside & visible
        assert ok.mean() > 0.4, 'most static pixels should be re-observed in the next frame'
        err = np.abs(rgb - f0.rgb / 255.0).mean(axis=-1)
        no_warp = np.abs(f1.rgb / 255.0 - f0.rgb / 255.0).mean(axis=-1)
        assert err[ok].mean() < 0.02, f'static photometric error {err[ok].mean():.4f} too large'
        assert np.median(err[ok]) < 0.006
        # the images do change (the test would be void on a frozen camera)
        assert no_warp[ok].mean() > 3 * err[ok].mean()


def test_moving_objects_follow_their_own_motion(frames):
    checked = 0
    for r, f0, f1 in frames:
        P0w = transform_points(f0.pose, backproject(f0.depth, r.K))
        later = {i.id: i for i in f1.instances}
        for inst in f0.instances:
            # interior pixels only: rounding a silhouette pixel can land it just off the object
            m = cv2.erode((f0.mask == inst.id).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            if not inst.moving or inst.id not in later or m.sum() < 30:
                continue
            b0, b1 = inst.box, later[inst.id].box
            c0, c1 = np.array(b0['center_world']), np.array(b1['center_world'])
            # the reported velocity is the box motion per second
            np.testing.assert_allclose(np.array(inst.velocity[:2]), (c1 - c0)[:2] / 0.1, rtol=0.03, atol=0.05)
            Rr = _rot_z(b1['yaw_world']) @ _rot_z(b0['yaw_world']).T
            moved = (P0w[m] - c0) @ Rr.T + c1
            for pts, expect_ok in ((moved, True), (P0w[m], False)):
                uv, z = project(transform_points(np.linalg.inv(f1.pose), pts), r.K)
                u, v = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
                ins = (u >= 0) & (u < W) & (v >= 0) & (v < H)
                d1 = f1.depth[v[ins], u[ins]]
                rel = np.abs(d1 - z[ins]) / z[ins]
                if expect_ok:
                    unoccluded = d1 > z[ins] * 0.98        # nothing nearer covers the point in frame 1
                    assert unoccluded.mean() > 0.5
                    assert np.mean(f1.mask[v[ins], u[ins]][unoccluded] == inst.id) > 0.9
                    assert np.median(rel) < 2e-3, f'{inst.cls} {inst.id}: object motion does not explain its pixels'
                else:   # treating it as static world must not explain it (the method's whole point)
                    assert np.median(rel) > 0.01
            checked += 1
    assert checked >= 3


def test_instance_pixels_lie_inside_their_3d_boxes(frames):
    for r, f0, _ in frames:
        P = transform_points(f0.pose, backproject(f0.depth, r.K))
        assert len(f0.instances) > 3
        for inst in f0.instances:
            m = f0.mask == inst.id
            assert m.any()
            local = (P[m] - np.array(inst.box['center_world'])) @ _rot_z(inst.box['yaw_world'])
            excess = np.abs(local) - np.array(inst.box['size']) / 2
            assert excess.max() < 0.01, f'{inst.cls} {inst.id} has pixels {excess.max():.3f} m outside its box'
            # center_cam is the same point in the camera frame
            c_cam = transform_points(np.linalg.inv(f0.pose), np.array(inst.box['center_world']))
            np.testing.assert_allclose(c_cam, inst.box['center_cam'], atol=1e-6)


def test_lead_car_depth_is_distance_of_its_rear_face(frames):
    for r, f0, _ in frames:
        lead = next(i for i in f0.instances if i.id == r.lead_id)
        assert lead.moving and lead.box['center_cam'][2] < 30.0
        # it drives at 0.9-1.1x the ego speed, so to a self-supervised method it looks static
        ratio = np.hypot(*lead.velocity[:2]) / float(r.ego.speed(0.3))
        assert 0.9 <= ratio <= 1.1
        L = lead.box['size'][0]
        yaw = lead.box['yaw_world']
        heading = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        rear = np.array(lead.box['center_world']) - heading * L / 2          # a point on the rear face
        T_cw = np.linalg.inv(f0.pose)
        n_c = T_cw[:3, :3] @ -heading                                          # rear-face normal, camera frame
        p_c = T_cw[:3, :3] @ rear + T_cw[:3, 3]
        m = f0.mask == lead.id
        v, u = np.nonzero(m)
        rays = np.stack([(u - r.K[0, 2]) / r.K[0, 0], (v - r.K[1, 2]) / r.K[1, 1], np.ones(len(u))], axis=1)
        z_plane = (n_c @ p_c) / (rays @ n_c)          # z-depth where each pixel's ray meets the rear plane
        d = f0.depth[m]
        on_face = np.abs(d - z_plane) < 1e-3 * z_plane
        assert on_face.mean() > 0.3, 'the body rear face should cover a good part of the lead car'
        assert np.all(d > z_plane * (1 - 1e-3)), 'no lead-car pixel may be nearer than its rear face'


def test_intrinsics_are_kitti_like():
    K = synth_intrinsics(192, 640)
    assert K[0, 0] == pytest.approx(0.58 * 640) and K[1, 1] == pytest.approx(1.92 * 192, rel=0.01)
    assert (K[0, 2], K[1, 2]) == (320.0, 96.0)


@pytest.mark.parametrize('sensor', ['camera', 'lidar'])
def test_culling_changes_nothing(sensor, frames, monkeypatch):
    """Testing each primitive only on the rays its bounds can reach must give exactly the image of
    testing every primitive against every ray."""
    from dynadepth_ros.synth.lidar import lidar_rays
    from dynadepth_ros.synth.render import CameraRays

    r = frames[0][0]
    scene = r.scene_at(0.3)
    T_wb = r.base_pose(0.3)
    if sensor == 'camera':
        rays = CameraRays(r.K, H, W, T_wb @ r.T_base_cam)
    else:
        rays = lidar_rays(T_wb @ r.T_base_lidar, n_azimuth=360)
    culled = scene.cast(rays)
    R, C = rays.shape
    monkeypatch.setattr(type(rays), 'rects', lambda self, corners, edges: np.array(
        [(i, 0, R, 0, C) for i in range(len(corners))], np.int64).reshape(-1, 5))
    full = scene.cast(rays)
    np.testing.assert_array_equal(culled.prim, full.prim)
    np.testing.assert_array_equal(culled.t, full.t)
