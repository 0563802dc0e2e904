"""Inference core without ROS: aspect policy, depth geometry, focal compensation, camera_info rescaling, the
estimator on a real ONNX Runtime session, per-instance depth, mask pairing, rolling stats, colour map."""
import numpy as np
import pytest

from contract_model import expected_depth, make_contract_model
from dynadepth_ros.camera import denormalise_intrinsics, intrinsics_matrix, scale_intrinsics
from dynadepth_ros.colorize import colorize_depth
from dynadepth_ros.inference import BackendError, DepthEstimator, default_model_path
from dynadepth_ros.inference.postprocess import (CameraCalibration, CameraInfoError, clean_depth, focal_scale,
                                                 image_calibration, rescale_calibration, to_output_geometry)
from dynadepth_ros.inference.preprocess import plan_crop, to_model_input
from dynadepth_ros.latency import RollingWindow
from dynadepth_ros.mask_sync import MaskPairer
from dynadepth_ros.model_format import ModelFormatError
from dynadepth_ros.objects import instance_depths

INTR = (0.58, 1.92, 0.5, 0.5)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return make_contract_model(tmp_path_factory.mktemp('m') / 'contract.onnx')


@pytest.fixture(scope='module')
def est(model):
    e = DepthEstimator(model, backend='onnxruntime', intra_op_threads=1)
    yield e
    e.close()


# ------------------------------------------------------------------ aspect policy
def test_plan_keeps_whole_image_when_aspect_matches_and_crops_centre_otherwise():
    kitti = plan_crop(375, 1242, 64, 192)            # 3.31 vs 3.0: 10 % off -> crop
    assert kitti.cropped and (kitti.crop_h, kitti.crop_w) == (375, 1125) and kitti.x0 == (1242 - 1125) // 2
    near = plan_crop(62, 192, 64, 192)                 # 3 % off -> plain resize
    assert not near.cropped
    tall = plan_crop(720, 1280, 64, 192)               # 16:9 into 3:1 -> rows cropped, centred
    assert (tall.crop_w, tall.crop_h, tall.x0, tall.y0) == (1280, 427, 0, (720 - 427) // 2)


def test_model_input_is_rgb_unit_range_from_the_crop_window():
    rgb = np.zeros((64, 256, 3), np.uint8)
    rgb[:, :32] = (255, 0, 0)                          # left band outside the centred 192-wide crop
    rgb[:, 32:224] = (10, 128, 250)
    x = to_model_input(rgb, plan_crop(64, 256, 64, 192))
    assert x.shape == (3, 64, 192) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 10, 10], np.array([10, 128, 250]) / 255.0, rtol=1e-6)


def test_depth_maps_back_to_the_source_geometry_with_nan_outside_the_crop():
    plan = plan_crop(192, 640, 64, 192)                # crop 576 wide at x0=32
    d = to_output_geometry(np.full((64, 192), 5.0, np.float32), plan, 96, 320)   # half-size output
    assert d.shape == (96, 320)
    assert np.isnan(d[:, :16]).all() and np.isnan(d[:, -16:]).all()
    np.testing.assert_allclose(d[:, 16:-16], 5.0, rtol=1e-6)


def test_clean_depth_turns_nonfinite_and_nonpositive_into_nan_and_clamps_to_the_model_range():
    out = clean_depth(np.array([np.inf, -1.0, 0.0, np.nan, 0.01, 5.0, 500.0]), 0.1, 100.0)
    assert np.isnan(out[:4]).all()
    np.testing.assert_allclose(out[4:], [0.1, 5.0, 100.0])


# ------------------------------------------------------------------ focal compensation
def test_focal_scale_is_ratio_of_camera_to_training_focal_at_the_model_input():
    plan = plan_crop(128, 384, 64, 192)                # exact 2x downscale, no crop
    K = intrinsics_matrix(2 * 0.58 * 192 * 1.5, 2 * 1.92 * 64 * 1.5, 192, 64)   # 1.5x the training focal
    assert focal_scale(plan.model_intrinsics(K), INTR, 64, 192) == pytest.approx(1.5)
    with pytest.raises(CameraInfoError, match='calibrated'):
        focal_scale(plan.model_intrinsics(intrinsics_matrix(0, 0, 192, 64)), INTR, 64, 192)


