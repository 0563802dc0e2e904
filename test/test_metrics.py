"""dynadepth_ros.metrics against a hand-computed example and the Eigen et al. (2014) definitions."""
import math

import numpy as np
import pytest

from dynadepth_ros.metrics import METRIC_NAMES, MetricAccumulator, eigen_metrics, evaluate_frame, format_table, valid_mask

# gt and pred of five pixels; ratios max(gt/pred, pred/gt) = 2, 1, 1.5, 1, 1.8
GT = [1.0, 2.0, 3.0, 10.0, 18.0]
PRED = [2.0, 2.0, 2.0, 10.0, 10.0]
# worked out by hand (see the sums in the comments)
HAND = {
    'abs_rel': (1 / 1 + 0 + 1 / 3 + 0 + 8 / 18) / 5,              # 0.355556
    'sq_rel': (1 / 1 + 0 + 1 / 3 + 0 + 64 / 18) / 5,              # 0.977778
    'rmse': math.sqrt((1 + 0 + 1 + 0 + 64) / 5),                   # 3.633180
    'rmse_log': math.sqrt((math.log(2) ** 2 + math.log(1.5) ** 2 + math.log(1.8) ** 2) / 5),  # 0.445050
    'a1': 2 / 5,    # ratios < 1.25: the two exact pixels
    'a2': 3 / 5,    # < 1.5625 adds 1.5
    'a3': 4 / 5,    # < 1.953125 adds 1.8, not 2
}


def test_hand_computed_example():
    got = eigen_metrics(np.array(GT), np.array(PRED))
    assert set(got) == set(METRIC_NAMES)
    for k, v in HAND.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k
    assert got['abs_rel'] == pytest.approx(0.355556, abs=1e-6)
    assert got['rmse'] == pytest.approx(3.633180, abs=1e-6)
    assert got['rmse_log'] == pytest.approx(0.445050, abs=1e-6)


def test_matches_eigen_definitions_on_random_data():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 80, 1000)
    pred = gt * rng.uniform(0.5, 1.6, 1000)
    got = eigen_metrics(gt, pred)
    n = gt.size
    ratio = [max(g / p, p / g) for g, p in zip(gt, pred)]
    ref = {
        'abs_rel': sum(abs(g - p) / g for g, p in zip(gt, pred)) / n,
        'sq_rel': sum((g - p) ** 2 / g for g, p in zip(gt, pred)) / n,
        'rmse': math.sqrt(sum((g - p) ** 2 for g, p in zip(gt, pred)) / n),
        'rmse_log': math.sqrt(sum((math.log(g) - math.log(p)) ** 2 for g, p in zip(gt, pred)) / n),
        'a1': sum(r < 1.25 for r in ratio) / n, 'a2': sum(r < 1.25 ** 2 for r in ratio) / n,
        'a3': sum(r < 1.25 ** 3 for r in ratio) / n,
    }
    for k in METRIC_NAMES:
        assert got[k] == pytest.approx(ref[k], rel=1e-9), k


def test_no_valid_pixel_is_an_error():
    with pytest.raises(ValueError, match='at least one valid pixel'):
        eigen_metrics(np.array([]), np.array([]))


def test_valid_pixels_exclude_invalid_gt_cap_and_bad_predictions():
    gt = np.array([[np.nan, 0.0, 5.0, 80.0, 90.0, 5.0, 5.0]], np.float32)
    pred = np.array([[5.0, 5.0, 5.0, 5.0, 5.0, np.nan, -1.0]], np.float32)
    assert valid_mask(gt, pred, 1e-3, 80.0).tolist() == [[False, False, True, False, False, False, False]]


def test_median_scaling_is_one_ratio_per_frame_applied_to_every_region():
    gt = np.full((4, 4), 10.0, np.float32)
    pred = np.full((4, 4), 5.0, np.float32)     # background: half the GT
    dyn = np.zeros((4, 4), bool)
    dyn[0, :2] = True
    pred[dyn] = 20.0                             # dynamic pixels: twice the GT
    r = evaluate_frame(gt, pred, {'dynamic': dyn, 'static': ~dyn})
    assert r['scale'] == pytest.approx(2.0)      # median(gt)/median(pred) over all 16 pixels
    assert r['median_scaled']['static']['abs_rel'] == pytest.approx(0.0, abs=1e-7)
    # the frame's ratio, not a ratio of its own, applies to the dynamic region: 20*2 = 40 vs 10
    assert r['median_scaled']['dynamic']['abs_rel'] == pytest.approx(3.0)
    assert r['metric']['static']['abs_rel'] == pytest.approx(0.5)
    assert r['metric']['dynamic']['abs_rel'] == pytest.approx(1.0)
    assert r['valid_pixels'] == {'all': 16, 'dynamic': 2, 'static': 14}


def test_predictions_are_clamped_to_the_depth_cap():
    gt = np.array([[70.0]], np.float32)
    pred = np.array([[200.0]], np.float32)
    r = evaluate_frame(gt, pred, max_depth=80.0)
    assert r['metric']['all']['abs_rel'] == pytest.approx(10 / 70)


def test_accumulator_averages_per_image_and_skips_empty_regions():
    acc = MetricAccumulator()
    # frame 1: 1 pixel, abs_rel 0.5; frame 2: 100 pixels, abs_rel 0 → mean over images = 0.25
    acc.add(evaluate_frame(np.array([[2.0]], np.float32), np.array([[1.0]], np.float32)))
    r2 = evaluate_frame(np.full((10, 10), 3.0, np.float32), np.full((10, 10), 3.0, np.float32),
                        {'dynamic': np.zeros((10, 10), bool)})
    assert r2['metric']['dynamic'] is None
    acc.add(r2)
    s = acc.summary()
    assert s['metric']['all']['abs_rel'] == pytest.approx(0.25)
    assert s['metric']['all']['frames'] == 2 and s['metric']['all']['pixels'] == 101
    assert 'dynamic' not in s['metric']
    assert 'median_scaled' in format_table(s) and '0.2500' in format_table(s)
