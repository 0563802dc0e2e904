"""Self-supervised losses: photometric error, auto-masking, smoothness, sparsity, odometry scale."""
import json
import math

import pytest
import torch

from training.losses import (INVALID_ERROR, edge_aware_smoothness, min_reprojection_loss, motion_sparsity,
                             photometric_error, ssim_error, translation_magnitude_loss)

B, H, W = 2, 32, 64


def test_identical_images_have_zero_error_and_zero_loss():
    torch.manual_seed(0)
    img = torch.rand(B, 3, H, W)
    assert float(ssim_error(img, img).abs().max()) < 1e-6
    assert float(photometric_error(img, img).abs().max()) < 1e-6
    ones = torch.ones(B, 1, H, W)
    sources = [torch.rand_like(img), torch.rand_like(img)]
    loss, _, min_error = min_reprojection_loss(img, [img, img], sources, [ones, ones])
    assert float(loss) < 1e-6 and float(min_error.max()) < 1e-6


def test_photometric_error_grows_with_the_difference():
    torch.manual_seed(0)
    img = torch.rand(B, 3, H, W)
    small = photometric_error(img + 0.05 * torch.randn_like(img), img).mean()
    large = photometric_error(img + 0.3 * torch.randn_like(img), img).mean()
    assert 0 < small < large <= 1