# ------------------------------------------------------------------ camera_info rescaling
def _calib(w=1280, h=720, fx=700.0, **kw):
    K = intrinsics_matrix(fx, fx, w / 2, h / 2)
    P = np.hstack([K, np.array([[-fx * 0.1], [0.0], [0.0]])])
    return CameraCalibration(width=w, height=h, K=K, P=P, D=(0.1, -0.05, 0, 0, 0), **kw)


def test_camera_info_scales_K_P_to_the_output_and_keeps_distortion():
    calib, note = image_calibration(_calib(), 720, 1280)
    assert note is None
    out = rescale_calibration(calib, 360, 640)
    assert (out.width, out.height) == (640, 360)
    np.testing.assert_allclose(out.K, [[350, 0, 320], [0, 350, 180], [0, 0, 1]])
    np.testing.assert_allclose(out.P[0], [350, 0, 320, -35.0])      # Tx = -fx*B scales with fx
    assert out.D == (0.1, -0.05, 0, 0, 0) and out.roi == (0, 0, 0, 0, False)


def test_camera_info_binning_and_roi_are_applied_before_scaling():
    calib, _ = image_calibration(_calib(binning_x=2, binning_y=2, roi=(100, 60, 1000, 600, False)), 300, 500)
    np.testing.assert_allclose(calib.K[0], [350, 0, (640 - 100) / 2])
    np.testing.assert_allclose(calib.K[1], [0, 350, (360 - 60) / 2])
    assert (calib.binning_x, calib.roi) == (0, (0, 0, 0, 0, False))


def test_camera_info_for_another_resolution_is_scaled_with_a_note_or_refused():
    calib, note = image_calibration(_calib(), 360, 640)                  # same aspect: a plain resize
    assert 'assuming a plain resize' in note
    np.testing.assert_allclose(calib.K[0, 0], 350)
    with pytest.raises(CameraInfoError, match='other aspect'):
        image_calibration(_calib(), 480, 640)
    with pytest.raises(CameraInfoError, match='fx=0'):
        image_calibration(_calib(fx=0.0), 720, 1280)


@pytest.mark.parametrize('fx,fy,field', [(1e300, None, 'fx'), (1e6, None, 'fx'), (1e-300, 1e-300, 'fx'),
                                         (None, 1.92 * 128 * 100, 'fy'), (0.58 * 384 * 0.05, None, 'fx')])
def test_focal_scale_refuses_focal_lengths_far_from_the_model(fx, fy, field):
    """Outside 0.1x..10x of the training focal (scaled to the image) a camera_info is refused, naming the field."""
    plan = plan_crop(128, 384, 64, 192)
    K = intrinsics_matrix(fx or 0.58 * 384, fy or 1.92 * 128, 192, 64)
    with pytest.raises(CameraInfoError, match=rf'{field}=.*0\.1x\.\.10x'):
        focal_scale(plan.model_intrinsics(K), INTR, 64, 192)
    for ok in (0.11, 9.9):
        K = intrinsics_matrix(0.58 * 384 * ok, 1.92 * 128 * ok, 192, 64)
        assert focal_scale(plan.model_intrinsics(K), INTR, 64, 192) == pytest.approx(ok)


def test_unusable_camera_info_names_the_wrong_field():
    bad_cx = _calib()
    bad_cx.K[0, 2] = np.nan
    with pytest.raises(CameraInfoError, match=r'\bcx=nan'):
        image_calibration(bad_cx, 720, 1280)
    bad_p = _calib()
    bad_p.P[0, 3] = np.inf
    with pytest.raises(CameraInfoError, match=r'P\[0,3\]'):
        image_calibration(bad_p, 720, 1280)
    with pytest.raises(CameraInfoError, match='binning_x=4000000000'):
        image_calibration(_calib(binning_x=4_000_000_000), 720, 1280)
    with pytest.raises(CameraInfoError, match='binning_y=721'):
        image_calibration(_calib(binning_y=721), 1, 1280)
    with pytest.raises(CameraInfoError, match='roi'):
        image_calibration(_calib(roi=(1000, 0, 1000, 720, False)), 720, 1000)


