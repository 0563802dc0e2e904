"""Depth Scale Alignment (training.stages.dsa_model): the geometric anchor recovers a known scale, the
object and its box are hidden from the input, β stays positive, the loss, and a short training that
learns a correction of the anchor."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.stages.dsa_model import N_SCALARS, DsaModelConfig, DsaNet, dsa_inputs, object_box, scale_loss

H, W = 64, 96
FY = 60.0
CY = 23.5
K = np.array([[60.0, 0, 47.5], [0, FY, CY], [0, 0, 1]])
CAM_HEIGHT = 1.5
MAX_DEPTH = 100.0
MARGIN = 2
WRONG_SCALE = 3.7    # the object network's depth is this many times too small (any scale)


def contact_depth(bottom_row):
    """Depth of the ground at the bottom edge of pixel row `bottom_row`: where a box standing there touches it."""
    return CAM_HEIGHT * FY / (bottom_row + 0.5 - CY)


def make_scene(bottom=49, c0=30, width_px=25, height_px=20, truth=1.0, seed=0):
    """(rgb, scene depth, instances, object depth, Z0): flat ground seen from 1.5 m (60 m wall above the
    horizon), a frontal box (id 1) standing on it with contact depth Z0; its scene depth is truth·Z0 and
    the object network's depth Z0/WRONG_SCALE."""
    v = np.arange(H, dtype=np.float64)[:, None].repeat(W, 1)
    with np.errstate(divide='ignore'):
        g = np.where(v > CY, CAM_HEIGHT * FY / (v - CY), np.inf)
    depth = np.minimum(g, 60.0).astype(np.float32)
    inst = np.zeros((H, W), np.int64)
    inst[bottom + 1 - height_px:bottom + 1, c0:c0 + width_px] = 1
    z0 = contact_depth(bottom)
    depth[inst == 1] = truth * z0
    obj = np.where(inst == 1, z0 / WRONG_SCALE, 0).astype(np.float32)
    rgb = np.random.default_rng(seed).random((3, H, W)).astype(np.float32)
    return rgb, depth, inst, obj, z0


def inputs(scene, **kw):
    rgb, depth, inst, obj, _ = scene
    args = dict(box_margin=MARGIN, max_depth=MAX_DEPTH)
    args.update(kw)
    return dsa_inputs(rgb, depth, inst, 1, obj, K, **args)


def batch(inps):
    return (torch.from_numpy(np.stack([i.image for i in inps])), torch.from_numpy(np.stack([i.scalars for i in inps])),
            torch.tensor([i.log_anchor for i in inps], dtype=torch.float32))


@pytest.mark.parametrize('bottom', [38, 49, 60])
def test_anchor_puts_the_object_where_it_stands_on_the_ground(bottom):
    """The anchor scales the object network's (wrongly scaled) depth to the depth of its ground contact."""
    sc = make_scene(bottom=bottom)
    inp = inputs(sc)
    z0 = sc[4]
    assert inp.anchor_ok
    assert inp.norm_depth[inp.mask].mean() == pytest.approx(1.0, rel=1e-5)
    assert not inp.norm_depth[~inp.mask].any()
    assert np.allclose(math.exp(inp.log_anchor) * inp.norm_depth[inp.mask], z0, rtol=0.03)
    assert inp.image.shape == (5, H, W) and inp.image.dtype == np.float32
    assert inp.scalars.shape == (N_SCALARS,) and inp.scalars[1] == 1.0      # the anchor_ok feature
    assert np.array_equal(inp.image[:3], sc[0]) and np.array_equal(inp.image[4], inp.norm_depth)


