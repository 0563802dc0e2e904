"""Stage-3 pseudo labels (compose_pseudo_label), the stage-2 in-mask smoothness and weight start, and the
typed readers/writers of the stage outputs (design §5 layout)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import load_config
from training.stages import scene as scene_stage
from training.stages.dsa import compose_pseudo_label
from training.stages.object_model import ObjectModel, masked_smoothness
from training.stages.outputs import (InstanceLabel, ObjectLabels, ObjectOutputs, PseudoLabel, PseudoLabels,
                                     ScenePredictions, frame_key, parse_frame_key, save_npz_atomic)
from training.stages.scene_model import SceneModel

H, W = 20, 30


def _box(r0, r1, c0, c1):
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def _scene_depth():
    return np.random.default_rng(0).uniform(2.0, 50.0, (H, W)).astype(np.float32)


@pytest.mark.parametrize('reverse', [False, True], ids=['far-first', 'near-first'])
def test_overlapping_objects_nearer_wins_and_the_rest_keeps_the_scene_depth(reverse):
    """Objects at 10 m and 6 m overlap: the overlap takes 6 m whatever the order, each object's own pixels its
    depth, every other pixel the scene depth; `dynamic` is exactly the union of the masks."""
    scene = _scene_depth()
    a, b = _box(2, 12, 3, 15), _box(8, 18, 10, 25)
    objects = [(a, np.where(a, 10.0, 0).astype(np.float32)), (b, np.where(b, 6.0, 0).astype(np.float32))]
    label = compose_pseudo_label(scene, objects[::-1] if reverse else objects)
    assert isinstance(label, PseudoLabel)
    assert label.depth.dtype == np.float32 and label.depth.shape == (H, W)
    assert np.all(label.depth[a & b] == 6.0)
    assert np.all(label.depth[a & ~b] == 10.0)
    assert np.all(label.depth[b & ~a] == 6.0)
    assert np.array_equal(label.depth[~(a | b)], scene[~(a | b)])
    assert label.dynamic.dtype == bool and np.array_equal(label.dynamic, a | b)
    assert np.array_equal(scene, _scene_depth())        # the input is not modified


def test_object_depth_varies_per_pixel_and_the_nearer_wins_per_pixel():
    """Per pixel, not per object: where two objects' depth ramps cross, each pixel takes the nearer one."""
    scene = _scene_depth()
    m = _box(0, H, 0, W)
    ramp = np.tile(np.linspace(4.0, 16.0, W, dtype=np.float32), (H, 1))
    flat = np.full((H, W), 10.0, np.float32)
    label = compose_pseudo_label(scene, [(m, ramp), (m, flat)])
    assert np.array_equal(label.depth, np.minimum(ramp, flat))


def test_no_dynamic_objects_keeps_the_scene_depth():
    scene = _scene_depth()
    label = compose_pseudo_label(scene, [])
    assert np.array_equal(label.depth, scene) and label.depth.dtype == np.float32
    assert label.dynamic.shape == (H, W) and not label.dynamic.any()


def test_object_pixels_without_depth_keep_the_scene_depth():
    """An object's mask pixels where its depth is 0 (no prediction) are neither replaced nor dynamic."""
    scene = _scene_depth()
    m = _box(2, 10, 2, 10)
    d = np.where(m, 7.0, 0).astype(np.float32)
    d[5, 5] = 0.0
    label = compose_pseudo_label(scene, [(m, d)])
    assert label.depth[5, 5] == scene[5, 5] and not label.dynamic[5, 5]
    assert label.dynamic.sum() == m.sum() - 1


# --------------------------------------------------------------------------- stage-2 smoothness


def _t(a):
    return torch.from_numpy(np.asarray(a, np.float32))[None, None]


def _embed(patch, size, at=(3, 4), outside=None):
    """(disp, mask) of `size`: `patch` at `at`, the mask exactly the patch; outside random (wild) or `outside`."""
    rng = np.random.default_rng(1)
    disp = rng.uniform(0.01, 10.0, size) if outside is None else np.full(size, outside)
    mask = np.zeros(size, bool)
    r, c = at
    disp[r:r + patch.shape[0], c:c + patch.shape[1]] = patch
    mask[r:r + patch.shape[0], c:c + patch.shape[1]] = True
    return _t(disp), _t(mask)


def test_masked_smoothness_ignores_everything_outside_the_mask():
    """Constant disparity inside the mask, wild values outside and across its edge: no penalty."""
    disp, mask = _embed(np.full((8, 10), 0.3), (24, 32))
    assert masked_smoothness(disp, mask).item() == 0.0
    # the same disparity counted everywhere is far from smooth (the test's wild outside is real)
    assert masked_smoothness(disp, torch.ones_like(mask)).item() > 0.5