# ------------------------------------------------------------------ estimator on a real ORT session
def test_estimator_metres_at_input_size_from_contract_model(est):
    rgb = np.zeros((64, 192, 3), np.uint8)
    rgb[..., 0] = np.arange(192, dtype=np.uint8)[None, :]
    d = est.infer(rgb)
    assert d.dtype == np.float32 and d.shape == (64, 192)
    np.testing.assert_allclose(d, np.broadcast_to(expected_depth(rgb[..., 0]), d.shape), rtol=1e-5)
    assert est.backend_name == 'onnxruntime[CPUExecutionProvider]'


def test_estimator_focal_compensation_and_output_size(est):
    rgb = np.zeros((128, 384, 3), np.uint8)
    rgb[..., 0] = 100
    K = intrinsics_matrix(0.58 * 384 * 2.0, 1.92 * 128 * 2.0, 192, 64)      # twice the training focal
    d = est.infer(rgb, K=K, output_size=(32, 96))
    assert d.shape == (32, 96)
    np.testing.assert_allclose(d, 2.0 * expected_depth(100), rtol=1e-5)


def test_estimator_result_carries_the_intrinsics_of_the_depth_image(est):
    """DepthResult.K: the camera's K rescaled to the output size, or without K the model's training
    intrinsics mapped back through the crop plan (what depth/camera_info and the point cloud use)."""
    rgb = np.full((192, 640, 3), 80, np.uint8)                  # wider than the model: centre crop
    K = intrinsics_matrix(500.0, 480.0, 330.0, 90.0)
    with_k, without_k = est.infer_detailed([rgb, rgb], [K, None], output_size=(96, 320))
    np.testing.assert_allclose(with_k.K, scale_intrinsics(K, 320 / 640, 96 / 192))
    plan = est.plan_for(192, 640)
    m = est.metadata
    K_model = plan.source_intrinsics(denormalise_intrinsics(m.intrinsics, m.input_width, m.input_height))
    np.testing.assert_allclose(without_k.K, scale_intrinsics(K_model, 320 / 640, 96 / 192))
    assert without_k.K[0, 2] == pytest.approx(160.0) and without_k.K.dtype == np.float64   # centred crop
    assert est.infer_detailed([rgb])[0].K[0, 0] == pytest.approx(K_model[0, 0])              # default size


def test_estimator_batch_of_mixed_sizes(est):
    a = np.full((64, 192, 3), 50, np.uint8)
    b = np.full((192, 640, 3), 200, np.uint8)
    da, db = est.infer_batch([a, b])
    assert da.shape == (64, 192) and db.shape == (192, 640)
    np.testing.assert_allclose(da, expected_depth(50), rtol=1e-5)
    assert np.isnan(db[:, :32]).all() and np.allclose(db[:, 32:-32], expected_depth(200), rtol=1e-5)


def test_estimator_batch_with_per_image_intrinsics_and_output_sizes(est):
    """Several cameras in one backend call: each image keeps its own focal compensation and output size."""
    a = np.full((128, 384, 3), 100, np.uint8)
    b = np.full((192, 640, 3), 200, np.uint8)
    Ka = intrinsics_matrix(0.58 * 384 * 2.0, 1.92 * 128 * 2.0, 192, 64)      # twice the training focal
    ra, rb = est.infer_detailed([a, b], [Ka, None], [(64, 192), None])
    assert ra.depth.shape == (64, 192) and rb.depth.shape == (192, 640)
    np.testing.assert_allclose(ra.depth, 2.0 * expected_depth(100), rtol=1e-5)
    assert ra.focal_scale == pytest.approx(2.0) and rb.focal_scale == 1.0
    np.testing.assert_allclose(rb.depth[:, 32:-32], expected_depth(200), rtol=1e-5)
    with pytest.raises(ValueError, match='2 images but 1 output sizes'):
        est.infer_detailed([a, b], None, [(64, 192)])


def test_relative_model_is_not_focal_compensated(tmp_path):
    e = DepthEstimator(make_contract_model(tmp_path / 'rel.onnx', metric=False), backend='onnxruntime')
    rgb = np.full((64, 192, 3), 100, np.uint8)
    d = e.infer(rgb, K=intrinsics_matrix(500, 500, 96, 32))
    assert not e.metadata.metric
    np.testing.assert_allclose(d, expected_depth(100), rtol=1e-5)


