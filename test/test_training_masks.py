"""Issue 17 §2: the pieces of the learned masks (objects.masks: learned), on small hand-made frames: the grouping
of moving regions and the seed rules, the ground target and its crop self-supervision, the instance network's
targets and their decoding (also through the mirrored image), the self-training's post-processing, the data
switch that makes stage 2 read learned masks, the stage registry and config, and the measurement.
The whole path through the command line is in test_training_recordings.py (the mask-free recording)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dynadepth_ros.instance_masks import centre_peaks, decode_instances
from training.masks.config import SeedsStageConfig
from training.masks.postprocess import PostprocessRules, add_missed_seeds, merge_overlaps, postprocess
from training.masks.seeds import (floating_pixels, flow_disagreement, group_moving_regions, moving_pixels,
                                  moving_pixels_optical, optical_flow, rigid_flow, seed_masks)

H, W = 48, 96


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two id maps split the pixels the same way (ids may differ)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = {(int(x), int(y)) for x, y in zip(a[a > 0], b[b > 0])}
    return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


# ---- grouping and seeds --------------------------------------------------------------------------------------
def _scene():
    """Depth of a street (far), two cars touching in the image at 8 m and 20 m, a moving blob on its own."""
    depth = np.full((H, W), 40.0, np.float32)
    flow = np.zeros((4, H, W), np.float32)
    depth[20:36, 10:30] = 8.0              # car A, near
    depth[22:36, 30:50] = 20.0             # car B, behind A, touching it in the image
    depth[25:36, 70:85] = 12.0             # car C
    for sl in ((slice(20, 36), slice(10, 30)), (slice(22, 36), slice(30, 50)), (slice(25, 36), slice(70, 85))):
        flow[(0, *sl)] = 2.0               # the same motion: only depth separates A and B
        flow[(2, *sl)] = -2.0
    flow += 0.01 * np.random.default_rng(0).standard_normal(flow.shape).astype(np.float32)
    ground = np.zeros((H, W), bool)
    ground[36:] = True
    return depth, flow, ground


def test_moving_pixels_follow_the_frames_own_flow_level_and_leave_the_ground_out():
    cfg = SeedsStageConfig(flow_threshold_px=0.0, contrast_factor=3.0)
    mag = np.full((H, W), 0.5, np.float32)         # a frame where everything moves a little (ego-motion residue)
    mag[10:20, 10:20] = 3.0
    ground = np.zeros((H, W), bool)
    ground[15:] = True
    m = moving_pixels(mag, ground, cfg)
    assert m[10:15, 10:20].all() and not m[15:].any() and m.sum() == 50
    assert not moving_pixels(mag, None, SeedsStageConfig(flow_threshold_px=5.0)).any()


def _texture(h, w, seed=0):
    """uint8 [h,w,3]: smooth random texture DIS can follow (blurred noise)."""
    import cv2
    rng = np.random.default_rng(seed)
    x = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.float32), (0, 0), 1.5)
    return np.clip((x - x.mean()) * 3 + 128, 0, 255).astype(np.uint8)


def test_rigid_flow_is_the_static_worlds_flow_and_nan_out_of_view():
    K = np.array([[100.0, 0, 50], [0, 100.0, 20], [0, 0, 1]])
    depth = np.full((40, 100), 10.0, np.float32)
    T = np.eye(4)
    T[2, 3] = -1.0                                   # the camera moves 1 m forward: the wall is 9 m away
    f = rigid_flow(depth, K, T)
    v, u = np.mgrid[0:40, 0:100]
    pu, pv = (u - 50) * 10 / 9 + 50, (v - 20) * 10 / 9 + 20
    inside = (pu >= 0) & (pu <= 99) & (pv >= 0) & (pv <= 39)
    assert 0.5 < inside.mean() < 0.95
    np.testing.assert_allclose(f[0][inside], (pu - u)[inside], atol=1e-4)
    np.testing.assert_allclose(f[1][inside], (pv - v)[inside], atol=1e-4)
    assert np.isnan(f[:, ~inside]).all()             # the image's edges leave the view
    T[2, 3] = -20.0                                  # the wall ends behind the camera
    assert np.isnan(rigid_flow(depth, K, T)).all()


def test_optical_flow_follows_a_shift_and_marks_what_leaves_the_image():
    a = _texture(48, 96)
    b = np.roll(a, 4, axis=1)                        # the whole image moves 4 px to the right
    f = optical_flow(a, b)
    core = f[:, 8:-8, 8:-12]
    assert np.isfinite(core).mean() > 0.95
    np.testing.assert_allclose(np.nanmedian(core[0]), 4.0, atol=0.2)
    np.testing.assert_allclose(np.nanmedian(core[1]), 0.0, atol=0.2)
    assert np.isnan(f[:, :, -3:]).all()              # matched outside the image: not trusted
    with pytest.raises(ValueError, match='one size'):
        optical_flow(a, a[:, :50])


def test_flow_disagreement_is_the_log_ratio_and_undecided_near_the_focus_of_expansion():
    rig = np.zeros((2, 4, 4), np.float32)
    rig[0] = 4.0
    rig[0, 0, 0] = 0.5                               # too little flow to tell: undecided
    obs = rig.copy()
    obs[0, 1] = 1.0                                  # row 1 moves a quarter of what a static world would
    obs[0, 2] = np.nan                               # row 2: the optical flow is not trusted in this direction
    d = flow_disagreement([obs, rig], [rig, rig], min_rigid_px=1.0)
    assert np.isnan(d[0, 0])
    np.testing.assert_allclose(d[1], np.log(0.25) / 2, rtol=1e-5)     # averaged with the other direction (0)
    np.testing.assert_allclose(d[2], 0.0, atol=1e-6)                  # only the trusted direction counts
    np.testing.assert_allclose(d[3], 0.0, atol=1e-6)
    cfg = SeedsStageConfig(optical_log_ratio=0.5)
    ground = np.zeros((4, 4), bool)
    ground[1, :2] = True
    m = moving_pixels_optical(d, ground, cfg)
    assert m[1, 2:].all() and m.sum() == 2           # |log 0.25 / 2| = 0.69 >= 0.5; the ground and NaN never move


def test_optical_cue_has_its_own_threshold_for_oncoming_traffic():
    """An oncoming car as fast as the camera shows about twice the flow of a static one (log ratio ln 2 = 0.69),
    one that travels with the camera almost none (-2.3): with 1.0 on both sides (the default) only the second
    moves; the positive side's own threshold (optical_log_ratio_towards 0.4) finds the oncoming one too, not
    the static scene's small errors; a higher one does not."""
    d = np.array([[np.log(2.0), -2.3, 0.2, -0.5, np.nan]], np.float32)
    symmetric = moving_pixels_optical(d, None, SeedsStageConfig(optical_log_ratio=1.0))
    assert symmetric.tolist() == [[False, True, False, False, False]]
    towards = moving_pixels_optical(d, None, SeedsStageConfig(optical_log_ratio=1.0, optical_log_ratio_towards=0.4))
    assert towards.tolist() == [[True, True, False, False, False]]
    strict = moving_pixels_optical(d, None, SeedsStageConfig(optical_log_ratio=1.0, optical_log_ratio_towards=0.8))
    assert strict.tolist() == [[False, True, False, False, False]]
    with pytest.raises(ValueError, match='optical_log_ratio_towards'):
        SeedsStageConfig(optical_log_ratio_towards=-0.1)


