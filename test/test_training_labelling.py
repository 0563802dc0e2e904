"""Static/dynamic labelling of instances from stage-1 outputs (training.stages.labelling): each cue on a
constructed frame whose answer is known — flow coverage, flow contrast, ground contact, central strip —
and which instances count at all."""
from __future__ import annotations

import json

import numpy as np
import pytest

from training.stages.labelling import LabellingConfig, label_frame
from training.stages.outputs import InstanceLabel, ScenePrediction

H, W = 96, 128
FY = 100.0
CY = 47.5
K = np.array([[100.0, 0, 63.5], [0, FY, CY], [0, 0, 1]])
CAM_HEIGHT = 1.5
BG_FLOW = 0.02

# two car-like boxes standing on the ground, left and right of the centre
CAR1 = (slice(55, 80), slice(10, 40))
CAR2 = (slice(60, 85), slice(85, 115))


def base_cfg(**kw):
    """Only the flow-coverage rule, unless a test enables another."""
    args = dict(flow_threshold_px=1.0, flow_coverage=0.5, contrast_factor=0.0, ground_tolerance=0.0,
                centre_strip=0.0)
    args.update(kw)
    return LabellingConfig(**args)


def contact_depth(bottom_row):
    """Depth of the ground at the bottom edge of pixel row `bottom_row` (where a box standing there touches it)."""
    return CAM_HEIGHT * FY / (bottom_row + 0.5 - CY)


class Frame:
    """A flat ground seen from 1.5 m (a far wall above the horizon), boxes with ids, a residual flow field."""

    def __init__(self):
        v = np.arange(H, dtype=np.float64)[:, None].repeat(W, 1)
        with np.errstate(divide='ignore'):
            g = np.where(v > CY, CAM_HEIGHT * FY / (v - CY), np.inf)
        self.depth = np.minimum(g, 60.0).astype(np.float32)
        self.mask = np.zeros((H, W), np.int64)
        self.flow = np.full((H, W), BG_FLOW, np.float32)    # per-pixel residual motion magnitude (px)

    def add(self, oid, box, depth_scale=1.0, flow=BG_FLOW):
        rows, cols = box
        self.mask[box] = oid
        z = contact_depth(rows.stop - 1) if rows.stop - 1 + 0.5 > CY else 40.0   # above the horizon: 40 m away
        self.depth[box] = z * depth_scale
        self.flow[box] = flow
        return self

    def prediction(self):
        """flow_prev/flow_next of opposite sign along x: the magnitude measure is self.flow."""
        fp = np.zeros((2, H, W), np.float32)
        fn = np.zeros((2, H, W), np.float32)
        fp[0], fn[0] = self.flow, -self.flow
        return ScenePrediction(depth=self.depth.copy(), flow_prev=fp, flow_next=fn)

    def label(self, cfg, classes=None):
        labels, masks = label_frame(self.mask, self.prediction(), K, cfg, classes=classes)
        return {lab.id: lab for lab in labels}, masks


def two_cars(flow1=2.0, flow2=BG_FLOW, scale2=1.0):
    return Frame().add(1, CAR1, flow=flow1).add(2, CAR2, depth_scale=scale2, flow=flow2)


def test_prediction_flow_magnitude_is_the_mean_of_both_directions():
    """The per-pixel motion measure the labelling uses: (Σ|flow_prev| + Σ|flow_next|) / 2."""
    fp = np.zeros((2, 2, 2), np.float32)
    fn = np.zeros((2, 2, 2), np.float32)
    fp[0, 0, 0], fp[1, 0, 0], fn[0, 0, 0] = 1.0, -2.0, 3.0
    mag = ScenePrediction(np.ones((2, 2), np.float32), fp, fn).flow_magnitude()
    assert mag[0, 0] == pytest.approx(3.0) and mag[1, 1] == 0.0


def test_flow_rule_labels_the_moving_instance_dynamic():
    """2 px residual flow on instance 1, 0.02 px elsewhere: 1 dynamic by its flow, 2 static."""
    labels, masks = two_cars().label(base_cfg())
    assert sorted(labels) == [1, 2]
    one, two = labels[1], labels[2]
    assert (one.label, one.dynamic, one.extra['cues']) == ('dynamic', True, ['flow'])
    assert (two.label, two.dynamic, two.extra['cues']) == ('static', False, [])
    assert one.area == 25 * 30 and two.area == 25 * 30
    assert one.extra['flow_coverage'] == pytest.approx(1.0) and two.extra['flow_coverage'] == 0.0
    assert np.array_equal(masks[1], np.pad(np.ones((25, 30), bool), ((55, H - 80), (10, W - 40))))
    # both boxes stand where the ground says they do
    assert one.extra['contact_ratio'] == pytest.approx(1.0, abs=0.01)
    assert two.extra['contact_ratio'] == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize('share, dynamic', [(0.4, False), (0.6, True)])
