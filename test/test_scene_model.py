"""Stage-1 SceneModel: training reduces the loss, odometry sets the metric scale, phases, predict."""
import pytest
import torch
import torch.nn.functional as F

from training.stages.scene_model import PHASES, SceneModel, SceneModelConfig, dynamic_pixel_mask

H, W = 64, 192
STEP = 0.5  # metres the camera moves forward per frame


def intrinsics():
    f = 0.6 * W
    return torch.tensor([[f, 0.0, (W - 1) / 2], [0.0, f, (H - 1) / 2], [0.0, 0.0, 1.0]])


def texture(a, b, phase):
    return (0.5 + 0.2 * torch.sin(1.3 * a + phase) * torch.cos(1.1 * b + 2 * phase)
            + 0.15 * torch.sin(3.7 * a - 2.3 * b + phase) + 0.1 * torch.cos(7.1 * a + 5.3 * b + 3 * phase))


def render(cam_z, ss=2):
    """Exact rendering of a textured ground plane (1.5 m below the camera) and a wall at z = 40 m,
    camera at (0, 0, cam_z) looking down +z. Returns (image [3,H,W], depth [1,H,W])."""
    K = intrinsics()
    off = (ss - 1) / (2 * ss)
    v, u = torch.meshgrid(torch.arange(H * ss) / ss - off, torch.arange(W * ss) / ss - off, indexing='ij')
    rx, ry = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    t_ground = torch.where(ry > 1e-3, 1.5 / ry.clamp(min=1e-3), torch.full_like(ry, 1e9))
    t_wall = torch.full_like(rx, 40.0 - cam_z)
    depth = torch.minimum(t_ground, t_wall)
    X, Y, Z = rx * depth, ry * depth, depth + cam_z
    img = torch.stack([torch.where(t_ground < t_wall, texture(X, Z, 0.7 * c), texture(X, Y, 1.9 + 0.5 * c))
                       for c in range(3)]).clamp(0, 1)
    return F.avg_pool2d(img[None], ss)[0], F.avg_pool2d(depth[None, None], ss)[0]


def make_batch(b=2, odometry=True):
    frames, depths = [], []
    for i in range(b):
        frames.append(torch.stack([render(3.0 * i + k * STEP)[0] for k in (-1, 0, 1)]))
        depths.append(render(3.0 * i)[1])
    K = intrinsics().expand(b, 3, 3).clone()
    odom = torch.full((b, 2), STEP if odometry else float('nan'))
    return {'frames': torch.stack(frames), 'frames_raw': torch.stack(frames).clone(), 'K': K,
            'inv_K': torch.linalg.inv(K), 'odom_distance': odom, 'gt_depth': torch.stack(depths),
            'mask': torch.zeros(b, H, W, dtype=torch.int64), 'sequence': ['synthetic'] * b}


@pytest.fixture(scope='module')
def batch():
    return make_batch()


def small_model(**overrides):
    torch.manual_seed(0)
    cfg = SceneModelConfig(width_mult=0.25, pose_width_mult=0.25, motion_channels=8, **overrides)
    return SceneModel(cfg)


def train(model, batch, phase, steps, lr=1e-3):
    opt = torch.optim.Adam([p for name in model.trainable(phase) for p in getattr(model, name).parameters()], lr=lr)
    history = []
    for _ in range(steps):
        loss, logs, _ = model.loss(batch, phase)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(logs)
    return history


def test_training_reduces_the_loss(batch):
    torch.set_num_threads(2)
    history = train(small_model(), batch, 'rigid', 30)
    assert sum(h['photometric'] for h in history[-3:]) / 3 < 0.75 * history[0]['photometric']


def test_odometry_pulls_the_translation_to_the_travelled_distance(batch):
    """The pose starts with ~0.01 m motion; the odometry term (weighted up here to keep the test short)
    brings ‖t‖ to the 0.5 m per frame the camera moved, which the photometric loss alone does not."""
    torch.set_num_threads(2)
    history = train(small_model(odometry_weight=1.0), batch, 'rigid', 30)
    assert history[0]['translation_norm'] < 0.05 and history[0]['odometry'] > 0.45
    assert abs(history[-1]['translation_norm'] - STEP) < 0.1
    control = train(small_model(odometry_weight=1.0), make_batch(odometry=False), 'rigid', 30)
    assert control[-1]['odometry'] == 0.0
    assert abs(control[-1]['translation_norm'] - STEP) > 0.25