def test_model_without_metadata_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ModelFormatError, match='missing dynadepth metadata'):
        DepthEstimator(make_contract_model(tmp_path / 'bare.onnx', with_metadata=False), backend='onnxruntime')


def test_metadata_contradicting_the_graph_input_is_refused(tmp_path):
    bad = make_contract_model(tmp_path / 'liar.onnx', extra_props={'dynadepth.input_height': '32'})
    with pytest.raises(BackendError, match='metadata says'):
        DepthEstimator(bad, backend='onnxruntime')


def test_default_model_path_names_the_problem_when_no_model_is_bundled():
    try:
        p = default_model_path()
    except BackendError as exc:
        assert 'no bundled model; set model_path' in str(exc)
    else:
        assert p.name == 'dynadepth.onnx' and p.is_file()


def test_estimator_rejects_non_rgb_input(est):
    with pytest.raises(ValueError, match='uint8'):
        est.infer(np.zeros((64, 192, 3), np.float32))


# ------------------------------------------------------------------ per-instance depth
def test_instance_depth_is_robust_to_mask_bleeding_and_gives_3d_position():
    depth = np.full((100, 200), 50.0, np.float32)
    labels = np.zeros((100, 200), np.int32)
    labels[40:60, 90:130] = 7
    depth[40:60, 90:120] = 10.0                        # object body; the last 10 columns bleed onto background
    depth[40, 90] = np.nan
    K = intrinsics_matrix(100.0, 100.0, 100.0, 50.0)
    (ob,) = instance_depths(depth, labels, K)
    assert ob.instance_id == 7 and ob.mask_pixels == 800 and ob.pixels == 799
    assert ob.distance == pytest.approx(10.0) and ob.near == pytest.approx(10.0)
    x, y, z = ob.position
    assert z == pytest.approx(10.0) and y == pytest.approx((49.5 - 50.0) / 100 * 10, abs=0.06)
    assert x == pytest.approx((104.5 - 100.0) / 100 * 10, abs=0.06)   # centre of the 30 in-body columns


def test_an_instance_split_evenly_between_two_depths_still_gets_a_position():
    depth = np.full((20, 40), 1.0, np.float32)
    depth[:, 20:] = 11.0                                # a depth edge in the middle of the mask
    labels = np.zeros((20, 40), np.int32)
    labels[5:15, 18:22] = 3                             # 20 px at 1 m, 20 px at 11 m: the median 6 m is in neither
    K = intrinsics_matrix(10.0, 10.0, 20.0, 10.0)
    (ob,) = instance_depths(depth, labels, K)
    assert ob.distance == pytest.approx(6.0) and ob.pixels == 40
    x, y, z = ob.position
    assert np.isfinite([x, y, z]).all() and z == pytest.approx(6.0)
    assert np.isfinite(ob.size).all()


def test_instances_without_K_or_too_small_are_handled():
    depth = np.full((20, 20), 3.0, np.float32)
    labels = np.zeros((20, 20), np.int32)
    labels[:5, :5] = 1                                  # 25 px
    labels[10, 10] = 2                                  # 1 px: below min_pixels
    obs = instance_depths(depth, labels, None)
    assert [o.instance_id for o in obs] == [1] and obs[0].position is None and obs[0].distance == 3.0
    with pytest.raises(ValueError, match='same size'):
        instance_depths(depth, labels[:10], None)


# ------------------------------------------------------------------ mask pairing
def test_pairer_pairs_late_masks_and_never_blocks_depth():
    p = MaskPairer(queue_size=5, slop_s=0.01, max_wait_s=10.0)
    assert p.add_depth(1000, 'd1', now=0.0) == []       # depth first; mask comes later
    assert p.add_mask(1000, 'm1', now=0.1) == [('d1', 'm1')]
    assert p.add_mask(2000, 'm2', now=0.2) == []        # mask first; depth comes later
    assert p.add_depth(2000, 'd2', now=0.3) == [('d2', 'm2')]