def test_optical_cue_finds_an_object_that_travels_with_the_camera():
    """The case stage 1 explains away: the camera slides sideways past a wall 10 m away and a car 5 m away moves
    with it, so the car stays put in the image while stage 1's depth (right or wrong) says it should slide."""
    H_, W_ = 48, 128
    K = np.array([[100.0, 0, 64], [0, 100.0, 24], [0, 0, 1]])
    wall = _texture(H_, W_ + 40, seed=1)
    car = _texture(16, 24, seed=2)
    def frame(k):                                    # the camera moves 0.2 m right per frame: the wall 2 px left
        img = wall[:, 20 + 2 * k:20 + 2 * k + W_].copy()
        img[20:36, 50:74] = car
        return img
    depth = np.full((H_, W_), 10.0, np.float32)
    depth[20:36, 50:74] = 5.0                        # stage 1's depth of the car (a static car would slide 4 px)
    T_next, T_prev = np.eye(4), np.eye(4)
    T_next[0, 3], T_prev[0, 3] = -0.2, 0.2
    obs = [optical_flow(frame(1), frame(0)), optical_flow(frame(1), frame(2))]
    rig = [rigid_flow(depth, K, T_prev), rigid_flow(depth, K, T_next)]
    d = flow_disagreement(obs, rig, min_rigid_px=1.0)
    moving = moving_pixels_optical(d, None, SeedsStageConfig(optical_log_ratio=1.0))
    car_px = np.zeros((H_, W_), bool)
    car_px[22:34, 53:71] = True
    assert moving[car_px].mean() > 0.8
    wall_px = np.zeros((H_, W_), bool)
    wall_px[4:16, 10:118] = True
    assert moving[wall_px].mean() < 0.05
    with pytest.raises(ValueError, match='motion: network'):
        SeedsStageConfig(method='slots', motion='optical')