def test_upright_anchor_ignores_the_object_depth_in_its_lowest_rows():
    """Stage 2's object depth is least right in the object's lowest rows, next to the road (there it bends
    towards the nearer road). 'contact' divides the contact depth by that bent depth and puts the object
    too far; 'upright' uses the object's median depth and keeps it where it stands."""
    sc = make_scene(bottom=49)
    rgb, depth, inst, obj, z0 = sc
    bent = obj.copy()
    rows = np.flatnonzero(inst.any(1))
    bent[rows[-2]:rows[-1] + 1][inst[rows[-2]:rows[-1] + 1] == 1] *= 0.7     # the lowest two rows 30 % nearer
    contact = dsa_inputs(rgb, depth, inst, 1, bent, K, MARGIN, MAX_DEPTH, anchor='contact')
    upright = dsa_inputs(rgb, depth, inst, 1, bent, K, MARGIN, MAX_DEPTH)       # the default
    m = inst == 1
    med = lambda inp: float(np.median(math.exp(inp.log_anchor) * inp.norm_depth[m]))
    assert med(contact) > 1.3 * z0                      # the object pushed back by the bent rows
    assert med(upright) == pytest.approx(z0, rel=0.03)
    # on an object network with the right shape the two agree
    assert math.exp(inputs(sc).log_anchor) == pytest.approx(math.exp(inputs(sc, anchor='contact').log_anchor), rel=1e-6)
    assert DsaModelConfig().anchor == 'upright'
    with pytest.raises(ValueError, match='dsa.model.anchor'):
        DsaModelConfig(anchor='lowest')


def short_mask(sc, rows=4):
    """The scene with the object's mask stopping `rows` rows above its bottom (as learned masks do: a car's
    dark lower body and wheels fall outside it); the object's scene depth stays where it is."""
    rgb, depth, inst, obj, z0 = sc
    cut = inst.copy()
    last = np.flatnonzero(inst.any(1))[-1]
    cut[last - rows + 1:last + 1] = 0
    return rgb, depth, cut, np.where(cut == 1, obj, 0).astype(np.float32), z0


def test_extend_to_ground_reads_the_contact_below_a_mask_that_stops_short():
    """A mask 4 rows short of the object's bottom: the ray through its lowest pixel meets the ground behind
    the object and the anchor puts it ~18 % too far. extend_to_ground reads the ground where it starts below
    the mask (within the normals' step of the true contact) and fills the gap in the pseudo label with the
    depth of each column's lowest object pixel; with the full mask the option changes the anchor by < 10 %."""
    from training.stages.dsa import object_label

    sc = make_scene(bottom=49)
    z0 = sc[4]
    cut = short_mask(sc)
    m = cut[2] == 1
    scale = lambda inp: float(np.median(math.exp(inp.log_anchor) * inp.norm_depth[m]))
    assert scale(inputs(cut)) > 1.15 * z0
    ext = inputs(cut, extend_to_ground=True)
    assert ext.anchor_ok and scale(ext) == pytest.approx(z0, rel=0.1)
    # the fill: the object's hidden rows (and the ground rows whose normals see the object) below the mask,
    # at the lowest mask pixel's D̃, never inside the mask
    full = sc[2] == 1
    assert not ext.fill[m].any()
    assert (ext.fill[full & ~m] == pytest.approx(ext.norm_depth[m].mean())) and (ext.fill[full & ~m] > 0).all()
    below = np.flatnonzero(ext.fill.any(1))
    assert below[-1] <= np.flatnonzero(full.any(1))[-1] + 2          # stops within the normals' step
    pixels, depth = object_label(ext, 2.0)
    assert (pixels == (m | (ext.fill > 0))).all() and np.allclose(depth[full], 2.0 * ext.norm_depth[m].mean())
    # the default leaves inputs and labels as they were
    plain = inputs(cut)
    assert plain.fill is None
    pixels, depth = object_label(plain, 2.0)
    assert (pixels == m).all() and np.array_equal(depth, 2.0 * plain.norm_depth)
    assert math.exp(inputs(sc, extend_to_ground=True).log_anchor) == pytest.approx(math.exp(inputs(sc).log_anchor), rel=0.1)


