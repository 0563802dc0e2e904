"""Extra per-frame layers of triplet samples (stage outputs such as scene depth, residual flow, object
masks): they are resized and flipped with the frames, each the way its kind requires."""
from __future__ import annotations

import numpy as np
import pytest
from memory_frames import MemorySequence, MemorySource

from training.data import AugmentConfig, TripletDataset
from training.data.triplets import Layer, transform_layer

FLIP = AugmentConfig(flip_prob=1.0, colour_prob=0.0)


# 24x40 native frames: textured background at 20 m, two objects (ids 3 and 8) left of centre, so a flip
# moves them to the other side; an off-centre principal point.
NH, NW = 24, 40
K_NATIVE = np.array([[30.0, 0, 17.0], [0, 30.0, 11.0], [0, 0, 1]])


def _frame(seed):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (NH, NW, 3), dtype=np.uint8)
    mask = np.zeros((NH, NW), np.int32)
    mask[4:12, 2:10] = 3
    mask[14:22, 12:18] = 8
    depth = np.full((NH, NW), 20.0, np.float32) + rng.uniform(0, 1, (NH, NW)).astype(np.float32)
    depth[mask == 3] = 7.0
    depth[mask == 8] = 11.0
    return rgb, mask, depth


def _source(n=3):
    frames = [_frame(s) for s in range(n)]
    return MemorySource([MemorySequence('seq', [f[0] for f in frames], K_NATIVE, masks=[f[1] for f in frames],
                                        depths=[f[2] for f in frames])])


def _layers_of_every_kind():
    """Layers of frame t (= 1) equal to maps the sample itself carries, so they must line up with them."""
    rgb, mask, depth = _frame(1)
    v, u = np.mgrid[0:NH, 0:NW].astype(np.float32)
    return {'inst': Layer(mask.copy(), 'mask'),
            'depth_layer': Layer(depth.copy(), 'depth'),
            'red': Layer(rgb[..., 0].astype(np.float32) / 255.0, 'value'),
            'flow': Layer(np.stack([u, v]), 'flow')}


