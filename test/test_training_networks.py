"""Networks: torchvision-compatible ResNet encoder, depth/pose/motion nets, export module."""
import pytest
import torch

from training.networks import (DepthExportModule, DepthNet, PoseNet, ResidualMotionNet, ResNetEncoder, disp_to_depth,
                               transformation_from_parameters)
from training.networks.motion import local_correlation

B, H, W = 2, 64, 192

# Parameter counts torchvision reports for the ImageNet classifiers (fc included).
TORCHVISION_PARAMS = {18: 11_689_512, 50: 25_557_032}
FC_PARAMS = {18: 512 * 1000 + 1000, 50: 2048 * 1000 + 1000}


def torchvision_resnet_shapes(depth: int) -> dict[str, tuple]:
    """Key → shape of torchvision's resnet18/resnet50 state dict without ``fc``, written out from the
    published architecture (torchvision itself is not installed here)."""
    kind, counts = {18: ('basic', (2, 2, 2, 2)), 50: ('bottleneck', (3, 4, 6, 3))}[depth]
    shapes = {'conv1.weight': (64, 3, 7, 7)}

    def bn(name, c):
        shapes.update({f'{name}.weight': (c,), f'{name}.bias': (c,), f'{name}.running_mean': (c,),
                       f'{name}.running_var': (c,), f'{name}.num_batches_tracked': ()})

    bn('bn1', 64)
    inplanes = 64
    for layer, (planes, n) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        for i in range(n):
            p = f'layer{layer}.{i}'
            if kind == 'basic':
                shapes[f'{p}.conv1.weight'] = (planes, inplanes, 3, 3)
                shapes[f'{p}.conv2.weight'] = (planes, planes, 3, 3)
                bn(f'{p}.bn1', planes)
                bn(f'{p}.bn2', planes)
                out = planes
            else:
                shapes[f'{p}.conv1.weight'] = (planes, inplanes, 1, 1)
                shapes[f'{p}.conv2.weight'] = (planes, planes, 3, 3)
                shapes[f'{p}.conv3.weight'] = (planes * 4, planes, 1, 1)
                bn(f'{p}.bn1', planes)
                bn(f'{p}.bn2', planes)
                bn(f'{p}.bn3', planes * 4)
                out = planes * 4
            if i == 0 and (layer > 1 or inplanes != out):
                shapes[f'{p}.downsample.0.weight'] = (out, inplanes, 1, 1)
                bn(f'{p}.downsample.1', out)
            inplanes = out
    return shapes


@pytest.mark.parametrize('depth', [18, 50])
def test_encoder_state_dict_matches_torchvision(depth):
    enc = ResNetEncoder(depth)
    ours = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    expected = torchvision_resnet_shapes(depth)
    assert ours == expected
    assert sum(p.numel() for p in enc.parameters()) + FC_PARAMS[depth] == TORCHVISION_PARAMS[depth]


def test_known_torchvision_keys_spot_check():
    r18 = ResNetEncoder(18).state_dict()
    r50 = ResNetEncoder(50).state_dict()
    assert r18['layer2.0.downsample.0.weight'].shape == (128, 64, 1, 1)
    assert r18['layer4.1.bn2.running_var'].shape == (512,)
    assert r50['layer1.0.downsample.0.weight'].shape == (256, 64, 1, 1)
    assert r50['layer4.2.conv3.weight'].shape == (2048, 512, 1, 1)
    assert ResNetEncoder(50).num_ch_enc == [64, 256, 512, 1024, 2048]


def fake_torchvision_checkpoint(path, depth=18):
    """A torchvision-style file: random weights, fc included, no num_batches_tracked (old zoo files)."""
    torch.manual_seed(1)
    state = {k: torch.randn(s) if s else torch.tensor(0) for k, s in torchvision_resnet_shapes(depth).items()
             if not k.endswith('num_batches_tracked')}
    state['fc.weight'] = torch.randn(1000, 512 if depth == 18 else 2048)
    state['fc.bias'] = torch.randn(1000)
    state = {k: v.abs() + 0.5 if k.endswith('running_var') else v for k, v in state.items()}
    torch.save(state, path)
    return state


def test_load_pretrained_expands_conv1_for_stacked_frames(tmp_path):
    path = tmp_path / 'resnet18.pth'
    state = fake_torchvision_checkpoint(path)
    rgb = ResNetEncoder(18)
    rgb.load_pretrained(path)
    assert torch.equal(rgb.layer3[1].conv2.weight, state['layer3.1.conv2.weight'])
    pair = ResNetEncoder(18, in_channels=6)
    pair.load_pretrained(path)
    assert torch.allclose(pair.conv1.weight, torch.cat([state['conv1.weight']] * 2, 1) / 2)
    rgb.eval()
    pair.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # two identical frames give the single-frame features
        assert torch.allclose(rgb(x)[0], pair(torch.cat([x, x], 1))[0], atol=1e-4)


def test_load_pretrained_rejects_mismatches(tmp_path):
    path = tmp_path / 'resnet50.pth'
    fake_torchvision_checkpoint(path, depth=50)
    with pytest.raises(ValueError, match='resnet18'):
        ResNetEncoder(18).load_pretrained(path)
    with pytest.raises(ValueError, match='width_mult'):
        ResNetEncoder(50, width_mult=0.5).load_pretrained(path)
    with pytest.raises(FileNotFoundError, match='not found'):
        ResNetEncoder(18).load_pretrained(tmp_path / 'missing.pth')