def test_automask_excludes_pixels_where_the_unwarped_source_is_already_better():
    torch.manual_seed(0)
    target = torch.rand(B, 3, H, W)
    # left half: the scene moves with the camera (source == target), the warp is poor there;
    # right half: the warp is perfect and the unwarped source differs.
    source = torch.rand(B, 3, H, W)
    source[..., : W // 2] = target[..., : W // 2]
    warped = target.clone()
    warped[..., : W // 2] = torch.rand(B, 3, H, W // 2)
    ones = torch.ones(B, 1, H, W)
    loss, automask, _ = min_reprojection_loss(target, [warped], [source], [ones])
    assert float(automask[..., : W // 2 - 2].max()) == 0.0
    assert float(automask[..., W // 2 + 2:].min()) == 1.0
    # only the (perfect) right half counts: its error is ~0 except the column whose 3x3 SSIM window
    # reaches into the left half, far below the error of the poorly warped left half
    left_error = float(photometric_error(warped, target)[..., : W // 2 - 2].mean())
    assert float(loss) < 0.05 * left_error


def test_min_over_sources_skips_out_of_view_samples():
    torch.manual_seed(0)
    target = torch.rand(B, 3, H, W)
    good, bad = target.clone(), torch.rand(B, 3, H, W)
    ones, zeros = torch.ones(B, 1, H, W), torch.zeros(B, 1, H, W)
    far_sources = [torch.rand_like(target), torch.rand_like(target)]
    # the perfect warp is out of view everywhere: the loss must come from the bad one
    loss_masked, _, _ = min_reprojection_loss(target, [good, bad], far_sources, [zeros, ones])
    loss_open, _, _ = min_reprojection_loss(target, [good, bad], far_sources, [ones, ones])
    assert float(loss_open) < 1e-6 < float(loss_masked)
    # no source in view: nothing counts, the error map says so, gradients stay finite
    pred = bad.clone().requires_grad_(True)
    loss, automask, min_error = min_reprojection_loss(target, [pred], [far_sources[0]], [zeros])
    loss.backward()
    assert float(automask.sum()) == 0 and float(loss.detach()) == 0
    assert torch.all(min_error == INVALID_ERROR) and torch.isfinite(pred.grad).all()


def test_smoothness_is_zero_for_constant_disparity_and_edge_aware():
    torch.manual_seed(0)
    image = torch.rand(B, 3, H, W)
    assert float(edge_aware_smoothness(torch.full((B, 1, H, W), 0.3), image)) == 0.0
    disp = torch.full((B, 1, H, W), 0.3)
    disp[..., W // 2:] = 0.6  # a depth edge at the middle column
    flat = torch.full((B, 3, H, W), 0.5)
    edged = flat.clone()
    edged[..., W // 2:] = 0.0  # an image edge at the same place
    assert 0 < float(edge_aware_smoothness(disp, edged)) < float(edge_aware_smoothness(disp, flat))
    # mean-normalised: scaling the disparity changes nothing
    assert torch.allclose(edge_aware_smoothness(disp, flat), edge_aware_smoothness(5 * disp, flat))


def test_motion_sparsity_prefers_few_large_motions_to_many_small_ones():
    assert float(motion_sparsity(torch.zeros(B, 2, H, W))) == 0.0
    dense = torch.ones(B, 2, H, W)             # every pixel moves 1 px
    sparse = torch.zeros(B, 2, H, W)
    sparse[..., : W // 10] = W / (W // 10)  # ~1/10 of the pixels, same total |m|
    assert torch.allclose(dense.abs().mean(), sparse.abs().mean())
    assert 0 < float(motion_sparsity(sparse)) < float(motion_sparsity(dense))


def test_translation_magnitude_loss_uses_only_known_distances():
    t = torch.tensor([[3.0, 0.0, 4.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], requires_grad=True)
    d = torch.tensor([4.0, float('nan'), 2.0])
    loss = translation_magnitude_loss(t, d)
    assert abs(loss.item() - (1.0 + 1.0) / 2) < 1e-5
    loss.backward()
    assert torch.isfinite(t.grad).all() and float(t.grad[1].abs().sum()) == 0
    none = translation_magnitude_loss(t, torch.full((3,), float('nan')))
    assert none.item() == 0.0 and none.requires_grad
    explicit = translation_magnitude_loss(t.detach(), d, torch.tensor([True, False, False]))
    assert abs(float(explicit) - 1.0) < 1e-5



def test_relative_pose_loss_penalises_direction_and_rotation_and_skips_unknown_rows():
    import math

    import pytest
    from training.losses import relative_pose_loss
    from training.networks.pose import transformation_from_parameters

    def T(rot_z_deg, t):
        aa = torch.tensor([[0.0, 0.0, math.radians(rot_z_deg)]])
        return transformation_from_parameters(aa, torch.tensor([t]))

    odom = torch.cat([T(0, [0.0, 0.0, 1.2]), torch.full((1, 4, 4), float('nan'))])
    junk = T(30, [5.0, 5.0, 5.0])
    assert relative_pose_loss(torch.cat([T(0, [0, 0, 1.2]), junk]), odom).item() == pytest.approx(0, abs=1e-5)
    # same length, wrong direction: the length-only term would see no error
    assert relative_pose_loss(torch.cat([T(0, [1.2, 0, 0]), junk]), odom).item() == pytest.approx(2.4, rel=1e-4)
    # 1 degree of rotation costs about rotation_weight * 0.01745
    one_deg = relative_pose_loss(torch.cat([T(1, [0, 0, 1.2]), junk]), odom, rotation_weight=10.0).item()
    assert one_deg == pytest.approx(10 * math.radians(1), rel=1e-2)
    none = torch.full((2, 4, 4), float('nan'))
    zero = relative_pose_loss(torch.cat([T(1, [0, 0, 1.2]), junk]).requires_grad_(), none)
    assert zero.item() == 0.0 and zero.requires_grad


def test_keep_mask_leaves_pixels_out_of_the_photometric_loss():
    """Stage 4 with final.dynamic_photometric = false: labelled dynamic pixels get no photometric loss,
    whatever their error, so only their pseudo labels set their depth."""
    torch.manual_seed(0)
    target = torch.rand(B, 3, H, W)
    source = torch.rand(B, 3, H, W)
    warped = target.clone()
    warped[..., :, : W // 4] = torch.rand(B, 3, H, W // 4)      # badly warped object on the left
    ones = torch.ones(B, 1, H, W)
    keep = ones.clone()
    keep[..., : W // 4 + 2] = 0                                   # the object and its SSIM border
    with_obj, _, _ = min_reprojection_loss(target, [warped], [source], [ones])
    without, automask, _ = min_reprojection_loss(target, [warped], [source], [ones], keep=keep)
    assert float(automask[..., : W // 4 + 2].max()) == 0.0
    assert float(without) < 1e-3 < float(with_obj)


def test_final_model_skips_photometric_loss_on_labelled_dynamic_pixels_only_when_asked():
    from training.stages.final import FinalModel
    from training.stages.scene_model import SceneModelConfig

    dynamic = torch.zeros(2, H, W, dtype=torch.bool)
    dynamic[:, :4, :5] = True
    batch = {'pseudo_dynamic': dynamic}
    target = torch.rand(2, 3, H, W)
    assert FinalModel(SceneModelConfig()).photometric_keep(batch, target) is None        # the reference
    keep = FinalModel(SceneModelConfig(), dynamic_photometric=False).photometric_keep(batch, target)
    assert keep.shape == (2, 1, H, W) and float(keep.sum()) == 2 * (H * W - 20)
    assert float(keep[:, 0, :4, :5].max()) == 0.0
    assert FinalModel(SceneModelConfig(), dynamic_photometric=False).photometric_keep({}, target) is None


def test_final_model_leaves_unexplained_pixels_to_the_network_unless_they_are_labelled_dynamic():
    """final.unexplained_motion: a mover no mask caught (flagged by the optical cue) gets neither the
    photometric loss nor the static anchor to stage 1's depth (which would hold it pushed back); a flagged
    pixel that is labelled dynamic keeps its pseudo label; the rest of the image is unchanged."""
    from training.stages.final import FinalModel
    from training.stages.scene_model import SceneModelConfig

    dynamic = torch.zeros(2, H, W, dtype=torch.bool)
    dynamic[:, :4, :5] = True
    unexplained = torch.zeros(2, H, W, dtype=torch.bool)
    unexplained[:, :4, :8] = True                    # 20 labelled dynamic + 12 not
    unexplained[:, -3:, -3:] = True                  # 9 more, not labelled
    label = torch.full((2, H, W), 10.0)
    target = torch.rand(2, 3, H, W)
    batch = {'pseudo_dynamic': dynamic, 'unexplained': unexplained, 'pseudo_depth': label}
    model = FinalModel(SceneModelConfig(), pseudo_weight=1.0, pseudo_loss='relative', static_weight=1.0)
    keep = model.photometric_keep(batch, target)
    assert keep.shape == (2, 1, H, W) and float(keep.sum()) == 2 * (H * W - 21)
    assert float(keep[:, 0, :4, 5:8].max()) == 0.0 and float(keep[:, 0, :4, :5].min()) == 1.0
    # labelled dynamic pixels also leave with dynamic_photometric off
    keep_off = FinalModel(SceneModelConfig(), dynamic_photometric=False).photometric_keep(batch, target)
    assert float(keep_off.sum()) == 2 * (H * W - 41)
    # a network that put the unexplained pixels 2x farther than stage 1's label (pushed back): no anchor pull
    depth = torch.full((2, 1, H, W), 10.0)
    far = unexplained[:, None] & ~dynamic[:, None]
    depth[far] = 20.0
    depth.requires_grad_()
    total, logs = model.extra_loss(batch, {0: depth})
    assert logs['static_anchor'] == pytest.approx(0.0, abs=1e-6) and logs['pseudo_loss'] == pytest.approx(0.0, abs=1e-6)
    total.backward()
    assert not depth.grad[far].any()
    without, logs_without = model.extra_loss({k: v for k, v in batch.items() if k != 'unexplained'}, {0: depth})
    assert logs_without['static_anchor'] > 0.01                       # the anchor would have pulled them back


def test_unexplained_motion_is_off_by_default_checked_and_hashed_only_when_on():
    from training.config import FinalStageConfig, load_config
    from training.stages.final import hash_parts

    assert FinalStageConfig().unexplained_motion == 0.0                  # the reference: off
    for bad in (-0.5, float('nan')):
        with pytest.raises(ValueError, match='final.unexplained_motion'):
            FinalStageConfig(unexplained_motion=bad)

    def final_hash(*overrides):
        return json.dumps(hash_parts(load_config('ci-tiny', overrides=list(overrides)))[0], sort_keys=True)
    assert final_hash() == final_hash('final.unexplained_motion=0')     # runs made before it stay up to date
    assert final_hash() != final_hash('final.unexplained_motion=0.5')
    assert final_hash('final.unexplained_motion=0.5') != final_hash('final.unexplained_motion=0.5',
                                                                    'masks.seeds.optical_min_rigid_px=2')


@pytest.mark.parametrize('mode', ['l1', 'relative'])
def test_pseudo_label_loss_without_alignment_holds_the_labels_scale(mode):
    """A network that has drifted 20 % nearer everywhere: with align='static' k follows it (k = 0.8) and the
    pseudo-label term is content (the scene may drift); with align='none' the term pulls the dynamic
    pixels back to their labels in metres. A network at the label's scale is content either way."""
    from training.stages.final import pseudo_label_loss

    torch.manual_seed(0)
    label = 5 + 20 * torch.rand(2, 1, 8, 12)
    dynamic = torch.zeros(2, 1, 8, 12, dtype=torch.bool)
    dynamic[:, :, 2:5, 3:7] = True
    drifted = {0: (0.8 * label).requires_grad_()}
    aligned, n = pseudo_label_loss(drifted, label, dynamic, mode, align='static')
    fixed, n2 = pseudo_label_loss(drifted, label, dynamic, mode, align='none')
    assert n == n2 == 24
    assert float(aligned) == pytest.approx(0.0, abs=1e-5)
    expected = 0.2 * (label[dynamic].mean() if mode == 'l1' else 1.0)
    assert float(fixed) == pytest.approx(float(expected), rel=1e-4)
    fixed.backward()
    assert (drifted[0].grad[dynamic] < 0).all()            # gradient descent moves them farther, to the labels
    assert not drifted[0].grad[~dynamic].any()
    for align in ('static', 'none'):
        assert float(pseudo_label_loss({0: label.clone()}, label, dynamic, mode, align=align)[0]) == pytest.approx(0.0, abs=1e-6)


def test_pseudo_align_is_checked():
    from training.config import FinalStageConfig

    assert FinalStageConfig().pseudo_align == 'static'          # the reference
    with pytest.raises(ValueError, match='final.pseudo_align'):
        FinalStageConfig(pseudo_align='median')


def test_pseudo_align_at_its_default_leaves_earlier_runs_up_to_date():
    """A stage hashes to_dict(config): final.pseudo_align counts only when changed, so runs finished before the
    option existed (same behaviour) keep their hash; the written config still shows it."""
    from training.config import FinalStageConfig, to_dict

    assert 'pseudo_align' not in to_dict(FinalStageConfig())
    assert to_dict(FinalStageConfig(pseudo_align='none'))['pseudo_align'] == 'none'
    assert to_dict(FinalStageConfig(), all_fields=True)['pseudo_align'] == 'static'


def test_scale_hold_is_zero_for_a_reshaped_scene_at_stage_1s_scale_and_pulls_a_shrunk_one_back():
    """final.scale_weight: a network that moved the static scene around (nearer here, farther there) but kept its
    mean log scale costs nothing (unlike the static anchor, which pulls every pixel to stage 1); one that shrank
    the whole scene 20 % pays |log 0.8| and is pushed farther on every static pixel and never on dynamic ones."""
    from training.stages.final import FinalModel, scale_hold_loss, static_anchor_loss
    from training.stages.scene_model import SceneModelConfig

    torch.manual_seed(0)
    label = 5 + 20 * torch.rand(2, 1, H, W)
    dynamic = torch.zeros(2, 1, H, W, dtype=torch.bool)
    dynamic[:, :, :4, :6] = True            # as many even as odd columns stay static
    wave = torch.ones_like(label)
    wave[..., ::2] = 1.25
    wave[..., 1::2] = 0.8                              # log 1.25 = -log 0.8: same mean log scale
    reshaped = label * wave
    assert float(scale_hold_loss({0: reshaped}, label, dynamic)) == pytest.approx(0.0, abs=1e-5)
    assert float(static_anchor_loss({0: reshaped}, label, dynamic)) > 0.1
    shrunk = (0.8 * label).requires_grad_()
    hold = scale_hold_loss({0: shrunk, 1: shrunk}, label, dynamic)
    assert float(hold) == pytest.approx(-math.log(0.8), rel=1e-4)
    hold.backward()
    assert (shrunk.grad[~dynamic] < 0).all() and not shrunk.grad[dynamic].any()
    # an image with almost no static pixels is left out, not divided by zero
    nearly_all = torch.ones_like(dynamic)
    nearly_all[1, 0, 0, :3] = False
    one_image = scale_hold_loss({0: 0.8 * label}, label, nearly_all)
    assert float(one_image) == 0.0
    # wired into the model's extra loss only when asked
    batch = {'pseudo_depth': label[:, 0], 'pseudo_dynamic': dynamic[:, 0]}
    _, logs = FinalModel(SceneModelConfig(), pseudo_weight=1.0, scale_weight=1.0).extra_loss(batch, {0: 0.8 * label})
    assert logs['scale_hold'] == pytest.approx(-math.log(0.8), rel=1e-4)
    _, logs = FinalModel(SceneModelConfig(), pseudo_weight=1.0).extra_loss(batch, {0: 0.8 * label})
    assert 'scale_hold' not in logs


def test_scale_weight_is_off_by_default_checked_and_hashed_only_when_on():
    from training.config import FinalStageConfig, load_config
    from training.stages.final import hash_parts

    assert FinalStageConfig().scale_weight == 0.0
    for bad in (-1.0, float('nan')):
        with pytest.raises(ValueError, match='final.scale_weight'):
            FinalStageConfig(scale_weight=bad)

    def final_hash(*overrides):
        return json.dumps(hash_parts(load_config('ci-tiny', overrides=list(overrides)))[0], sort_keys=True)
    assert final_hash() == final_hash('final.scale_weight=0')
    assert final_hash() != final_hash('final.scale_weight=1.0')