@pytest.mark.parametrize('size', [(NH, NW), (NH // 2, NW // 2)], ids=['native-size', 'half-size'])
def test_flip_keeps_every_kind_of_layer_aligned_with_the_sample(size):
    """A flipped sample's extra mask/depth/value layers equal the sample's own (flipped) mask, GT depth and
    red channel; a flow layer is mirrored with its x component negated and its y component only mirrored."""
    h, w = size
    plain = TripletDataset(_source(), h, w, augment=None).load(0, extra=_layers_of_every_kind())
    flipped = TripletDataset(_source(), h, w, augment=FLIP).load(0, extra=_layers_of_every_kind())
    # the flip really happened (the objects moved to the other side)
    assert np.array_equal(flipped['mask'].numpy(), plain['mask'].numpy()[:, ::-1])
    assert not np.array_equal(flipped['mask'].numpy(), plain['mask'].numpy())
    for s in (plain, flipped):
        assert s['inst'].shape == (h, w) and s['flow'].shape == (2, h, w)
        assert np.array_equal(s['inst'].numpy(), s['mask'].numpy())
        assert np.array_equal(s['depth_layer'].numpy(), s['gt_depth'][0].numpy())
        red = s['frames_raw'][1, 0].numpy()
        if (h, w) == (NH, NW):
            assert np.array_equal(s['red'].numpy(), red)
        else:   # image and value layer are both area-averaged; they differ only by the uint8 rounding of the image
            assert np.abs(s['red'].numpy() - red).max() <= 1.0 / 255 + 1e-6
    f0, f1 = plain['flow'].numpy(), flipped['flow'].numpy()
    assert np.allclose(f1[0], -f0[0][:, ::-1])
    assert np.allclose(f1[1], f0[1][:, ::-1])
    if (h, w) == (NH, NW):   # a flow pointing right by u px points left by u px at the mirrored pixel
        assert np.array_equal(f0[0], np.tile(np.arange(NW, dtype=np.float32), (NH, 1)))
        assert np.array_equal(f1[0], -np.tile(np.arange(NW, dtype=np.float32)[::-1], (NH, 1)))


def test_layers_from_the_dataset_callable_get_the_frame_location_and_the_flip():
    """A dataset's `layers(split, sequence, frame)` is called with the sample's frame t and its layers flip too."""
    calls = []

    def layers(split, seq, t):
        calls.append((split, seq, t))
        return {'inst': Layer(_frame(t)[1], 'mask')}

    ds = TripletDataset(_source(4), NH, NW, split='val', augment=FLIP, layers=layers)
    s = ds.load(1)
    assert calls == [('val', 'seq', 2)]
    assert np.array_equal(s['inst'].numpy(), s['mask'].numpy())
    assert np.array_equal(s['inst'].numpy(), _frame(2)[1][:, ::-1])


def _twice(a):
    """Each pixel of a [..., h, w] array as a 2x2 block."""
    return np.repeat(np.repeat(a, 2, axis=-2), 2, axis=-1)


def test_layers_at_twice_the_network_size_are_resized_by_kind():
    """Masks and depth by nearest neighbour (every output value is an input value: no mixing across edges);
    a constant flow of (4, 2) px at 2x becomes (2, 1) px; a value map is interpolated, not scaled."""
    h, w = NH, NW
    rng = np.random.default_rng(5)
    ids = rng.choice(np.array([0, 3, 7], np.int32), (h, w))
    raw_depth = rng.uniform(1.0, 80.0, (2 * h, 2 * w)).astype(np.float32)
    block_depth = rng.uniform(1.0, 80.0, (h, w)).astype(np.float32)
    extra = {'inst': Layer(_twice(ids), 'mask'),
             'object_masks': Layer(_twice(np.stack([ids == 3, ids == 7, ids == 0])), 'mask'),
             'depth_raw': Layer(raw_depth, 'depth'),
             'depth_blocks': Layer(_twice(block_depth), 'depth'),
             'const_flow': Layer(np.stack([np.full((2 * h, 2 * w), 4.0, np.float32),
                                           np.full((2 * h, 2 * w), 2.0, np.float32)]), 'flow'),
             'value': Layer(np.full((2 * h, 2 * w), 0.25, np.float32), 'value')}
    s = TripletDataset(_source(), h, w, augment=None).load(0, extra=extra)
    assert np.array_equal(s['inst'].numpy(), ids)
    om = s['object_masks'].numpy()
    assert om.dtype == bool and om.shape == (3, h, w)
    assert np.array_equal(om, np.stack([ids == 3, ids == 7, ids == 0]))
    d = s['depth_raw'].numpy()
    assert d.shape == (h, w) and np.isin(d, raw_depth).all()
    assert np.array_equal(s['depth_blocks'].numpy(), block_depth)
    flow = s['const_flow'].numpy()
    assert np.allclose(flow[0], 2.0) and np.allclose(flow[1], 1.0)
    assert np.allclose(s['value'].numpy(), 0.25)


def test_flow_components_scale_by_their_own_axis_ratio():
    """x is scaled by the width ratio and y by the height ratio (here 1/4 and 1/2), then x negated on a flip."""
    a = np.stack([np.full((2 * NH, 4 * NW), 4.0, np.float32), np.full((2 * NH, 4 * NW), 2.0, np.float32)])
    out = transform_layer(Layer(a, 'flow'), NH, NW, flip=False)
    assert out.shape == (2, NH, NW) and np.allclose(out[0], 1.0) and np.allclose(out[1], 1.0)
    out = transform_layer(Layer(a[None], 'flow'), NH, NW, flip=True)   # leading axes are kept
    assert out.shape == (1, 2, NH, NW) and np.allclose(out[0, 0], -1.0) and np.allclose(out[0, 1], 1.0)


@pytest.mark.parametrize('name', ['mask', 'gt_depth', 'frames', 'K'])
def test_layer_name_that_clashes_with_a_sample_key_is_refused(name):
    """An extra layer may not silently replace a key of the sample."""
    ds = TripletDataset(_source(), NH, NW)
    with pytest.raises(ValueError, match=name):
        ds.load(0, extra={name: Layer(np.zeros((NH, NW), np.int32), 'mask')})


@pytest.mark.parametrize('shape, kind', [((3, NH, NW), 'flow'), ((NH, NW), 'flow'), ((NW,), 'depth'),
                                         ((NH, NW), 'colour')])
def test_malformed_layers_are_refused(shape, kind):
    """A flow must be [...,2,H,W], every layer at least [H,W], and the kind one of the four."""
    with pytest.raises(ValueError):
        Layer(np.zeros(shape, np.float32), kind)