def test_label_shape_scene_keeps_the_dsa_scale_and_takes_stage_1s_shape():
    """dsa.label_shape 'scene': the object's label is stage 1's depth rescaled so that its median is the DSA
    label's (β·D̃), on the same pixels; the gap below a short mask keeps the depth of its column's lowest object
    pixel (a car's back is upright); with no valid stage-1 depth on the object the β·D̃ label stays."""
    from training.config import DsaStageConfig
    from training.stages.dsa import object_label

    sc = make_scene(bottom=49)
    cut = short_mask(sc)
    m = cut[2] == 1
    ext = inputs(cut, extend_to_ground=True)
    rows = np.arange(m.shape[0], dtype=np.float32)[:, None]
    scene = np.broadcast_to(10.0 + 0.1 * rows, m.shape).astype(np.float32).copy()   # a shape D̃ does not have
    pixels, ref = object_label(ext, 2.0)
    pixels_s, depth = object_label(ext, 2.0, scene)
    assert (pixels_s == pixels).all()
    assert np.median(depth[m]) == pytest.approx(np.median(ref[m]), rel=0.02)
    k = depth[m] / scene[m]
    assert np.ptp(k) < 1e-4                                       # stage 1's shape on the mask
    gap = pixels & ~m
    assert gap.any()
    for u in np.flatnonzero(gap.any(0)):
        lowest = np.flatnonzero(m[:, u])[-1]
        assert np.allclose(depth[gap[:, u], u], depth[lowest, u])
    assert np.array_equal(object_label(ext, 2.0, np.zeros_like(scene))[1], ref)
    with pytest.raises(ValueError, match='label_shape'):
        DsaStageConfig(label_shape='scenes')


def test_extend_to_ground_stops_at_another_object():
    """Another object right below the mask: no column reaches the ground, so nothing is filled and the mask's
    own contact counts (the same anchor as without the option)."""
    rgb, depth, inst, obj, _ = short_mask(make_scene(bottom=49))
    last = np.flatnonzero(inst.any(1))[-1]
    other = inst.copy()
    other[last + 1:last + 8, 20:70] = 2
    ext = dsa_inputs(rgb, depth, other, 1, obj, K, MARGIN, MAX_DEPTH, extend_to_ground=True)
    plain = dsa_inputs(rgb, depth, other, 1, obj, K, MARGIN, MAX_DEPTH)
    assert ext.fill is None and ext.log_anchor == plain.log_anchor


def test_cap_puts_an_object_cut_off_by_the_image_bottom_no_farther_than_stage_1():
    """A near box whose contact with the ground lies below the image (true contact row 70 of 64): the ground at
    its lowest visible row lies behind it, so the plain anchor puts it too far. bottom_edge='cap' takes the
    anchor as an upper bound and uses the stage-1 scale when that is nearer; objects standing in view and stage-1
    depths beyond the bound keep the anchor."""
    rgb, depth, inst, obj, z0 = make_scene(bottom=70, height_px=30)
    assert inst[-1].any() and z0 < contact_depth(H - 1)
    plain = dsa_inputs(rgb, depth, inst, 1, obj, K, MARGIN, MAX_DEPTH)
    assert math.exp(plain.log_anchor) == pytest.approx(contact_depth(H - 1), rel=0.05)     # 1.5x too far
    cap = dsa_inputs(rgb, depth, inst, 1, obj, K, MARGIN, MAX_DEPTH, bottom_edge='cap')
    assert cap.anchor_ok and math.exp(cap.log_anchor) == pytest.approx(z0, rel=1e-4)
    # a learned mask stopping short of that car: the rows below it are the car's body, not ground (with and
    # without extend_to_ground, which finds no ground there)
    short = short_mask((rgb, depth, inst, obj, z0), rows=6)
    for ext in (False, True):
        inp = dsa_inputs(*short[:3], 1, short[3], K, MARGIN, MAX_DEPTH, bottom_edge='cap', extend_to_ground=ext)
        assert inp.fill is None and math.exp(inp.log_anchor) == pytest.approx(z0, rel=1e-4)
        assert math.exp(dsa_inputs(*short[:3], 1, short[3], K, MARGIN, MAX_DEPTH, extend_to_ground=ext).log_anchor) > 1.3 * z0
    # stage 1 farther than the bound: the bound stays
    far = make_scene(bottom=70, height_px=30, truth=3.0)
    capped = dsa_inputs(far[0], far[1], far[2], 1, far[3], K, MARGIN, MAX_DEPTH, bottom_edge='cap')
    assert capped.log_anchor == pytest.approx(plain.log_anchor)
    # an object standing in view keeps its anchor even where stage 1 puts it nearer
    near = make_scene(bottom=49, truth=0.5)
    assert dsa_inputs(near[0], near[1], near[2], 1, near[3], K, MARGIN, MAX_DEPTH, bottom_edge='cap').log_anchor == \
        dsa_inputs(near[0], near[1], near[2], 1, near[3], K, MARGIN, MAX_DEPTH).log_anchor