def test_masked_smoothness_penalises_a_ramp_inside_the_mask():
    ramp = np.tile(np.linspace(0.2, 0.4, 10), (8, 1))
    disp, mask = _embed(ramp, (24, 32))
    s = masked_smoothness(disp, mask).item()
    assert s > 0
    # first order, mean-normalised: x steps only, each (0.2/9) / mean 0.3 averaged over the 8x9 in-mask pairs
    assert s == pytest.approx((0.2 / 9) / 0.3, rel=1e-4)
    # scale-free: the object depth is defined up to its own scale
    assert masked_smoothness(disp * 50, mask).item() == pytest.approx(s, rel=1e-5)
    steeper = np.tile(np.linspace(0.2, 0.6, 10), (8, 1))
    assert masked_smoothness(*_embed(steeper, (24, 32))).item() > s


@pytest.mark.parametrize('outside', [None, 0.0, 5.0], ids=['wild', 'zero', 'five'])
def test_masked_smoothness_does_not_depend_on_the_masks_share_of_the_image(outside):
    """The same in-mask content in a small and a 16x larger image gives the same value (the reference averaged
    over the whole image, so small objects were barely regularised: §6.7)."""
    patch = np.random.default_rng(2).uniform(0.1, 0.5, (8, 10))
    small = masked_smoothness(*_embed(patch, (12, 16), outside=outside)).item()
    large = masked_smoothness(*_embed(patch, (48, 64), at=(20, 30), outside=outside)).item()
    assert small > 0
    assert large == pytest.approx(small, rel=1e-5)


def test_masked_smoothness_of_an_empty_mask_is_zero():
    disp = torch.rand(1, 1, 8, 8)
    assert masked_smoothness(disp, torch.zeros(1, 1, 8, 8)).item() == 0.0


# --------------------------------------------------------------------------- stage-2 model start


@pytest.fixture(scope='module')
def tiny_scene_model():
    cfg = load_config(preset='ci-tiny')
    torch.manual_seed(0)
    return cfg, SceneModel(cfg.scene.model)


def test_object_model_starts_from_the_stage1_depth_and_pose_weights(tiny_scene_model):
    cfg, scene_model = tiny_scene_model
    torch.manual_seed(1)
    obj = ObjectModel(cfg.scene.model)
    key = next(k for k in obj.state_dict() if k.startswith('depth.') and k.endswith('weight'))
    assert not torch.equal(obj.state_dict()[key], scene_model.state_dict()[key])   # different init before
    obj.load_scene_weights(scene_model.state_dict())
    scene_state = scene_model.state_dict()
    for k, v in obj.state_dict().items():
        assert k.startswith(('depth.', 'pose.'))
        assert torch.equal(v, scene_state[k]), k
    assert not any(k.startswith('motion.') for k in obj.state_dict())


def test_object_model_refuses_weights_of_another_architecture(tiny_scene_model):
    cfg, scene_model = tiny_scene_model
    other = load_config(preset='ci-tiny', overrides=['scene.model.width_mult=0.5'])
    obj = ObjectModel(other.scene.model)
    with pytest.raises(ValueError, match='another architecture'):
        obj.load_scene_weights(scene_model.state_dict())


def test_object_depth_is_zero_outside_the_mask(tiny_scene_model):
    cfg, _ = tiny_scene_model
    torch.manual_seed(0)
    obj = ObjectModel(cfg.scene.model).eval()
    image = torch.rand(1, 3, 64, 96)
    mask = torch.zeros(1, 1, 64, 96)
    mask[..., 20:40, 30:60] = 1
    with torch.no_grad():
        d = obj.object_depth(image, mask)
    assert d.shape == (1, 1, 64, 96)
    assert (d[mask == 0] == 0).all() and (d[mask == 1] > 0).all()


# --------------------------------------------------------------------------- stage output files


def _no_temp_files(root: Path):
    return not [p for p in root.rglob('*') if p.name.startswith('.')]


def test_pseudo_labels_round_trip(tmp_path):
    label = compose_pseudo_label(_scene_depth(), [(_box(2, 9, 4, 12), np.full((H, W), 3.25, np.float32))])
    writer = PseudoLabels(tmp_path / 'dsa')
    writer.write('val', 'seq_a', 17, label)
    assert writer.path('val', 'seq_a', 17) == tmp_path / 'dsa' / 'pseudo_labels' / 'val' / 'seq_a' / '000017.npz'
    back = PseudoLabels(tmp_path / 'dsa').frame('val', 'seq_a', 17)
    assert back.depth.dtype == np.float32 and np.array_equal(back.depth, label.depth)
    assert back.dynamic.dtype == bool and np.array_equal(back.dynamic, label.dynamic)
    assert _no_temp_files(tmp_path)
    with pytest.raises(FileNotFoundError, match='python -m training dsa'):
        PseudoLabels(tmp_path / 'dsa').frame('val', 'seq_a', 18)


