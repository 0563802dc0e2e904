"""The demo's side-by-side comparison of two depth models on a synthetic sequence (the method's claim,
shown to a user): regions, the table, and the strip of frames with a car ahead."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from contract_model import make_contract_model
from dynadepth_ros.datasets.layout import Sequence
from dynadepth_ros.model_comparison import (comparison_table, compare_on_sequence, frame_regions, object_scale_table,
                                           write_strip)
from dynadepth_ros.synth import generate_split

H, W, FRAMES = 64, 192, 6


@pytest.fixture(scope='module')
def seq_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('cmp')
    (path,) = generate_split(out, 'test', sequences=1, frames=FRAMES, height=H, width=W, seed=3,
                             lead_car_fraction=1.0, workers=1, progress=False)
    return path


def test_regions_partition_the_frame_and_lead_is_the_car_ahead(seq_dir):
    seq = Sequence(seq_dir)
    meta = json.loads((seq_dir / 'synth.json').read_text())
    lead_seen = 0
    for i in range(len(seq)):
        f = seq.frame(i)
        r = frame_regions(f, meta['lead_id'], meta['lead_frames'])
        assert not (r['dynamic'] & r['static']).any() and (r['dynamic'] | r['static']).all()
        assert not (r['lead'] & ~r['dynamic']).any()
        if meta['lead_frames'][i]:
            assert (r['lead'] == (f.mask == meta['lead_id'])).all()
            lead_seen += int(r['lead'].any())
        else:
            assert not r['lead'].any()
    assert lead_seen > 0


def test_models_side_by_side(seq_dir, tmp_path):
    near = make_contract_model(tmp_path / 'near.onnx', H, W, gain=10.0, offset=1.0, stage='scene')
    far = make_contract_model(tmp_path / 'far.onnx', H, W, gain=10.0, offset=15.0, stage='final')
    cmp = compare_on_sequence(seq_dir, {'scene': near, 'final': far}, strip_rows=3)
    assert cmp['frames'] == FRAMES and cmp['lead_frames'] > 0
    meta = json.loads((seq_dir / 'synth.json').read_text())
    assert all(meta['lead_frames'][i] for i in cmp['strip_frames']) and len(cmp['strip_frames']) <= 3
    for name in ('scene', 'final'):
        s = cmp['models'][name]['summary']['metric']
        assert set(s) >= {'all', 'static', 'dynamic', 'lead'}
        assert cmp['models'][name]['inference_ms']['p50'] > 0
    # the two models predict different depths, so their errors differ; the table shows both and the ratio
    a = cmp['models']['scene']['summary']['metric']['dynamic']['abs_rel']
    b = cmp['models']['final']['summary']['metric']['dynamic']['abs_rel']
    assert a != b
    table = comparison_table(cmp, 'scene', 'final')
    rows = table.splitlines()
    assert rows[2].startswith('| dynamic |') and rows[3].startswith('| lead |')   # dynamic pixels first
    assert f'{b / a:.2f}' in rows[2]
    # per object: the models see every object at different scales, and the records behind the medians
    # are the frame's instances with GT in their masks
    near_s, far_s = (cmp['models'][n]['object_scale']['groups'] for n in ('scene', 'final'))
    assert near_s['static']['objects'] == far_s['static']['objects'] > 0
    assert near_s['static']['median'] != far_s['static']['median']
    records = cmp['models']['scene']['object_records']
    assert len(records) == near_s['static']['objects'] + near_s.get('moving', {'objects': 0})['objects']
    assert all(r['scale'] > 0 and r['pixels'] >= 20 for r in records)
    scales = object_scale_table(cmp, 'scene', 'final')
    assert scales.splitlines()[0].startswith('| objects | count | scene') and '| **moving / static** |' in scales
    # a model compared with itself: ratio 1.00 everywhere
    same = compare_on_sequence(seq_dir, {'x': near, 'y': near}, strip_rows=1)
    assert all('| 1.00 |' in r for r in comparison_table(same, 'x', 'y').splitlines()[2:])


def test_strip_has_one_row_per_lead_frame_and_six_panels(seq_dir, tmp_path):
    m = make_contract_model(tmp_path / 'm.onnx', H, W)
    cmp = compare_on_sequence(seq_dir, {'scene': m, 'final': m}, strip_rows=2)
    path = write_strip(cmp, 'scene', 'final', tmp_path / 'strip.png')
    img = cv2.imread(str(path))
    n = len(cmp['strip_frames'])
    assert img.shape == (n * H + 3 * (n - 1), 6 * W, 3)
    assert np.ptp(img[:H, 4 * W:5 * W]) > 0          # the error panel shows something