def _street(camera_height=1.5):
    """A level road seen by a camera camera_height m above it: (K, plane, depth of the road [H,W] with +inf above
    the horizon, ground bool [H,W]) at H x W."""
    from training.ground import Plane
    K = np.array([[60.0, 0, W / 2], [0, 60.0, 12.0], [0, 0, 1]])
    plane = Plane(normal=np.array([0.0, 1.0, 0.0]), height=camera_height, inliers=100)
    v, u = np.mgrid[0:H, 0:W]
    road = plane.depth_at(K, u + 0.5, v + 0.5)
    ground = np.isfinite(road) & (road < 80)
    return K, plane, np.where(np.isfinite(road), road, 80.0).astype(np.float32), ground


def test_floating_cue_finds_an_object_stage_1_put_far_behind_where_it_stands():
    """masks.seeds.floating_log_ratio: the lead truck that travels at the camera's speed, which stage 1 pushed to
    40 m although it stands on the road at ~8 m, is flagged; the same truck at its right depth is not; a building
    seen over the roof of a car stage 1 got right is not (the column's run starts at the car's contact depth);
    an object cut by the image's bottom and a frame without a road plane flag nothing."""
    K, plane, road, ground = _street()
    contact = int(np.argmax(road[:, 0] < 8.0))            # the first row whose road is nearer than 8 m
    zc = float(plane.depth_at(K, np.array([0.5]), np.array([contact + 0.0]))[0])
    truck = np.zeros((H, W), bool)
    truck[contact - 14:contact, 30:50] = True              # stands on the road at row `contact`
    for stage1_depth, flagged in ((40.0, True), (zc, False), (1.2 * zc, False)):
        depth = road.copy()
        depth[truck] = stage1_depth
        g = ground & ~truck
        out = floating_pixels(depth, g, K, plane, log_ratio=0.5)
        assert out[truck].mean() > 0.95 if flagged else not out[truck].any()
        assert not out[~truck].any()
    # a building 40 m away seen above a car (12 rows tall) that stands at the contact and that stage 1 got right
    depth = road.copy()
    scene = np.zeros((H, W), bool)
    scene[:contact, 60:80] = True
    depth[:contact, 60:80] = 40.0
    depth[contact - 12:contact, 60:80] = zc
    assert not floating_pixels(depth, ground & ~scene, K, plane, log_ratio=0.5).any()
    assert floating_pixels(depth, ground & ~scene, K, plane, log_ratio=0.5, rows=13)[:contact - 12, 60:80].all()
    # contact out of view, no plane, off
    depth = road.copy()
    depth[H - 10:, 30:50] = 40.0
    assert not floating_pixels(depth, ground & ~(depth == 40.0), K, plane, log_ratio=0.5).any()
    depth[truck] = 40.0
    assert not floating_pixels(depth, ground & ~truck, K, None, log_ratio=0.5).any()
    assert not floating_pixels(depth, ground & ~truck, K, plane, log_ratio=0.0).any()


def test_floating_cue_is_off_by_default_checked_and_hashed_only_when_on():
    import json

    from training.config import load_config
    from training.stages.mask_seeds import hash_parts

    assert SeedsStageConfig().floating_log_ratio == 0.0
    for bad in ({'floating_log_ratio': -0.1}, {'floating_log_ratio': float('nan')}, {'floating_rows': 0}):
        with pytest.raises(ValueError, match='floating'):
            SeedsStageConfig(**bad)

    def seeds_hash(*overrides):
        return json.dumps(hash_parts(load_config('ci-tiny', overrides=['objects.masks=learned', *overrides]))[0],
                          sort_keys=True)
    assert seeds_hash() == seeds_hash('masks.seeds.floating_log_ratio=0')
    assert seeds_hash() != seeds_hash('masks.seeds.floating_log_ratio=0.5')
    # with it on, the seeds also read stage 1's normals as the ground stage does
    assert seeds_hash() == seeds_hash('masks.ground.angle_deg=12')
    assert seeds_hash('masks.seeds.floating_log_ratio=0.5') != seeds_hash('masks.seeds.floating_log_ratio=0.5',
                                                                          'masks.ground.angle_deg=12')