def test_flow_rule_needs_the_coverage_share_of_the_instance(share, dynamic):
    """Only the given share of instance 1's pixels moves by 2 px: dynamic iff the share reaches flow_coverage."""
    f = two_cars(flow1=BG_FLOW)
    rows = np.arange(55, 80)
    moving_rows = rows[:int(round(share * len(rows)))]
    f.flow[moving_rows[0]:moving_rows[-1] + 1, CAR1[1]] = 2.0
    labels, _ = f.label(base_cfg())
    assert labels[1].dynamic is dynamic
    assert labels[1].extra['flow_coverage'] == pytest.approx(share, abs=0.01)


def test_contrast_rule_finds_slow_movers_against_a_still_background():
    """0.3 px on instance 1 (under the 1 px threshold), 0.02 px on the background: dynamic by contrast
    (factor 3), static with the contrast rule off; a background moving as much makes it static again."""
    f = two_cars(flow1=0.3)
    labels, _ = f.label(base_cfg(contrast_factor=3.0))
    assert labels[1].dynamic and labels[1].extra['cues'] == ['contrast']
    assert not labels[2].dynamic
    assert labels[1].extra['background_flow_px'] == pytest.approx(BG_FLOW, abs=1e-4)
    labels, _ = f.label(base_cfg())
    assert not labels[1].dynamic
    f.flow[f.mask == 0] = 0.3
    labels, _ = f.label(base_cfg(contrast_factor=3.0))
    assert not labels[1].dynamic


def test_contrast_rule_respects_the_noise_floor():
    """A still background (0 px) does not make 0.01 px of noise on an instance a motion."""
    f = two_cars(flow1=0.01)
    f.flow[f.mask == 0] = 0.0
    labels, _ = f.label(base_cfg(contrast_factor=3.0, contrast_min_px=0.05))
    assert not labels[1].dynamic


@pytest.mark.parametrize('scale', [1.5, 0.6], ids=['too-far', 'too-near'])
def test_ground_rule_flags_a_depth_that_contradicts_the_ground_contact(scale):
    """Instance 2 (no flow) at 1.5x (0.6x) the depth of its contact with the ground: dynamic by the ground
    cue with tolerance 0.25, static with the rule off."""
    f = two_cars(flow1=BG_FLOW, scale2=scale)
    labels, _ = f.label(base_cfg(ground_tolerance=0.25))
    assert labels[2].dynamic and labels[2].extra['cues'] == ['ground']
    assert labels[2].extra['contact_ratio'] == pytest.approx(scale, rel=0.02)
    assert not labels[1].dynamic     # instance 1 stands where it should
    labels, _ = f.label(base_cfg(ground_tolerance=0.0))
    assert not labels[2].dynamic


def test_ground_rule_tolerates_small_contact_errors():
    f = two_cars(flow1=BG_FLOW, scale2=1.15)
    labels, _ = f.label(base_cfg(ground_tolerance=0.25))
    assert not labels[2].dynamic


def test_centre_strip_rule_flags_an_object_straight_ahead_on_the_ground():
    """An instance touching the central columns and standing on the ground is dynamic when the strip rule
    is on (reference: objects straight ahead with no residual flow), not when it is off; a central
    instance above the horizon (no ground contact) never is."""
    f = Frame().add(3, (slice(55, 75), slice(50, 62)))          # touches columns 60..67 (5 % of 128 around 63.5)
    f.add(4, (slice(5, 25), slice(58, 70)))                     # a sign above the horizon
    f.add(5, (slice(55, 75), slice(10, 30)))                    # on the ground, away from the centre
    labels, _ = f.label(base_cfg(centre_strip=0.05))
    assert labels[3].dynamic and labels[3].extra['cues'] == ['centre']
    assert not labels[4].dynamic and not labels[5].dynamic
    labels, _ = f.label(base_cfg(centre_strip=0.0))
    assert not labels[3].dynamic


def test_centre_strip_needs_the_instance_to_touch_the_strip():
    f = Frame().add(3, (slice(55, 75), slice(40, 58)))          # ends at column 57, short of the strip
    labels, _ = f.label(base_cfg(centre_strip=0.05))
    assert not labels[3].dynamic


def test_optical_rule_flags_an_object_that_moves_otherwise_than_its_depth_says():
    """Both cars without residual flow (stage 1 explained them away). The flow disagreement: car 1 moved at
    e^-1.2 of the flow its depth predicts (it travels with the camera), car 2 as predicted; car 1 is
    dynamic by the optical cue alone, car 2 static; with the cue off, or where too little of car 1 has a
    defined ratio (near the focus of expansion), car 1 is static."""
    f = two_cars(flow1=BG_FLOW)
    disagreement = np.full((H, W), 0.05, np.float32)
    disagreement[CAR1] = -1.2
    disagreement[CAR2] = 0.1

    def label(cfg, d):
        labels, _ = label_frame(f.mask, f.prediction(), K, cfg, disagreement=d)
        return {lab.id: lab for lab in labels}
    labels = label(base_cfg(optical_log_ratio=0.7), disagreement)
    assert labels[1].dynamic and labels[1].extra['cues'] == ['optical']
    assert labels[1].extra['optical_log_ratio'] == pytest.approx(-1.2) and labels[1].extra['optical_share'] == 1.0
    assert not labels[2].dynamic
    assert not label(base_cfg(), disagreement)[1].dynamic                      # off by default
    assert not label(base_cfg(optical_log_ratio=0.7), None)[1].dynamic         # not measured
    sparse = disagreement.copy()
    sparse[CAR1] = np.nan
    sparse[CAR1[0].start, CAR1[1]] = -1.2                                      # one row of 25 defined: 4 %
    assert not label(base_cfg(optical_log_ratio=0.7, optical_min_share=0.1), sparse)[1].dynamic
    assert label(base_cfg(optical_log_ratio=0.7, optical_min_share=0.03), sparse)[1].dynamic