def test_untrained_net_returns_the_anchor():
    """The zero-initialised last layer makes the untrained network the geometric estimate, β = exp(log β₀) > 0."""
    torch.manual_seed(0)
    net = DsaNet(DsaModelConfig(width_mult=0.25, hidden=32)).eval()
    inps = [inputs(make_scene(bottom=b, seed=b)) for b in (40, 49, 58)]
    image, scalars, anchor = batch(inps)
    with torch.no_grad():
        beta = net.scale(image, scalars, anchor)
    assert torch.equal(beta, torch.exp(anchor))
    assert (beta > 0).all()


def test_fallback_anchor_without_a_ground_plane():
    """No ground to fit (a wall at 10 m everywhere): anchor_ok False and the anchor is the median scene depth
    around the object over the median normalised object depth; use_anchor=False gives log β₀ = 0."""
    rgb, _, inst, obj, _ = make_scene()
    wall = np.full((H, W), 10.0, np.float32)
    inp = dsa_inputs(rgb, wall, inst, 1, obj, K, MARGIN, MAX_DEPTH)
    assert not inp.anchor_ok and inp.scalars[1] == 0.0
    assert math.exp(inp.log_anchor) == pytest.approx(10.0, rel=1e-4)
    inp = dsa_inputs(rgb, make_scene()[1], inst, 1, obj, K, MARGIN, MAX_DEPTH, use_anchor=False)
    assert inp.log_anchor == 0.0 and not inp.anchor_ok


def test_object_without_depth_has_no_input():
    rgb, depth, inst, obj, _ = make_scene()
    assert dsa_inputs(rgb, depth, inst, 1, np.zeros_like(obj), K, MARGIN, MAX_DEPTH) is None
    assert dsa_inputs(rgb, depth, inst, 2, obj, K, MARGIN, MAX_DEPTH) is None   # no such instance


def test_object_box_is_the_tight_box_grown_and_clipped():
    m = np.zeros((10, 12), bool)
    m[3, 4] = m[5, 7] = True
    box = object_box(m, 2)
    rows, cols = np.nonzero(box)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 7, 2, 9) and box.sum() == 7 * 8
    m[:] = False
    m[0, 11] = True
    rows, cols = np.nonzero(object_box(m, 3))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 3, 8, 11)
    assert not object_box(np.zeros((4, 4), bool), 2).any()


def test_context_shows_the_ground_outside_the_box_only():
    """Channel 3 is 0 on the object and in its grown box, and shows log depth on the ground outside it."""
    sc = make_scene()
    inp = inputs(sc)
    ctx = inp.image[3]
    box = object_box(sc[2] == 1, MARGIN)
    assert not ctx[box].any()
    assert not ctx[sc[2] == 1].any()
    ground_outside = np.zeros((H, W), bool)
    ground_outside[30:, :] = True               # below the horizon (the ground)
    ground_outside &= ~object_box(sc[2] == 1, MARGIN + 3)   # away from the box edge
    ground_outside[:, :3] = ground_outside[:, -3:] = ground_outside[-3:] = False   # no normals at the border
    assert (ctx[ground_outside] > 0).all()
    d = sc[1]
    assert np.allclose(ctx[ground_outside], np.log1p(d[ground_outside]) / math.log1p(MAX_DEPTH), atol=1e-6)
    assert not ctx[:20].any()                   # the wall above the horizon is not ground
    assert np.array_equal(inp.context, ctx > 0)


def test_a_box_margin_below_the_normal_step_is_refused():
    """With box_margin < ground_step the ground normals just outside the box are taken across the object, so its
    (hidden) scene depth would decide which context pixels are shown: refused, in the config and in dsa_inputs."""
    from training.config import ConfigError, load_config

    sc = make_scene()
    for margin in (0, 1):
        with pytest.raises(ValueError, match='box_margin'):
            inputs(sc, box_margin=margin)
        with pytest.raises(ConfigError, match='box_margin_px'):
            load_config(preset='ci-tiny', overrides=[f'dsa.box_margin_px={margin}'])