def test_grouping_cuts_at_depth_edges_and_keeps_one_object_whole():
    depth, flow, ground = _scene()
    cfg = SeedsStageConfig(flow_threshold_px=0.5, contrast_factor=0.0)
    moving = moving_pixels(np.abs(flow).sum(0) / 2, ground, cfg)
    groups = group_moving_regions(moving, depth, flow, cfg)
    a, b, c = groups[28, 20], groups[28, 40], groups[30, 77]
    assert len({a, b, c}) == 3 and 0 not in (a, b, c)
    assert (groups == a).sum() == 16 * 20 and (groups == b).sum() == 14 * 20 and (groups == c).sum() == 11 * 15
    assert (groups[~moving] == 0).all()
    # without the depth cut A and B are one group
    merged = group_moving_regions(moving, np.full((H, W), 10.0, np.float32), flow, cfg)
    assert merged[28, 20] == merged[28, 40]


def test_seed_rules_keep_compact_grounded_objects_and_drop_the_rest():
    cfg = SeedsStageConfig(min_area_fraction=0.01, max_box_fraction=0.5, min_fill=0.5, require_ground_contact=True,
                           contact_px=3, close_px=3)
    ground = np.zeros((H, W), bool)
    ground[36:] = True
    groups = np.zeros((H, W), np.int32)
    groups[24:36, 5:25] = 1                                  # compact, stands on the ground: kept
    groups[2:12, 30:45] = 2                                  # floating (no ground below): dropped
    groups[30:31, 50:60] = 3                                 # 10 px: too small
    groups[20:36, 62:64] = 4                                 # an L: long thin bar + foot -> sparse
    groups[34:36, 62:90] = 4
    moving = groups > 0
    moving[28, 10] = False                                   # a hole the closing fills
    stats = {}
    seeds = seed_masks(groups, moving, ground, cfg, stats)
    assert stats == {'kept': 1, 'floating': 1, 'small': 1, 'sparse': 1}
    assert seeds.dtype == np.uint16 and int(seeds.max()) == 1
    assert seeds[24:36, 5:25].all() and (seeds > 0).sum() == 12 * 20
    relaxed = seed_masks(groups, moving, ground, SeedsStageConfig(min_area_fraction=0.01, require_ground_contact=False,
                                                                  close_px=3))
    assert int(relaxed.max()) == 2                           # the floating one too