def test_encoder_feature_shapes_and_width_mult_shrinks_params():
    enc = ResNetEncoder(18, width_mult=0.5)
    feats = enc(torch.rand(B, 3, H, W))
    assert [tuple(f.shape) for f in feats] == [(B, c, H // 2 ** (i + 1), W // 2 ** (i + 1))
                                               for i, c in enumerate(enc.num_ch_enc)]
    full = sum(p.numel() for p in DepthNet(18, 1.0).parameters())
    half = sum(p.numel() for p in DepthNet(18, 0.5).parameters())
    assert half < full / 3


def test_depth_net_outputs_all_scales_in_unit_range():
    net = DepthNet(18, width_mult=0.25)
    with torch.no_grad():
        out = net(torch.rand(B, 3, H, W))
    assert sorted(out) == [0, 1, 2, 3]
    for s, disp in out.items():
        assert disp.shape == (B, 1, H // 2 ** s, W // 2 ** s)
        assert float(disp.min()) >= 0 and float(disp.max()) <= 1
    with pytest.raises(ValueError, match='multiple of 32'):
        net(torch.rand(1, 3, 60, 192))


def test_disp_to_depth_maps_unit_interval_onto_depth_range():
    scaled, depth = disp_to_depth(torch.tensor([0.0, 1.0]), 0.1, 100.0)
    assert torch.allclose(depth, torch.tensor([100.0, 0.1]))
    assert torch.allclose(scaled, torch.tensor([0.01, 10.0]))


def test_export_module_gives_depth_within_range_and_matches_scale_zero():
    net = DepthNet(18, width_mult=0.25, min_depth=0.5, max_depth=80.0).eval()
    with torch.no_grad():
        # large weights on the head saturate the sigmoid, so both ends of the range are exercised
        net.decoder.heads['0'].conv.weight.mul_(200)
        x = torch.rand(3, 3, H, W)
        depth = DepthExportModule(net)(x)
        expected = disp_to_depth(net(x)[0], 0.5, 80.0)[1]
    assert depth.shape == (3, 1, H, W)
    assert torch.allclose(depth, expected)
    assert float(depth.min()) >= 0.5 - 1e-5 and float(depth.max()) <= 80.0 + 1e-3
    assert float(depth.max()) - float(depth.min()) > 10  # not collapsed to a constant


def test_pose_net_convention_and_small_initial_motion():
    torch.manual_seed(0)
    net = PoseNet(18, width_mult=0.25)
    ref, src = torch.rand(B, 3, H, W), torch.rand(B, 3, H, W)
    with torch.no_grad():
        axisangle, translation = net(ref, src)
    assert axisangle.shape == (B, 3) and translation.shape == (B, 3)
    assert float(translation.abs().max()) < 0.1 and float(axisangle.abs().max()) < 0.1
    T_next, _, t_next = net.reference_to_source(ref, src, +1)
    assert torch.allclose(T_next, transformation_from_parameters(axisangle, translation))
    # for the previous frame the net sees (earlier=src, later=ref) and the transform is inverted
    T_prev, aa_prev, t_prev = net.reference_to_source(ref, src, -1)
    forward = transformation_from_parameters(*net(src, ref))
    assert torch.allclose(T_prev @ forward, torch.eye(4).expand(B, 4, 4), atol=1e-5)
    # the inverted transform moves the camera by the same distance the network predicted
    assert torch.allclose(t_prev.norm(dim=1), T_prev[:, :3, 3].norm(dim=1), atol=1e-6)


def test_rotation_gradient_is_finite_at_zero_angle():
    aa = torch.zeros(1, 3, requires_grad=True)
    T = transformation_from_parameters(aa, torch.zeros(1, 3))
    T[:, :3, :3].sum().backward()
    assert torch.isfinite(aa.grad).all()


def test_local_correlation_peaks_at_the_true_displacement():
    torch.manual_seed(0)
    f1 = torch.randn(1, 8, 16, 24)
    f2 = torch.roll(f1, shifts=(-1, 2), dims=(2, 3))  # f2(p + (dx=+2, dy=-1)) == f1(p)
    corr = local_correlation(f1, f2, radius=3)
    assert corr.shape == (1, 49, 16, 24)
    best = corr[..., 4:-4, 4:-4].mean(dim=(2, 3)).argmax().item()
    assert best == (-1 + 3) * 7 + (2 + 3)


def test_motion_net_outputs_flow_in_pixels_shape():
    net = ResidualMotionNet(channels=8, radius=2)
    with torch.no_grad():
        flow = net(torch.rand(B, 3, H, W), torch.rand(B, 3, H, W), torch.ones(B, 1, H, W))
    assert flow.shape == (B, 2, H, W)
    assert float(flow.abs().max()) < 1.0  # starts near zero motion
    with pytest.raises(ValueError, match='multiple of 16'):
        net(torch.rand(1, 3, 40, 64), torch.rand(1, 3, 40, 64), torch.ones(1, 1, 40, 64))