def test_optical_rule_has_its_own_threshold_for_oncoming_traffic():
    """Car 1 comes towards the camera (its flow e^0.5 times what its depth predicts for a static object: an
    oncoming car's seed has a median of 0.47-0.97), car 2 as predicted: with optical_log_ratio 0.7 on
    both sides car 1 is static, with optical_log_ratio_towards 0.35 it is dynamic by the optical cue; a car
    that moved e^-0.5 times (less than the 0.7 asked on that side) stays static."""
    f = two_cars(flow1=BG_FLOW)
    disagreement = np.full((H, W), 0.05, np.float32)
    disagreement[CAR1] = 0.5
    disagreement[CAR2] = 0.1

    def label(cfg, d):
        labels, _ = label_frame(f.mask, f.prediction(), K, cfg, disagreement=d)
        return {lab.id: lab for lab in labels}
    assert not label(base_cfg(optical_log_ratio=0.7), disagreement)[1].dynamic
    labels = label(base_cfg(optical_log_ratio=0.7, optical_log_ratio_towards=0.35), disagreement)
    assert labels[1].dynamic and labels[1].extra['cues'] == ['optical'] and not labels[2].dynamic
    disagreement[CAR1] = -0.5
    assert not label(base_cfg(optical_log_ratio=0.7, optical_log_ratio_towards=0.35), disagreement)[1].dynamic


def test_small_instances_are_dropped():
    """Instances under min_area_fraction of the image (0.5 % of 96x128 = 62 px) are not labelled."""
    f = two_cars()
    f.add(7, (slice(86, 93), slice(50, 58)))     # 56 px
    f.add(9, (slice(86, 94), slice(66, 74)))     # 64 px
    labels, masks = f.label(base_cfg())
    assert sorted(labels) == [1, 2, 9] and sorted(masks) == [1, 2, 9]


def test_road_class_instances_are_dropped():
    labels, _ = two_cars().label(base_cfg(), classes={1: 'road', 2: 'car'})
    assert sorted(labels) == [2]
    labels, _ = two_cars().label(base_cfg(road_classes=['road', 'car']), classes={1: 'road', 2: 'car'})
    assert labels == {}
    labels, _ = two_cars().label(base_cfg(), classes={1: 'car'})
    assert sorted(labels) == [1, 2]


def test_a_road_given_as_an_instance_still_counts_as_ground():
    """Road-class instances are removed as candidates; the road they cover is still the ground the contact cue
    measures against (otherwise segmentations with a road class lose the ground cue)."""
    f = two_cars(flow1=BG_FLOW, scale2=1.5)
    f.mask[(f.mask == 0) & (np.arange(H)[:, None] > 50)] = 9
    labels, _ = f.label(base_cfg(ground_tolerance=0.25), classes={1: 'car', 2: 'car', 9: 'road'})
    assert sorted(labels) == [1, 2]
    assert labels[2].extra['contact_ratio'] == pytest.approx(1.5, rel=0.02)
    assert labels[2].dynamic and labels[2].extra['cues'] == ['ground']


def test_frame_without_instances_has_no_labels():
    assert label_frame(np.zeros((H, W), np.int64), Frame().prediction(), K, base_cfg()) == ([], {})


def test_labels_serialise_with_the_design_fields():
    """to_json carries id/label/area (design §5) next to the cues, is JSON-serialisable and reads back."""
    labels, _ = two_cars(scale2=1.5).label(base_cfg(ground_tolerance=0.25))
    for lab in labels.values():
        d = lab.to_json()
        assert {'id', 'label', 'area', 'cues'} <= set(d)
        assert d['id'] == lab.id and d['label'] == lab.label and d['area'] == lab.area
        assert type(d['id']) is int and type(d['area']) is int
        back = InstanceLabel.from_json(json.loads(json.dumps(d)))
        assert back == InstanceLabel(lab.id, lab.label, lab.area, json.loads(json.dumps(lab.extra)))
    assert labels[1].to_json()['cues'] == ['flow'] and labels[2].to_json()['cues'] == ['ground']


@pytest.mark.parametrize('kw', [dict(flow_coverage=1.5), dict(min_area_fraction=-0.1), dict(flow_threshold_px=-1),
                                dict(ground_angle_deg=90), dict(ground_step_px=0), dict(optical_log_ratio=-0.5),
                                dict(optical_log_ratio_towards=-0.1),
                                dict(optical_min_share=2.0)])
def test_labelling_config_rejects_invalid_settings(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        LabellingConfig(**kw)