def test_pairer_picks_the_nearest_mask_within_slop_and_gives_up_otherwise():
    ms = 1_000_000
    p = MaskPairer(queue_size=5, slop_s=0.020, max_wait_s=10.0)
    p.add_mask(90 * ms, 'early', now=0)
    assert p.add_depth(100 * ms, 'd', now=0) == []      # a nearer mask may still come
    assert p.add_mask(105 * ms, 'close', now=0) == [('d', 'close')]
    p.add_depth(200 * ms, 'lonely', now=0)
    assert p.add_mask(300 * ms, 'far', now=0) == []     # nearest is 100 ms away > slop
    assert p.stats.unpaired == 1 and p.stats.paired == 1


def test_pairer_decides_after_max_wait_and_on_overflow():
    ms = 1_000_000
    p = MaskPairer(queue_size=2, slop_s=0.020, max_wait_s=0.5)
    p.add_mask(95 * ms, 'm', now=0)
    p.add_depth(100 * ms, 'd', now=0)
    assert p.poll(now=0.4) == []
    assert p.poll(now=0.6) == [('d', 'm')]              # mask stream stalled: best within slop after max_wait
    for i in range(3):
        p.add_depth((500 + i) * ms, f'x{i}', now=1.0)
    assert p.stats.unpaired == 1                        # the oldest was pushed out without a mask


@pytest.mark.parametrize('first', ['depth', 'mask'])
def test_pairer_pairs_again_after_the_stamps_jump_backwards(first):
    """A looped bag / restarted driver / sim-time reset: the old timeline is dropped, the new one pairs."""
    s = 1_000_000_000
    jumps = []
    p = MaskPairer(queue_size=5, slop_s=0.02, max_wait_s=10.0)
    p.on_time_jump = lambda *a: jumps.append(a)       # (stream, stamp_ns, newest_ns) per detected jump
    for t in range(100, 120):                            # 20 s of paired frames, the mask queue full
        p.add_depth(t * s, f'd{t}', now=0)
        assert p.add_mask(t * s, f'm{t}', now=0) == [(f'd{t}', f'm{t}')]
    p.add_depth(120 * s, 'pending', now=0)               # from the old timeline, still waiting
    for t in range(10, 15):                              # back to 10 s: both streams, either order
        if first == 'depth':
            assert p.add_depth(t * s, f'd{t}', now=0) == []
            assert p.add_mask(t * s, f'm{t}', now=0) == [(f'd{t}', f'm{t}')]
        else:
            assert p.add_mask(t * s, f'm{t}', now=0) == []
            assert p.add_depth(t * s, f'd{t}', now=0) == [(f'd{t}', f'm{t}')]
    assert p.stats.paired == 25 and p.stats.time_jumps == 1 and len(jumps) == 1    # logged once
    assert jumps[0][1:] == (10 * s, (120 if first == 'depth' else 119) * s)
    assert p.stats.unpaired == 1                         # `pending` was given up at the jump, not paired with 10 s
    small = MaskPairer(queue_size=5, slop_s=0.02, max_wait_s=10.0)
    small.add_mask(100 * s, 'm', now=0)
    small.add_mask(100 * s - s // 2, 'late', now=0)      # 0.5 s back: within the tolerance, no reset
    assert small.stats.time_jumps == 0 and small.stats.paired == 0


# ------------------------------------------------------------------ rolling stats / colour
def test_rolling_window_rate_and_percentiles_forget_old_samples():
    w = RollingWindow(window_s=1.0)
    for i in range(11):
        w.add(float(i), now=10.0 + i * 0.1)
    assert w.rate(now=11.0) == pytest.approx(10.0)
    assert w.percentiles(now=11.0)[50] == pytest.approx(5.0)
    assert w.count(now=12.05) == 0 and w.percentiles(now=12.05) is None


def test_colorize_marks_invalid_black_and_near_warmer_than_far():
    d = np.array([[1.0, 80.0, np.nan]], np.float32)
    bgr = colorize_depth(d, 1.0, 80.0)
    assert bgr.shape == (1, 3, 3) and bgr.dtype == np.uint8
    assert (bgr[0, 2] == 0).all()
    assert bgr[0, 0, 2] > bgr[0, 0, 0] and bgr[0, 1, 0] > bgr[0, 1, 2]     # near red, far blue (BGR)
