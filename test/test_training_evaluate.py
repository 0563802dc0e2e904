"""Evaluation: the lead-car rule, and the whole evaluate() path checked against an independent
numpy computation from the dataset files with a depth 'network' whose answer we know."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynadepth_ros.datasets.layout import list_sequences
from dynadepth_ros.metrics import evaluate_frame
from training.config import EvalConfig, load_config
from training.evaluate import evaluate, lead_car_ids, mean_depth_baseline

REPO = Path(__file__).resolve().parents[1]
EGO = np.array([1.0, 0.0, 0.0])     # ego drives along world +x


def car(i, x, z, v, moving=True, cls='car', **extra):
    return {'id': i, 'class': cls, 'moving': moving, 'velocity': list(v), 'box': {'center_cam': [x, 1.0, z]}, **extra}


def test_lead_car_rule():
    cfg = EvalConfig()
    instances = [
        car(1, 0.4, 15.0, (9.5, 0.3, 0)),                  # ahead, in lane, same direction: lead
        car(2, 0.4, 15.0, (-9.0, 0, 0)),                   # oncoming in the lane
        car(3, 4.0, 20.0, (10.0, 0, 0)),                   # next lane
        car(4, 0.0, -6.0, (10.0, 0, 0)),                   # behind the camera
        car(5, 1.0, 12.0, (7.0, 7.0, 0)),                  # 45 deg off the ego direction
        car(6, 0.5, 10.0, (0.0, 0, 0), moving=False),      # parked in front (not moving)
        car(7, 0.2, 9.0, (8.0, 0, 0), cls='pedestrian'),   # not a car class
        car(8, 2.3, 30.0, (10.0, 4.0, 0)),                 # 21.8 deg, inside the lane limit: lead
        car(9, 6.0, 30.0, (-3, 0, 0), role='lead'),        # the generator says lead: trusted
    ]
    assert lead_car_ids(instances, EGO, cfg) == {1, 8, 9}
    assert lead_car_ids(instances, None, cfg) == {9}       # no ego motion known: only explicit roles


class ConstantDepth(torch.nn.Module):
    """Stands in for a trained network: depth = c everywhere."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def depth(self, image):
        return torch.full((image.shape[0], 1, *image.shape[-2:]), self.c)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('eval_data')
    subprocess.run([sys.executable, '-m', 'training', 'prepare-data', '--preset', 'ci-tiny', '--set',
                    f'data.root={root}'], cwd=REPO, check=True, timeout=120, capture_output=True)
    return root


def test_evaluate_matches_an_independent_computation(data_root, tmp_path, monkeypatch):
    cfg = load_config('ci-tiny', overrides=[f'data.root={data_root}', 'runtime.progress=false'])
    c = 9.0
    import training.stages.scene as scene
    monkeypatch.setattr(scene, 'load_depth_net',
                        lambda stage_dir, device='cpu': (ConstantDepth(c), cfg, {'config_hash': 'x', 'metric': True}))
    report = evaluate(tmp_path, 'scene', 'test', progress=False)

    # independent: native GT (ci-tiny renders at the network size), triplet centres 1..n-2
    train_gt = [s.depth(i) for s in list_sequences(data_root, 'train') for i in range(len(s))]
    stack = np.stack(train_gt)
    count = (stack > 0).sum(0)
    mean = np.where(count > 0, np.where(stack > 0, stack, 0).sum(0) / np.maximum(count, 1),
                    stack[stack > 0].mean()).astype(np.float32)
    assert np.allclose(mean_depth_baseline(cfg.data, 64, 192, progress=False), mean, rtol=1e-5)

    ratios, abs_rel_static, lead_seen = [], [], 0
    object_scale = {True: [], False: []}
    for seq in list_sequences(data_root, 'test'):
        for t in range(1, len(seq) - 1):
            gt = seq.depth(t)
            moving = seq.moving_mask(t)
            ids = seq.mask(t)
            for inst in seq.instances(t):
                sel = (ids == inst.id) & (gt > cfg.eval.min_depth) & (gt < cfg.eval.max_depth)
                if sel.sum() >= 20:
                    object_scale[bool(inst.moving)].append(np.median(c / gt[sel]))
            r = evaluate_frame(gt, np.full_like(gt, c), {'static': ~moving, 'dynamic': moving})
            ratios.append(r['scale'])
            abs_rel_static.append(r['metric']['static']['abs_rel'])
            lead_seen += int(any(i.moving and i.cls == 'car' and abs(i.box['center_cam'][0]) < 2.5
                                 for i in seq.instances(t)))
    assert report['frames'] == len(ratios)
    assert report['model']['metric']['static']['abs_rel'] == pytest.approx(np.mean(abs_rel_static), rel=1e-6)
    assert report['scale_check']['median_gt_over_pred'] == pytest.approx(np.median(ratios), rel=1e-6)
    assert report['scale_check']['within_10_percent'] == (abs(np.median(ratios) - 1) <= 0.1)
    assert report['model']['median_scaled']['all']['frames'] == len(ratios)
    assert 0 < report['frames_with_lead_car'] <= lead_seen
    assert report['model']['metric']['lead']['frames'] == report['frames_with_lead_car']
    assert report['baseline_mean_train_depth']['metric']['static']['abs_rel'] < \
        report['model']['metric']['static']['abs_rel']
    # per object: a constant depth c sees each object at median(c / GT) over its pixels
    groups = report['object_scale']['groups']
    assert groups['static']['objects'] == len(object_scale[False]) > 0
    assert groups['moving']['objects'] == len(object_scale[True]) > 0
    assert groups['static']['median'] == pytest.approx(np.median(object_scale[False]), rel=1e-5)
    assert report['object_scale']['moving_over_static'] == pytest.approx(
        np.median(object_scale[True]) / np.median(object_scale[False]), rel=1e-5)
    assert '| **moving / static** |' in (tmp_path / 'scene' / 'eval_test.md').read_text()
    written = json.loads((tmp_path / 'scene' / 'eval_test.json').read_text())
    assert written['scale_check'] == report['scale_check']
    assert '| baseline | metric | lead |' in (tmp_path / 'scene' / 'eval_test.md').read_text()