@pytest.mark.parametrize('margin', [2, 3])
@pytest.mark.parametrize('object_depth', [1000.0, 0.5, None], ids=['far', 'near', 'truth-x1.5'])
def test_object_scene_depth_does_not_reach_the_input(margin, object_depth):
    """The scene depth on the object (the thing that is wrong on dynamic objects) changes nothing the network
    sees: image, scalars, anchor and context are identical."""
    sc = make_scene()
    ref = inputs(sc, box_margin=margin)
    rgb, depth, inst, obj, z0 = sc
    changed = depth.copy()
    changed[inst == 1] = 1.5 * z0 if object_depth is None else object_depth
    out = inputs((rgb, changed, inst, obj, z0), box_margin=margin)
    assert np.array_equal(out.image, ref.image)
    assert np.array_equal(out.scalars, ref.scalars)
    assert out.log_anchor == ref.log_anchor and out.anchor_ok == ref.anchor_ok
    assert np.array_equal(out.context, ref.context)


def test_box_interior_scene_depth_does_not_reach_the_input():
    """Any scene depth inside the box (here grown by 5 px), the ground around the object included, is hidden as
    well, up to the normals' step (2 px) from the box edge."""
    sc = make_scene()
    ref = inputs(sc, box_margin=5)
    rgb, depth, inst, obj, z0 = sc
    inner = object_box(inst == 1, 5 - 2)    # the box shrunk by the normals' step
    assert (inner & (inst == 0)).sum() > 100
    for value in (1000.0, 0.5):
        changed = depth.copy()
        changed[inner] = value
        out = inputs((rgb, changed, inst, obj, z0), box_margin=5)
        assert np.array_equal(out.image, ref.image) and np.array_equal(out.scalars, ref.scalars)
        assert out.log_anchor == ref.log_anchor


def test_beta_is_positive_for_any_weights():
    """β = exp(log β₀ + f): positive even where a net with random large weights predicts a negative output
    (log-scales down to about -20 here; float32 exp only underflows below about -87)."""
    torch.manual_seed(1)
    net = DsaNet(DsaModelConfig(width_mult=0.25, hidden=32)).eval()
    with torch.no_grad():
        for p in net.head.parameters():
            p.normal_(0.0, 0.3)
    inps = [inputs(make_scene(bottom=b, c0=c, seed=b + c)) for b in (35, 45, 55, 62) for c in (5, 40, 65)]
    image, scalars, anchor = batch(inps)
    image = image * torch.linspace(0.2, 3.0, len(inps))[:, None, None, None]     # spread the outputs
    with torch.no_grad():
        raw = net(image, scalars)
        beta = net.scale(image, scalars, anchor)
    assert (raw + anchor < 0).any(), 'the test needs negative log-scales to be meaningful'
    assert torch.isfinite(beta).all() and (beta > 0).all()
    assert torch.allclose(beta, torch.exp(anchor + raw))


def _maps(norm, scene, mask):
    t = [torch.from_numpy(np.asarray(a, np.float32))[None] for a in (norm, scene, mask)]
    return t


def test_scale_loss_is_the_relative_error_of_each_object():
    """0 when β·D̃ is the scene depth; otherwise the in-mask relative error, growing with it; pixels outside the
    mask or without scene depth do not count."""
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    norm = np.where(mask, 1.0, 0.0)
    scene = np.full((8, 8), 5.0)
    scene[0, 0] = 0.0
    n, s, m = (t[None] for t in _maps(norm, scene, mask))
    assert scale_loss(torch.tensor([5.0]), n, s, m).item() == pytest.approx(0.0, abs=1e-7)
    losses = [scale_loss(torch.tensor([5.0 * f]), n, s, m).item() for f in (1.1, 1.2, 1.4, 0.5)]
    assert losses == pytest.approx([0.1, 0.2, 0.4, 0.5], rel=1e-5)
    # wild scene depth outside the mask or invalid (0) scene depth inside it changes nothing
    wild = np.where(mask, scene, 1000.0)
    wild[3, 3] = 0.0
    n2, s2, m2 = (t[None] for t in _maps(norm, wild, mask))
    assert scale_loss(torch.tensor([6.0]), n2, s2, m2).item() == pytest.approx(0.2, rel=1e-5)


def test_scale_loss_counts_each_object_once_whatever_its_size():
    """A big object with 10 % error and a small one with 30 %: the loss is their mean, 20 %."""
    big = np.zeros((32, 32), bool)
    big[:, :30] = True
    small = np.zeros((32, 32), bool)
    small[10:13, 10:13] = True
    norm = torch.stack([torch.from_numpy(big.astype(np.float32)), torch.from_numpy(small.astype(np.float32))])[:, None]
    scene = torch.full((2, 1, 32, 32), 10.0)
    scene[1] = 40.0
    mask = torch.stack([torch.from_numpy(big), torch.from_numpy(small)])[:, None]
    loss = scale_loss(torch.tensor([11.0, 40.0 * 1.3]), norm, scene, mask)
    assert loss.item() == pytest.approx(0.2, rel=1e-5)