# ---- ground target and loss ----------------------------------------------------------------------------------
def test_ground_target_from_normals_finds_the_road_and_not_a_wall():
    from training.config import load_config
    from training.stages.mask_ground import noisy_target

    cfg = load_config('ci-tiny', overrides=['masks.ground.step_px=2'])
    K = np.array([[80.0, 0, W / 2], [0, 80.0, H / 2], [0, 0, 1]])
    v = np.arange(H, dtype=np.float64)[:, None] + 0.5
    with np.errstate(divide='ignore'):
        road = np.where(v > H / 2 + 1, 1.5 * 80.0 / (v - H / 2), 0.0)   # camera 1.5 m above a flat road
    depth = np.where(road > 0, road, 30.0) * np.ones((1, W))               # a wall 30 m ahead above the horizon
    depth = np.minimum(depth, 30.0).astype(np.float32)
    target = noisy_target(depth, K, cfg)
    assert target.dtype == np.float32 and set(np.unique(target)) <= {0.0, 1.0}
    assert target[H - 8:H - 3, 5:W - 5].mean() > 0.95        # the road near the camera
    assert target[:H // 2 - 2].max() == 0                   # the wall


def test_ground_loss_with_crop_self_supervision_trains_the_lower_two_thirds():
    from training.networks.ground_net import GroundNet, ground_loss

    torch.manual_seed(0)
    net = GroundNet(width=4)
    rgb, disp = torch.rand(2, 3, 48, 96), torch.rand(2, 1, 48, 96)
    target = torch.zeros(2, 1, 48, 96)
    target[..., 32:, :] = 1
    loss0, logs0, previews = ground_loss(net, rgb, disp, target, 2.0, 0.0)
    loss1, logs1, _ = ground_loss(net, rgb, disp, target, 2.0, 0.5)
    assert {'crop_bce', 'extend_bce'} <= set(logs1) and not {'crop_bce', 'extend_bce'} & set(logs0)
    assert torch.isfinite(loss1) and loss1 > loss0
    loss1.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert previews['ground prediction mask'].shape == (1, 1, 48, 96)


# ---- instance network targets, decoding, flip ------------------------------------------------------------------
def _objects():
    ids = np.zeros((H, W), np.int32)
    ids[10:30, 5:25] = 1
    ids[12:30, 25:40] = 2              # touches object 1
    ids[30:44, 60:90] = 7
    return ids


def _perfect_outputs(ids):
    from training.networks.instance_net import instance_targets

    t = instance_targets(ids)
    return {'foreground': t['foreground'][None], 'centre': t['centre'][None], 'offset': t['offset'][None]}, t


def test_instance_targets_point_at_each_objects_centre():
    ids = _objects()
    _, t = _perfect_outputs(ids)
    assert t['foreground'].shape == (1, H, W) and t['offset'].shape == (2, H, W)
    ys, xs = np.nonzero(ids == 7)
    cx, cy = xs.mean(), ys.mean()
    assert np.allclose(xs + t['offset'][0][ids == 7], cx) and np.allclose(ys + t['offset'][1][ids == 7], cy)
    assert t['centre'][0, int(round(cy)), int(round(cx))] == pytest.approx(1.0)
    assert (t['offset'][:, ids == 0] == 0).all()


def test_decoding_perfect_outputs_gives_the_objects_back_also_through_the_mirror():
    from training.stages.mask_instances import _flip_outputs

    ids = _objects()
    out, _ = _perfect_outputs(ids)
    got, scores = decode_instances(out['foreground'][0, 0], out['centre'][0, 0], out['offset'][0], score_threshold=0.5)
    assert _same_partition(got, ids) and len(scores) == 3 and got.dtype == np.uint16
    # the network sees the mirrored image: its outputs are the mirror of these, x offsets negated
    mirrored, _ = _perfect_outputs(ids[:, ::-1].copy())
    back = _flip_outputs(mirrored)
    again, _ = decode_instances(back['foreground'][0, 0], back['centre'][0, 0], back['offset'][0], score_threshold=0.5)
    assert _same_partition(again, ids)
    broken = {k: v[..., ::-1].copy() for k, v in mirrored.items()}          # forgetting to negate x
    wrong, _ = decode_instances(broken['foreground'][0, 0], broken['centre'][0, 0], broken['offset'][0],
                                score_threshold=0.5)
    assert not _same_partition(wrong, ids)


def test_decoding_thresholds_scores_and_drops_small_instances():
    heat = np.zeros((H, W), np.float32)
    heat[10, 10], heat[10, 11] = 0.9, 0.9            # a plateau counts once
    heat[30, 70] = 0.3
    pts, sc = centre_peaks(heat, 0.2, 3)
    assert len(pts) == 2 and sc[0] == pytest.approx(0.9)
    fg = np.zeros((H, W), np.float32)
    fg[5:15, 5:15] = 1
    fg[29:31, 69:71] = 1
    ids, scores = decode_instances(fg, heat, np.zeros((2, H, W), np.float32), score_threshold=0.2, min_area=5)
    assert int(ids.max()) == 1 and scores == [pytest.approx(0.9)] and (ids > 0).sum() == 100
    none, _ = decode_instances(fg, heat, np.zeros((2, H, W), np.float32), score_threshold=0.95)
    assert not none.any()


# ---- post-processing -------------------------------------------------------------------------------------------
def test_postprocess_merges_duplicates_splits_overlaps_and_removes_road_and_sparse_masks():
    def box(t, b, l, r):
        m = np.zeros((H, W), bool)
        m[t:b, l:r] = True
        return m

    a = box(10, 30, 10, 30)
    a_again = box(12, 32, 10, 30)                     # the mirrored pass found A again
    b = box(20, 40, 25, 45)                           # overlaps A a little
    thin = box(5, 6, 50, 90) | box(5, 40, 50, 51)     # an L: fill < 0.5
    on_road = box(40, 48, 60, 90)                     # entirely road
    kept, scores, counts = merge_overlaps([a, a_again, b], [0.9, 0.8, 0.7])
    assert counts['merged'] == 1 and len(kept) == 2 and (kept[0] == (a | a_again)).all()
    assert not (kept[1] & kept[0]).any()              # B lost the shared pixels to the higher-scoring A
    road = np.zeros((H, W), bool)
    road[38:] = True
    stats = {}
    ids, sc = postprocess([a, a_again, b, thin, on_road], [0.9, 0.8, 0.7, 0.95, 0.6], road,
                          PostprocessRules(min_area_fraction=0.01, min_fill=0.5), stats)
    assert int(ids.max()) == 2 and sc == [0.9, 0.7] and not ids[road].any()
    assert stats == {'road': 1, 'merged': 1, 'sparse': 1, 'kept': 2}


def test_seeds_the_network_missed_join_its_masks_on_free_pixels_only():
    net = np.zeros((H, W), np.uint16)
    net[10:30, 10:30] = 1                              # the network found object A
    seeds = np.zeros((H, W), np.uint16)
    seeds[12:28, 12:28] = 4                            # A's seed: found (all inside mask 1)
    seeds[20:40, 25:45] = 7                            # B: a quarter inside mask 1, missed
    seeds[40:44, 80:90] = 9                            # C: missed entirely
    out, added = add_missed_seeds(net, seeds)
    assert added == 2 and int(out.max()) == 3
    assert (out[net == 1] == 1).all()                  # the network's pixels stay its own
    b = out[20:40, 25:45]
    assert set(np.unique(b).tolist()) == {1, 2} and (b == 2).sum() == 400 - 5 * 10
    assert (out[40:44, 80:90] == 3).all()
    same, none = add_missed_seeds(net, None)
    assert none == 0 and np.array_equal(same, net)


# ---- slot attention ---------------------------------------------------------------------------------------------
def test_slot_inputs_are_white_where_still_and_slot_groups_drop_the_background():
    from training.networks.slot_attention import SlotAutoEncoder, slot_inputs, slot_loss
    from training.stages.mask_seeds import slot_groups

    depth, flow, ground = _scene()
    moving = np.abs(flow[:2]).sum(0) > 1
    x = slot_inputs(flow[:2], depth, moving, (24, 48))
    assert x.shape == (4, 24, 48) and np.allclose(x[:3, 0, 0], 1.0) and np.allclose(x[3, 0, 0], 1.0)
    torch.manual_seed(0)
    net = SlotAutoEncoder(slots=3, slot_dim=16, iterations=2, channels=8)
    batch = torch.from_numpy(np.stack([x, x]))
    loss, logs, _ = slot_loss(net, batch, torch.from_numpy((~moving[::2, ::2])[None, None].astype(np.float32))
                              .expand(2, 1, 24, 48).contiguous(), 0.2, 0.005, True)
    assert torch.isfinite(loss) and {'flow_mse', 'background_bce'} <= set(logs)
    groups = slot_groups(net, batch, H, W, 0.25)
    assert groups.shape == (2, H, W) and groups.dtype == np.int32
    for g in groups:                                  # the largest slot is gone
        ids, counts = np.unique(g, return_counts=True)
        assert 0 in ids and len(ids) <= 3             # at most slots - 1 groups besides 0


# ---- the data switch, registry and config --------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    from training.config import load_config
    from training.data import prepare_data

    root = tmp_path_factory.mktemp('data') / 'tiny'
    cfg = load_config('ci-tiny', overrides=[f'data.root={root}', 'data.synthetic.sequences={train: 1, val: 1, test: 0}',
                                            'data.synthetic.frames=5'])
    prepare_data(cfg.data)
    return cfg


def test_stage_2_reads_learned_masks_through_the_one_switch(tiny_data, tmp_path):
    from training.data import build_dataset
    from training.stages.outputs import LabelMaps, learned_masks_root

    cfg = tiny_data
    assert learned_masks_root(cfg, tmp_path) is None
    from training.config import load_config
    learned_cfg = load_config(config_file=_dump(cfg, tmp_path), overrides=['objects.masks=learned'])
    root = learned_masks_root(learned_cfg, tmp_path)
    assert root == tmp_path / 'masks' / 'instances'
    plain = build_dataset(cfg.data, 'train', augment=False)
    seq, t = plain.sample_location(0)
    gt = plain[0]['mask'].numpy()
    moving_gt = plain[0]['moving'].numpy()
    mine = np.zeros((cfg.data.height, cfg.data.width), np.uint16)
    mine[moving_gt] = 5                                    # one learned mask over the moving objects
    mine[:4, :4] = 9                                       # and one on nothing that moves
    LabelMaps(root).write('train', seq, t, mine)
    ds = build_dataset(learned_cfg.data, 'train', augment=False, masks=root)
    item = ds[0]
    assert np.array_equal(item['mask'].numpy(), mine.astype(np.int64))
    assert not np.array_equal(item['mask'].numpy(), gt)
    seq_obj = ds.sequences[ds.samples[0][0]]
    assert getattr(seq_obj, 'instances', None) is None                       # no classes of the data's ids
    assert seq_obj.moving_ids(t) == ({5} if moving_gt.any() else set())
    assert seq_obj.instance_mask(t + 1) is None                                # no learned mask there: none
    assert np.array_equal(item['frames_raw'].numpy(), plain[0]['frames_raw'].numpy())


def _dump(cfg, tmp_path):
    from training.config import dump_yaml

    path = tmp_path / 'cfg.yaml'
    path.write_text(dump_yaml(cfg))
    return path


def test_objects_masks_is_hashed_only_when_learned_and_decides_the_stages():
    from training.config import ConfigError, load_config
    from training.stages import STAGES, stages_for
    from training.stages import objects as objects_stage
    from training.stages.objects import correspondence_mode

    topic = load_config('ci-tiny')
    learned = load_config('ci-tiny', overrides=['objects.masks=learned'])
    assert 'masks' not in objects_stage.hash_parts(topic)[0]['objects']       # finished runs stay up to date
    assert objects_stage.hash_parts(learned)[0]['objects']['masks'] == 'learned'
    assert stages_for(topic) == ['scene', 'objects', 'dsa', 'final']
    assert stages_for(learned) == ['scene', 'ground', 'seeds', 'instances', 'objects', 'dsa', 'final']
    assert STAGES['objects'].requires_for(learned) == ('scene', 'instances')
    assert STAGES['objects'].requires_for(topic) == ('scene',)
    assert correspondence_mode(topic) == 'id' and correspondence_mode(learned) == 'splat'
    with pytest.raises(ConfigError, match='objects.masks'):
        load_config('ci-tiny', overrides=['objects.masks=maybe'])


def test_a_mask_stage_refuses_a_config_that_reads_the_datas_masks(tmp_path):
    from training.config import load_config
    from training.stages.runner import StageError, run_stage

    with pytest.raises(StageError, match='objects.masks=learned'):
        run_stage('ground', load_config('ci-tiny'), tmp_path / 'run')
    assert not (tmp_path / 'run').exists()


# ---- the measurement -------------------------------------------------------------------------------------------
def test_mask_scores_count_matches_at_iou_half_by_size():
    from training.masks.evaluate import MaskScores

    gt = np.zeros((100, 100), np.int32)
    gt[0:10, 0:10] = 1            # moving, 1 %: found
    gt[20:40, 20:40] = 2          # moving, 4 %: found only in part (IoU 0.25)
    gt[60:65, 60:64] = 3          # static, 0.2 %: found
    pred = np.zeros((100, 100), np.uint16)
    pred[0:10, 0:9] = 4           # IoU 0.9 with 1
    pred[20:30, 20:30] = 5        # IoU 0.25 with 2
    pred[60:65, 60:64] = 6
    pred[80:90, 80:90] = 7        # nothing there
    s = MaskScores()
    s.add(pred, gt, moving={1, 2})
    r = s.summary()['by_size']
    assert r['0.5-2 %']['moving'] == 1 and r['0.5-2 %']['recall_moving'] == 1.0
    assert r['>= 2 %']['moving'] == 1 and r['>= 2 %']['recall_moving'] == 0.0
    assert r['0.1-0.5 %']['static'] == 1 and r['0.1-0.5 %']['recall_static'] == 1.0
    assert r['all']['masks'] == 4 and r['all']['precision_moving'] == 0.25 and r['all']['precision_object'] == 0.5
    assert r['>= 0.5 %']['recall_moving'] == 0.5
    # pixel recall per motion against the camera's travel (where the data gives velocities): object 1 is oncoming
    # and 90 % covered, object 2 travels with the camera and a quarter covered
    s = MaskScores()
    s.add(pred, gt, moving={1, 2}, motions={1: 'oncoming', 2: 'same'})
    by = s.summary()['pixel_recall_by_motion']
    assert by == {'oncoming': {'pixels': 100, 'recall': 0.9}, 'same': {'pixels': 400, 'recall': 0.25}}
    assert MaskScores().summary()['pixel_recall_by_motion'] == {}


def test_the_pipeline_runs_the_mask_stages_only_when_learning_masks(tmp_path):
    from training.config import load_config
    from training.pipeline import run_pipeline, time_left
    from training.stages.runner import StageError

    with pytest.raises(StageError, match="does not run stage 'seeds'"):
        run_pipeline(load_config('ci-tiny'), tmp_path / 'run', until='seeds')
    learned = load_config('ci-tiny', overrides=['objects.masks=learned'])
    left, _ = time_left(learned, tmp_path / 'run', ['ground', 'instances'], 0)
    assert left > 0      # their steps count in the estimate


def test_the_optical_cue_of_the_seeds_stage_finds_the_moving_objects_given_right_depth_and_pose(tiny_data, tmp_path):
    """MotionCue (masks.seeds.motion: optical) on the generator's frames with its exact depth and camera motion
    in place of stage 1's: what it calls moving is mostly the generator's moving objects, and it finds most of
    them."""
    import cv2

    from training.data import build_dataset
    from training.stages.mask_seeds import MotionCue
    from training.stages.outputs import GroundMaps, ScenePredictions, save_npz_atomic

    import copy

    cfg = copy.deepcopy(tiny_data)
    cfg.masks.seeds.motion = 'optical'                   # ci-tiny's own stage 1 is too short for it
    ds = build_dataset(cfg.data, 'train', augment=False)
    H_, W_ = cfg.data.height, cfg.data.width
    preds, grounds = ScenePredictions(tmp_path / 'scene'), GroundMaps(tmp_path / 'ground')
    for i in range(len(ds)):
        seq_name, t = ds.sample_location(i)
        seq = ds.sequences[ds.samples[i][0]]
        gt = cv2.resize(seq.gt_depth(t).astype(np.float32), (W_, H_), interpolation=cv2.INTER_NEAREST)
        zero = np.zeros((2, H_, W_), np.float16)
        save_npz_atomic(preds.path('train', seq_name, t), depth=np.where(gt > 0, gt, 80.0), flow_prev=zero,
                        flow_next=zero)
        road = np.zeros((H_, W_), np.float32)          # the ground stage's part: the road, here the lower half's
        road[H_ // 2:] = ds[i]['mask'].numpy()[H_ // 2:] == 0    # pixels of no object (DIS misses its large flows)
        grounds.write('train', seq_name, t, road)

    def pose(index, off, frames):
        si, t = ds.samples[index]
        seq = ds.sequences[si]
        return np.linalg.inv(seq.pose(t + off)) @ seq.pose(t)

    cue = MotionCue(cfg, 'train', ds, preds, grounds, pose)
    on_movers = flagged = movers = 0
    for i in range(len(ds)):
        c = cue.frame(i)
        moving_gt = ds[i]['moving'].numpy().astype(bool)
        assert c['moving'].shape == (H_, W_) and c['edges_flow'].shape == (4, H_, W_)
        on_movers += int((c['moving'] & moving_gt).sum())
        flagged += int(c['moving'].sum())
        movers += int(moving_gt.sum())
    assert movers and flagged
    assert on_movers / flagged > 0.6 and on_movers / movers > 0.5, (flagged, on_movers, movers)
    with pytest.raises(ValueError, match='needs the camera motion'):
        MotionCue(cfg, 'train', ds, preds, grounds, None)
    # masks.seeds.floating_log_ratio: a world at its true depth has nothing standing far behind its contact, also
    # where the ground map stops short of the road's end (here at the image's middle row)
    cfg.masks.seeds.floating_log_ratio = 0.6
    cue = MotionCue(cfg, 'train', ds, preds, grounds, pose)
    floating = 0
    for i in range(len(ds)):
        where = ds.sample_location(i)
        floating += int(cue.floating(preds.frame('train', *where).depth, grounds.frame('train', *where) >= 0.5,
                                     ds[i]['K'].numpy()).sum())
    assert floating <= 0.002 * len(ds) * H_ * W_, floating
    assert cue.frame(0)['moving'].shape == (H_, W_)