@pytest.mark.parametrize('phase', PHASES)
def test_each_phase_trains_only_its_sub_modules(batch, phase):
    model = small_model()
    loss, logs, previews = model.loss(batch, phase)
    assert torch.isfinite(loss)
    loss.backward()
    for name in ('depth', 'pose', 'motion'):
        grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        has_grad = any(float(g.abs().sum()) > 0 for g in grads)
        assert has_grad == (name in model.trainable(phase)), name
    assert previews['image'].shape == (3, H, W) and previews['depth'].shape == (1, H, W)
    assert previews['warped_next'].shape == (3, H, W) and previews['automask'].shape == (1, H, W)
    assert ('flow_prev' in previews) == (phase != 'rigid')
    assert all(isinstance(v, float) for v in logs.values())
    assert 0 < logs['gt_scale_ratio'] and 'gt_abs_rel_median_scaled' in logs
    if phase != 'rigid':
        assert previews['flow_next'].shape == (2, H, W) and 'dynamic_fraction' in logs


def test_forward_is_the_loss_for_ddp(batch):
    model = small_model()
    torch.manual_seed(3)
    a = model(batch, 'rigid')[0]
    torch.manual_seed(3)
    b = model.loss(batch, 'rigid')[0]
    assert torch.allclose(a, b)


def test_predict_shapes_range_and_mode(batch):
    model = small_model()
    model.train()
    out = model.predict(batch)
    assert model.training
    assert set(out) == {'depth', 'flow_prev', 'flow_next'}
    assert out['depth'].shape == (2, 1, H, W)
    assert float(out['depth'].min()) >= 0.1 and float(out['depth'].max()) <= 100.0
    assert not out['depth'].requires_grad
    for key in ('flow_prev', 'flow_next'):
        flow = out[key]
        assert flow.shape == (2, 2, H, W)
        l1 = flow.abs().sum(1)
        assert bool(((l1 == 0) | (l1 >= model.config.flow_epsilon)).all())
    # the untrained depth net starts near init_depth, the scale metric training begins from
    assert 3.0 < float(out['depth'].median()) < 30.0
    # the exported module computes the same depth in eval mode
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.export_module()(batch['frames'][:, 1]), out['depth'], atol=1e-5)


def test_dynamic_pixel_mask_uses_the_two_direction_average():
    prev = torch.zeros(1, 2, 4, 4)
    nxt = torch.zeros(1, 2, 4, 4)
    prev[0, 0, 0, 0], nxt[0, 1, 0, 0] = 1.5, -0.6   # (1.5 + 0.6) / 2 = 1.05 → dynamic
    prev[0, 0, 1, 1] = 1.9                            # 0.95 → static
    mask = dynamic_pixel_mask(prev, nxt, 1.0)
    assert bool(mask[0, 0, 0, 0]) and not bool(mask[0, 0, 1, 1]) and int(mask.sum()) == 1


def test_config_and_batch_errors_are_clear(batch):
    with pytest.raises(ValueError, match='unknown scene model setting'):
        SceneModelConfig.from_dict({'widht_mult': 0.5})
    with pytest.raises(ValueError, match='unknown stage-1 phase'):
        SceneModel.trainable('fancy')
    with pytest.raises(ValueError, match='init_depth'):
        SceneModelConfig(init_depth=500.0)
    cfg = SceneModelConfig.from_dict({'width_mult': 0.5, 'scales': [0, 1]})
    assert cfg.scales == (0, 1)
    model = small_model(scales=(0,))
    with pytest.raises(KeyError, match='inv_K'):
        model.loss({k: v for k, v in batch.items() if k != 'inv_K'}, 'rigid')
    with pytest.raises(ValueError, match='phase'):
        model.loss(batch, 'warmup')
    with pytest.raises(ValueError, match=r'\[B,3\(t-1,t,t\+1\),3,H,W\]'):
        model.loss(dict(batch, frames=batch['frames'][:, :2]), 'rigid')