def test_object_labels_round_trip(tmp_path):
    frames = {frame_key('s1', 3): [InstanceLabel(4, 'dynamic', 120, {'cues': ['flow'], 'flow_coverage': 0.9}),
                                   InstanceLabel(7, 'static', 80, {'cues': [], 'contact_ratio': None})],
              frame_key('s2', 0): []}
    path = ObjectLabels.write(tmp_path / 'objects', 'train', frames)
    assert path == tmp_path / 'objects' / 'labels' / 'train.json'
    raw = json.loads(path.read_text())
    assert raw['s1/000003'][0] == {'id': 4, 'label': 'dynamic', 'area': 120, 'cues': ['flow'], 'flow_coverage': 0.9}
    labels = ObjectLabels(tmp_path / 'objects', 'train')
    assert labels.frame('s1', 3) == frames['s1/000003']
    assert labels.frame('s1', 3)[0].dynamic and not labels.frame('s1', 3)[1].dynamic
    assert labels.frame('s1', 4) == [] and labels.frame('s2', 0) == []
    assert sorted((s, t, len(v)) for s, t, v in labels.items()) == [('s1', 3, 2), ('s2', 0, 0)]
    with pytest.raises(FileNotFoundError, match='python -m training objects'):
        ObjectLabels(tmp_path / 'objects', 'val')


def test_frame_keys_round_trip_with_slashes_in_sequence_names():
    assert frame_key('city/run_01', 42) == 'city/run_01/000042'
    assert parse_frame_key('city/run_01/000042') == ('city/run_01', 42)


def test_object_outputs_round_trip(tmp_path):
    out = ObjectOutputs(tmp_path / 'objects')
    rng = np.random.default_rng(0)
    masks = {7: rng.integers(0, 2, (3, H, W)).astype(np.uint8), 2: rng.integers(0, 2, (3, H, W)).astype(np.uint8)}
    depth = {7: np.where(masks[7][1] > 0, 12.25, 0).astype(np.float32),
             2: np.where(masks[2][1] > 0, 3.5, 0).astype(np.float32)}
    out.write_masks('train', 'seq', 5, masks)
    out.write_depth('train', 'seq', 5, depth)
    back_m, back_d = ObjectOutputs(tmp_path / 'objects').masks('train', 'seq', 5), out.depth('train', 'seq', 5)
    assert sorted(back_m) == [2, 7] and sorted(back_d) == [2, 7]
    for i in (2, 7):
        assert back_m[i].dtype == np.uint8 and np.array_equal(back_m[i], masks[i])
        assert back_d[i].dtype == np.float32 and np.array_equal(back_d[i], depth[i])
    # arbitrary depths come back to (half-)float precision
    d = {1: rng.uniform(0.5, 80.0, (H, W)).astype(np.float32)}
    out.write_depth('train', 'seq', 6, d)
    assert np.allclose(out.depth('train', 'seq', 6)[1], d[1], rtol=1e-3)
    # a frame without instances: written empty, or never written, reads as {}
    out.write_masks('train', 'seq', 8, {})
    out.write_depth('train', 'seq', 8, {})
    assert out.masks('train', 'seq', 8) == {} and out.depth('train', 'seq', 8) == {}
    assert out.masks('train', 'seq', 9) == {} and out.depth('train', 'seq', 9) == {}
    assert _no_temp_files(tmp_path)


def test_scene_predictions_reader_matches_the_stage1_writer_layout(tmp_path):
    """Stage 1 writes predictions where ScenePredictions reads them; a missing frame names stage 1."""
    stage_dir = tmp_path / 'scene'
    path = scene_stage.prediction_path(stage_dir, 'val', 'seq', 12)
    assert path == ScenePredictions(stage_dir).path('val', 'seq', 12)
    depth = _scene_depth()
    fp = np.full((2, H, W), 0.5, np.float16)
    fn = np.full((2, H, W), -0.25, np.float16)
    save_npz_atomic(path, depth=depth, flow_prev=fp, flow_next=fn)
    pred = ScenePredictions(stage_dir).frame('val', 'seq', 12)
    assert np.array_equal(pred.depth, depth) and pred.flow_prev.dtype == np.float32
    assert np.array_equal(pred.flow_prev, fp.astype(np.float32))
    assert np.array_equal(pred.flow_next, fn.astype(np.float32))
    assert np.allclose(pred.flow_magnitude(), 0.75)
    with pytest.raises(FileNotFoundError, match='python -m training scene'):
        ScenePredictions(stage_dir).frame('val', 'seq', 13)
