"""ONNX export of a depth network: the design §3 contract, agreement with torch in ONNX Runtime at
several batch sizes, and refusal to write a model that disagrees with torch."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dynadepth_ros.model_format import ModelMetadata, read_metadata
from training.export import ExportError, check_inputs, export_depth_onnx
from training.networks.depth import DepthExportModule, DepthNet

H, W = 64, 128


def meta(h=H, w=W):
    return ModelMetadata(input_height=h, input_width=w, min_depth=0.1, max_depth=100.0, metric=True,
                         intrinsics=(0.58, 1.92, 0.5, 0.5), stage='scene', dataset='synthetic:test',
                         config_hash='0123456789abcdef', version='0.1.0')


@pytest.fixture(scope='module')
def net():
    torch.manual_seed(0)
    return DepthNet(18, 0.25, 0.1, 100.0).eval()


@pytest.fixture(scope='module')
def exported(net, tmp_path_factory):
    path = tmp_path_factory.mktemp('export') / 'depth.onnx'
    report = export_depth_onnx(net, path, meta(), max_batch=6)
    return path, report


def test_exported_model_matches_torch_at_several_batch_sizes(net, exported):
    path, report = exported
    assert report['max_rel_diff'] < 1e-4 and report['batch_sizes'] == [1, 2]
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    x = np.random.default_rng(5).random((5, 3, H, W), dtype=np.float32)
    got = session.run(['depth'], {'image': x})[0]
    with torch.no_grad():
        ref = DepthExportModule(net)(torch.from_numpy(x)).numpy()
    assert got.shape == (5, 1, H, W)
    assert np.max(np.abs(got - ref) / ref) < 1e-4
    assert got.min() >= 0.1 - 1e-5 and got.max() <= 100.0 + 1e-3


def test_exported_model_carries_the_contract(exported):
    path, _ = exported
    m = read_metadata(path)
    assert m == meta()
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')) == 18
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, H, W]   # dynamic N, fixed C, H, W
    assert not path.with_name(path.name + '.data').exists()                  # one self-contained file
    onnx.checker.check_model(model)


class DriftingEncoder(torch.nn.Module):
    """Wraps an encoder and shifts its features by a call counter: the exporter captures one value,
    torch gives another on every later call, so the exported graph cannot agree with torch."""

    def __init__(self, encoder):
        super().__init__()
        self.inner = encoder
        self.num_ch_enc = encoder.num_ch_enc
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return [f + 0.5 * self.calls for f in self.inner(x)]


def test_export_that_disagrees_with_torch_is_refused(tmp_path):
    torch.manual_seed(1)
    net = DepthNet(18, 0.25, 0.1, 100.0).eval()
    net.encoder = DriftingEncoder(net.encoder)
    out = tmp_path / 'bad.onnx'
    with pytest.raises(ExportError, match='disagrees with torch'):
        export_depth_onnx(net, out, meta())
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []       # no temp file left behind either


def test_size_not_multiple_of_32_is_rejected(net, tmp_path):
    with pytest.raises(ExportError, match='multiple of 32'):
        export_depth_onnx(net, tmp_path / 'x.onnx', meta(h=60))


def test_check_inputs_are_fixed_and_in_range():
    a, b = check_inputs(32, 64, (1, 3)), check_inputs(32, 64, (1, 3))
    assert [x.shape for x in a] == [(1, 3, 32, 64), (3, 3, 32, 64)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(x.min() >= 0 and x.max() <= 1 and x.dtype == np.float32 for x in a)


def test_relu_zero_decoder_takes_the_same_weights_and_exports_without_float_islands(net, exported, tmp_path):
    """final.decoder relu_zero: stage 1's (elu_reflect) weights load as they are, the border and the
    activation are what change, and the exported graph has no Elu or Pad left for ONNX Runtime to run between
    the convolutions (in INT8 those cost a dequantize/quantize pair each)."""
    torch.manual_seed(0)
    relu = DepthNet(18, 0.25, 0.1, 100.0, decoder='relu_zero').eval()
    relu.load_state_dict(net.state_dict())                       # strict: the same parameters
    x = torch.rand(1, 3, H, W)
    with torch.no_grad():
        a, b = DepthExportModule(net)(x), DepthExportModule(relu)(x)
    assert not torch.allclose(a, b)                               # another function of the same weights
    path = tmp_path / 'relu.onnx'
    export_depth_onnx(relu, path, meta(), max_batch=2)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert 'Relu' in ops and not ops & {'Elu', 'Pad'}
    assert {'Elu', 'Pad'} <= {n.op_type for n in onnx.load(str(exported[0])).graph.node}    # stage 1's style
    with pytest.raises(ValueError, match='decoder style'):
        DepthNet(18, 0.25, decoder='relu_reflect')


def test_final_decoder_is_checked_and_hashed_only_when_changed():
    from training.config import ConfigError, load_config
    from training.stages import final as final_stage

    plain = load_config('ci-tiny')
    relu = load_config('ci-tiny', overrides=['final.decoder=relu_zero'])
    assert 'decoder' not in final_stage.hash_parts(plain)[0]['final']     # finished runs stay up to date
    assert final_stage.hash_parts(relu)[0]['final']['decoder'] == 'relu_zero'
    with pytest.raises((ConfigError, ValueError), match='final.decoder'):
        load_config('ci-tiny', overrides=['final.decoder=gelu'])


def test_export_tolerance_is_a_check_that_re_runs_nothing():
    """export.tolerance (default 1e-3: float32 rounding through the sigmoid disparity reaches 1e-4 on far pixels of
    a healthy network) is left out of every stage's config hash: a run finished under the former 1e-4 stays up to
    date, and raising it after a refused export re-exports nothing upstream."""
    import json

    from training.config import ExportConfig, load_config
    from training.stages import distill, final, mask_instances, scene

    assert ExportConfig().tolerance == 1e-3
    with pytest.raises(ValueError, match='export.tolerance'):
        ExportConfig(tolerance=0)
    for mod in (scene, final, distill, mask_instances):
        def h(*overrides):
            cfg = load_config('ci-tiny', overrides=['objects.masks=learned', *overrides])
            return json.dumps(mod.hash_parts(cfg), sort_keys=True)
        assert h() == h('export.tolerance=1e-4') == h('export.tolerance=0.01')
        assert h() != h('export.opset=17')
        assert '"tolerance": 0.0001' in h()           # as hashed before the default moved
