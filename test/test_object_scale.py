"""Per-object scale (dynadepth_ros.object_scale): is a moving object seen at the scene's scale?"""
import math

import numpy as np
import pytest

from dynadepth_ros.object_scale import (ObjectScaleAccumulator, distance_bin, ego_direction, motion_class,
                                        object_scales, scale_table)


def _frame(depths_and_flags, width=40):
    """One frame with a block per instance: [(gt depth, pred/gt, moving, velocity)], on a 5 m background."""
    h = 10 * len(depths_and_flags)
    gt = np.full((h, width), 5.0, np.float32)
    pred = gt.copy()
    mask = np.zeros((h, width), np.int32)
    instances = []
    for k, (depth, scale, moving, velocity) in enumerate(depths_and_flags):
        rows = slice(10 * k, 10 * k + 10)
        gt[rows, :10] = depth
        pred[rows, :10] = depth * scale
        mask[rows, :10] = k + 1
        instances.append({'id': k + 1, 'class': 'car', 'moving': moving, 'velocity': velocity})
    return gt, pred, mask, instances


def test_motion_class_against_the_ego_direction():
    ego = np.array([0.0, 0.0, 1.0])
    assert motion_class([0, 0, 8], ego) == 'same'
    assert motion_class([0.5, 0, -8], ego) == 'oncoming'
    assert motion_class([6, 0, 0.5], ego) == 'crossing'
    assert motion_class([0, 0, 0], ego) == 'crossing'     # no direction to compare
    assert motion_class([0, 0, 8], None) == 'crossing'


def test_ego_direction_from_poses_and_standing_still():
    poses = np.stack([np.eye(4) for _ in range(3)])
    for i, p in enumerate(poses):
        p[:3, 3] = (2.0 * i, 0.0, 0.0)                  # driving along +x
    assert np.allclose(ego_direction(poses, 1) / 4.0, [1, 0, 0])
    still = np.stack([np.eye(4)] * 3)
    assert np.allclose(ego_direction(still, 1), [0, 0, 1])   # the optical axis
    assert ego_direction(None, 0) is None


def test_object_scales_per_instance_and_small_objects_skipped():
    gt, pred, mask, inst = _frame([(8.0, 1.3, True, [0, 0, 5]), (25.0, 1.0, False, None)])
    mask[0, 20] = 3                                      # one pixel: below min_pixels
    inst.append({'id': 3, 'moving': True, 'velocity': [0, 0, 1]})
    recs = object_scales(gt, pred, mask, inst, ego_direction=[0, 0, 1])
    assert [r['id'] for r in recs] == [1, 2]
    assert recs[0]['scale'] == pytest.approx(1.3) and recs[0]['motion'] == 'same' and recs[0]['moving']
    assert recs[1]['scale'] == pytest.approx(1.0) and recs[1]['motion'] == 'static'
    assert recs[0]['distance'] == pytest.approx(8.0) and recs[1]['distance'] == pytest.approx(25.0)
    with pytest.raises(ValueError, match='one shape'):
        object_scales(gt, pred[:5], mask, inst)


def test_invalid_ground_truth_pixels_do_not_count():
    gt, pred, mask, inst = _frame([(8.0, 1.3, True, [0, 0, 5])])
    gt[:, :5] = 0.0                                      # half the object without GT
    pred[:, 5:10] = np.nan                               # the other half without a prediction
    assert object_scales(gt, pred, mask, inst) == []


def test_summary_ratio_of_moving_to_static_objects_by_distance():
    acc = ObjectScaleAccumulator()
    # near: moving seen 30 % farther than static; far: both at 0.8
    frames = [[(6.0, 1.3, True, [0, 0, 5]), (7.0, 1.0, False, None)],
              [(5.0, 1.3, True, [0, 0, -5]), (8.0, 1.0, False, None)],
              [(50.0, 0.8, True, [5, 0, 0]), (60.0, 0.8, False, None)]]
    for f in frames:
        gt, pred, mask, inst = _frame(f)
        acc.add(object_scales(gt, pred, mask, inst, ego_direction=[0, 0, 1]))
    s = acc.summary()
    near = distance_bin(6.0)
    assert s['moving_over_static_by_distance'][near] == pytest.approx(1.3)
    assert s['moving_over_static_by_distance'][distance_bin(55.0)] == pytest.approx(1.0)
    assert s['moving_over_static_by_distance'][distance_bin(15.0)] is None
    assert s['groups']['moving/same']['objects'] == 1 and s['groups']['moving/oncoming']['objects'] == 1
    assert s['groups']['static']['median'] == pytest.approx(1.0)
    assert s['groups']['moving']['abs_log'] == pytest.approx(math.log(1.3))
    table = scale_table({'stage1': s, 'final': s})
    assert f'| **moving / static, {near}** | | **1.30** | **1.30** |' in table
    assert '| moving/same | 1 |' in table


def test_a_model_right_on_moving_objects_scores_one():
    acc = ObjectScaleAccumulator()
    gt, pred, mask, inst = _frame([(9.0, 0.9, True, [0, 0, 5]), (9.5, 0.9, False, None)])
    acc.add(object_scales(gt, pred, mask, inst, ego_direction=[0, 0, 1]))
    # a global scale error (0.9) does not count against the ratio
    assert acc.summary()['moving_over_static'] == pytest.approx(1.0)
