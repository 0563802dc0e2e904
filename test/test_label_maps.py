"""Label maps (instance masks) are resized by one function, dynadepth_ros.camera.resize_nearest, with exact
pixel-centre rounding (torch / PIL 'nearest-exact'): the node (objects from a mask of another size), the
evaluation (masks against GT) and training (mask layers of a sample) give the same ids for the same map."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynadepth_ros import node as node_module
from dynadepth_ros.camera import resize_nearest
from dynadepth_ros.recording import eval_dataset, eval_decode
from training.data.triplets import Layer, transform_layer

SIZES = [((48, 160), (24, 80)), ((48, 160), (16, 53)), ((24, 80), (48, 160)), ((30, 50), (45, 75)), ((7, 9), (7, 9))]


def _labels(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 7, size=(h, w)).astype(np.int32) * 1000      # ids that bilinear blending would mix


@pytest.mark.parametrize('src,dst', SIZES)
def test_resize_nearest_is_torch_nearest_exact(src, dst):
    labels = _labels(*src)
    ref = torch.nn.functional.interpolate(torch.from_numpy(labels)[None, None].double(), size=dst,
                                          mode='nearest-exact')[0, 0].numpy().astype(np.int32)
    out = resize_nearest(labels, *dst)
    assert out.dtype == labels.dtype and out.shape == dst
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize('src,dst', SIZES)
def test_node_evaluation_and_training_resize_a_label_map_identically(src, dst, monkeypatch):
    labels = _labels(*src, seed=1)
    # training: a mask layer of a sample (no flip)
    train = transform_layer(Layer(labels, 'mask'), dst[0], dst[1], flip=False)
    # the node: _publish_objects resizes a mask of another size to the depth frame before instance_depths
    seen = {}

    def fake_instance_depths(depth, lab, K, min_pixels):
        seen['labels'] = lab
        return []

    monkeypatch.setattr(node_module, 'instance_depths', fake_instance_depths)
    monkeypatch.setattr(node_module.ros_messages, 'objects_to_markers', lambda objs, header: None)
    fake = SimpleNamespace(_p=lambda name: 1, _log_throttled=lambda *a: None, _camera_prefix=lambda cam: '')
    cam = SimpleNamespace(name='', stats={'masks_resized': 0, 'objects_out': 0},
                          pubs={'objects': SimpleNamespace(publish=lambda m: None)})
    frame = node_module._Frame(header=None, depth=np.ones(dst, np.float32), K=np.eye(3))
    node_module.DepthNode._publish_objects(fake, cam, [(frame, labels)])
    # the evaluation: masks are fitted to the GT with the same function
    assert eval_decode.resize_nearest is resize_nearest and eval_dataset.resize_nearest is resize_nearest
    np.testing.assert_array_equal(seen['labels'], train)
    np.testing.assert_array_equal(resize_nearest(labels, *dst), train)
    assert cam.stats['masks_resized'] == (src != dst)