def test_short_training_learns_a_correction_of_the_anchor():
    """Objects whose true depth is 1.2x where their ground contact puts them: the untrained net (the anchor) is
    17 % off; a short training on a few scenes learns the correction, also on scenes it did not see."""
    torch.manual_seed(0)
    truth = 1.2
    train = [make_scene(bottom=b, c0=c, height_px=hp, truth=truth, seed=i)
             for i, (b, c, hp) in enumerate([(40, 10, 12), (45, 50, 15), (49, 30, 20), (54, 62, 22),
                                             (58, 15, 25), (62, 40, 28)])]
    held_out = [make_scene(bottom=b, c0=c, height_px=hp, truth=truth, seed=100 + i)
                for i, (b, c, hp) in enumerate([(43, 20, 14), (51, 55, 18), (60, 5, 26)])]

    def data(scenes):
        inps = [inputs(sc) for sc in scenes]
        assert all(i.anchor_ok for i in inps)
        image, scalars, anchor = batch(inps)
        norm = torch.from_numpy(np.stack([i.norm_depth for i in inps]))[:, None]
        depth = torch.from_numpy(np.stack([sc[1] for sc in scenes]))[:, None]
        mask = torch.from_numpy(np.stack([i.mask for i in inps]))[:, None]
        beta_true = torch.tensor([truth * sc[4] for sc in scenes], dtype=torch.float32)
        return image, scalars, anchor, norm, depth, mask, beta_true

    net = DsaNet(DsaModelConfig(width_mult=0.25, hidden=32))
    image, scalars, anchor, norm, depth, mask, beta_true = data(train)

    def error(d):
        net.eval()
        with torch.no_grad():
            beta = net.scale(d[0], d[1], d[2])
        net.train()
        return (beta / d[6] - 1).abs().median().item()

    held = data(held_out)
    assert error(held) > 0.15
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(100):
        loss = scale_loss(net.scale(image, scalars, anchor), norm, depth, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert error((image, scalars, anchor, norm, depth, mask, beta_true)) < 0.05
    assert error(held) < 0.05


def test_extend_to_ground_is_off_by_default_and_hashed_only_when_on():
    """Runs made before the option stay up to date; turning it on reruns stage 3 (and what follows)."""
    import json

    from training.config import load_config
    from training.stages.dsa import hash_parts

    def dsa_hash(*overrides):
        return json.dumps(hash_parts(load_config('ci-tiny', overrides=list(overrides)))[0], sort_keys=True)
    assert not load_config('ci-tiny').dsa.extend_to_ground
    assert dsa_hash() == dsa_hash('dsa.extend_to_ground=false')
    assert dsa_hash() != dsa_hash('dsa.extend_to_ground=true')


def test_bottom_edge_is_checked_and_hashed_only_when_changed():
    """dsa.bottom_edge: one of the rules; at its default it leaves earlier runs' stage-3 hash as it was."""
    from training.config import DsaStageConfig, to_dict

    assert DsaStageConfig().bottom_edge == 'anchor'
    with pytest.raises(ValueError, match='dsa.bottom_edge'):
        DsaStageConfig(bottom_edge='clip')
    assert 'bottom_edge' not in to_dict(DsaStageConfig())
    assert to_dict(DsaStageConfig(bottom_edge='cap'))['bottom_edge'] == 'cap'


def test_label_shape_is_hashed_only_when_changed():
    """dsa.label_shape: at its default (the reference's β·D̃) earlier runs keep their stage-3 hash; 'scene' changes
    it, so the pseudo labels are rewritten."""
    import json

    from training.config import load_config
    from training.stages.dsa import hash_parts

    def dsa_hash(*overrides):
        return json.dumps(hash_parts(load_config('ci-tiny', overrides=list(overrides)))[0], sort_keys=True)

    assert dsa_hash() == dsa_hash('dsa.label_shape=object')
    assert dsa_hash() != dsa_hash('dsa.label_shape=scene')
