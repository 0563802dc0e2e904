"""View-synthesis geometry: warps, residual flow convention, z-buffer splat, flow transfer."""
import math

import pytest
import torch

from training.geometry import (BackprojectDepth, backproject, forward_splat, invert_transform, pixels_to_grid,
                               project, render_reference_in_source, scale_intrinsics, splat_to_source,
                               transfer_flow_to_reference, warp, warp_coordinates)
from training.networks.pose import transformation_from_parameters

B, H, W = 2, 64, 192
FX = 100.0


def intrinsics(b=B):
    K = torch.tensor([[FX, 0.0, 95.5], [0.0, FX, 31.5], [0.0, 0.0, 1.0]]).expand(b, 3, 3).clone()
    return K, torch.linalg.inv(K)


def pose(tx=0.0, ty=0.0, tz=0.0, b=B):
    T = torch.eye(4).repeat(b, 1, 1)
    T[:, 0, 3], T[:, 1, 3], T[:, 2, 3] = tx, ty, tz
    return T


def column_ramp(b=B):
    """[B,3,H,W] image whose value is the column index (so bilinear sampling is exact)."""
    return torch.arange(W, dtype=torch.float32).view(1, 1, 1, W).expand(b, 3, H, W).clone()


def test_backproject_project_roundtrip_returns_pixel_grid_and_depth():
    K, inv_K = intrinsics()
    depth = 1.0 + 10 * torch.rand(B, 1, H, W)
    pts = backproject(depth, inv_K)
    assert torch.allclose(BackprojectDepth(H, W)(depth, inv_K), pts)
    pix, z = project(pts, K, pose())
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing='ij')
    assert torch.allclose(pix[:, 0].view(B, H, W), u.expand(B, H, W), atol=1e-3)
    assert torch.allclose(pix[:, 1].view(B, H, W), v.expand(B, H, W), atol=1e-3)
    assert torch.allclose(z.view(B, 1, H, W), depth, atol=1e-4)


def test_pixels_to_grid_maps_corner_pixels_to_unit_square_corners():
    pix = torch.zeros(1, 2, H * W)
    pix[0, :, 1] = torch.tensor([W - 1.0, H - 1.0])
    grid = pixels_to_grid(pix, H, W)
    assert grid.shape == (1, H, W, 2)
    assert torch.allclose(grid[0, 0, 0], torch.tensor([-1.0, -1.0]))
    assert torch.allclose(grid[0, 0, 1], torch.tensor([1.0, 1.0]))


def test_identity_pose_warp_is_identity():
    K, inv_K = intrinsics()
    img = torch.rand(B, 3, H, W)
    depth = 0.5 + 20 * torch.rand(B, 1, H, W)
    warped, in_view = warp(img, depth, K, inv_K, pose())
    assert torch.allclose(warped, img, atol=1e-4)
    assert bool(in_view.all())


def test_sideways_translation_on_fronto_parallel_plane_shifts_by_fx_t_over_z():
    K, inv_K = intrinsics()
    depth = torch.full((B, 1, H, W), 10.0)
    T = pose(tx=0.5)  # source camera sees the plane shifted: u_s = u + fx * 0.5 / 10 = u + 5
    pix, in_view = warp_coordinates(depth, K, inv_K, T)
    u = torch.arange(W, dtype=torch.float32)
    assert torch.allclose(pix[:, 0], (u + 5.0).expand(B, H, W), atol=1e-3)
    warped, valid = warp(column_ramp(), depth, K, inv_K, T)
    assert torch.allclose(warped[..., :W - 5], (u[:W - 5] + 5).expand(B, 3, H, W - 5), atol=1e-3)
    assert bool((valid[..., :W - 5] == 1).all()) and bool((valid[..., W - 4:] == 0).all())


def test_forward_translation_scales_pixels_about_principal_point():
    K, inv_K = intrinsics()
    depth = torch.full((B, 1, H, W), 10.0)
    pix, _ = warp_coordinates(depth, K, inv_K, pose(tz=-2.0))  # camera moved 2 m forward: z 10 → 8
    u = torch.arange(W, dtype=torch.float32)
    expected = 95.5 + (u - 95.5) * 10.0 / 8.0
    assert torch.allclose(pix[0, 0, 0], expected, atol=1e-3)


def test_residual_flow_moves_the_sample_by_exactly_k_pixels():
    K, inv_K = intrinsics()
    depth = 2.0 + 30 * torch.rand(B, 1, H, W)
    T = transformation_from_parameters(torch.tensor([[0.01, -0.02, 0.005]] * B), torch.tensor([[0.1, 0.0, -0.4]] * B))
    flow = torch.zeros(B, 2, H, W)
    flow[:, 0], flow[:, 1] = 2.5, -1.25
    rigid, _ = warp_coordinates(depth, K, inv_K, T)
    moved, _ = warp_coordinates(depth, K, inv_K, T, flow)
    assert torch.allclose(moved - rigid, flow, atol=1e-4)
    # and the sampled value follows: identity pose on a column ramp samples column u + 2.5
    warped, _ = warp(column_ramp(), torch.full((B, 1, H, W), 5.0), K, inv_K, pose(), flow)
    u = torch.arange(W, dtype=torch.float32)
    assert torch.allclose(warped[:, :, 5:-5, 5:W - 5], (u[5:W - 5] + 2.5).expand(B, 3, H - 10, W - 10), atol=1e-3)


def test_out_of_view_and_behind_camera_samples_are_masked():
    K, inv_K = intrinsics()
    depth = torch.full((B, 1, H, W), 1.0)
    _, valid = warp(torch.rand(B, 3, H, W), depth, K, inv_K, pose(tz=-2.0))  # plane is now behind the camera
    assert not bool(valid.any())


def test_invert_transform_matches_matrix_inverse():
    T = transformation_from_parameters(torch.randn(B, 3) * 0.3, torch.randn(B, 3))
    assert torch.allclose(invert_transform(T), torch.linalg.inv(T), atol=1e-5)


def test_forward_splat_identity_reproduces_depth():
    K, _ = intrinsics()
    depth = 1.0 + 10 * torch.rand(B, 1, H, W)
    for upsample in (1, 3):
        assert torch.allclose(forward_splat(depth, K, pose(), upsample), depth, atol=1e-4)


def test_scale_intrinsics_maps_subpixels_into_their_parent_pixel():
    K, _ = intrinsics(1)
    K3 = scale_intrinsics(K, 3.0)
    # sub-pixels 0,1,2 of pixel 0 lie at -1/3, 0, +1/3 of pixel 0 after mapping back
    u3 = torch.tensor([0.0, 1.0, 2.0])
    back = (u3 - K3[0, 0, 2]) / K3[0, 0, 0] * K[0, 0, 0] + K[0, 0, 2]
    assert torch.allclose(back, torch.tensor([-1 / 3, 0.0, 1 / 3]), atol=1e-5)


def two_layer_scene():
    """Background at 20 m with a 20-px-wide foreground patch at 5 m (columns 80..99)."""
    depth = torch.full((B, 1, H, W), 20.0)
    depth[..., 80:100] = 5.0
    return depth


def test_forward_splat_keeps_the_nearest_surface():
    K, _ = intrinsics()
    depth = two_layer_scene()
    # camera moves 0.5 m left (points shift right): background by 2.5 px, foreground by 10 px.
    out = forward_splat(depth, K, pose(tx=0.5), upsample=3)
    # foreground now covers columns 90..109; background previously at 88..107 is hidden there
    assert torch.allclose(out[..., 92:108], torch.tensor(5.0), atol=1e-3)
    assert torch.allclose(out[..., 20:60], torch.tensor(20.0), atol=1e-3)
    # dis-occluded strip behind the foreground's left edge has no data
    assert bool((out[..., 84:88] == 0).all())


def test_splat_carries_values_with_residual_flow_and_occlusion():
    """A mask of the foreground, moved 3 px further right by its own motion, lands where the object is."""
    K, _ = intrinsics()
    depth = two_layer_scene()
    mask = torch.zeros(B, 1, H, W)
    mask[..., 80:100] = 1.0
    flow = torch.zeros(B, 2, H, W)
    flow[:, 0, :, 80:100] = 3.0
    depth_src, mask_src = splat_to_source(depth, K, pose(tx=0.5), values=mask, residual_flow=flow)
    # rigidly the patch goes to columns 90..109, with its motion to 93..112; it hides the background there
    assert torch.allclose(mask_src[..., 94:112], torch.tensor(1.0))
    assert torch.allclose(depth_src[..., 94:112], torch.tensor(5.0), atol=1e-3)
    assert float(mask_src[..., 20:80].abs().max()) == 0.0 and float(mask_src[..., 115:].abs().max()) == 0.0
    assert torch.allclose(forward_splat(depth, K, pose(tx=0.5)), splat_to_source(depth, K, pose(tx=0.5))[0])


def test_render_reference_in_source_identity_and_holes():
    K, inv_K = intrinsics()
    img = torch.rand(B, 3, H, W)
    rendered, depth_src, valid = render_reference_in_source(img, two_layer_scene(), K, inv_K, pose())
    assert torch.allclose(rendered, img, atol=1e-4) and bool(valid.all())
    rendered, depth_src, valid = render_reference_in_source(img, two_layer_scene(), K, inv_K, pose(tx=0.5))
    assert bool((valid[..., 84:88] == 0).all()) and bool((rendered[..., 84:88] == 0).all())
    # a background pixel is rendered with the reference colour it came from (2.5 px shift → average)
    ref_col = img[..., 40:41] * 0.5 + img[..., 41:42] * 0.5
    assert torch.allclose(rendered[..., 43:44], ref_col, atol=1e-4)


def test_transfer_flow_to_reference_copies_visible_and_zeroes_occluded():
    K, inv_K = intrinsics()
    depth = two_layer_scene()
    T = pose(tx=0.5)
    depth_src = forward_splat(depth, K, T, upsample=3)
    flow_src = torch.zeros(B, 2, H, W)
    flow_src[:, 0] = 3.0          # everything visible in view s moves 3 px right ...
    flow_src[:, 1, :, 92:108] = -2.0  # ... the foreground also 2 px up
    flow_ref = transfer_flow_to_reference(flow_src, depth_src, depth, K, inv_K, T)
    assert torch.allclose(flow_ref[:, 0, :, 20:60], torch.tensor(3.0))
    # foreground pixels 82..97 project to 92..107 in view s
    assert torch.allclose(flow_ref[:, 1, :, 83:97], torch.tensor(-2.0), atol=1e-4)
    # background pixels hidden by the foreground in view s (ref columns ~90..99 are foreground itself;
    # background columns 100..104 project to 102.5..106.5 where the foreground sits) get no flow
    assert bool((flow_ref[..., 101:104] == 0).all())


def test_transfer_flow_is_differentiable_in_the_flow():
    K, inv_K = intrinsics()
    depth = two_layer_scene()
    T = pose(tx=0.5)
    flow_src = torch.zeros(B, 2, H, W, requires_grad=True)
    out = transfer_flow_to_reference(flow_src, forward_splat(depth, K, T), depth, K, inv_K, T)
    out.sum().backward()
    assert flow_src.grad is not None and float(flow_src.grad.abs().sum()) > 0


def test_warp_with_true_object_motion_reconstructs_the_reference():
    """A patch that moved 4 px right in the source is explained exactly by a +4 px residual flow there."""
    K, inv_K = intrinsics()
    torch.manual_seed(0)
    ref = torch.rand(B, 3, H, W)
    src = ref.clone()
    src[..., 20:40, 64:84] = ref[..., 20:40, 60:80]  # the patch (ref columns 60..79) appears 4 px to the right
    depth = torch.full((B, 1, H, W), 10.0)
    flow = torch.zeros(B, 2, H, W)
    flow[:, 0, 20:40, 60:80] = 4.0
    rigid, _ = warp(src, depth, K, inv_K, pose())
    moved, _ = warp(src, depth, K, inv_K, pose(), flow)
    assert not torch.allclose(rigid[..., 20:40, 60:80], ref[..., 20:40, 60:80])
    assert torch.allclose(moved[..., 20:40, 60:80], ref[..., 20:40, 60:80], atol=1e-5)


@pytest.mark.parametrize('angle', [0.0, 1e-6, 0.3])
def test_rodrigues_rotation_is_orthonormal_and_matches_z_rotation(angle):
    T = transformation_from_parameters(torch.tensor([[0.0, 0.0, angle]]), torch.zeros(1, 3))
    R = T[0, :3, :3]
    c, s = math.cos(angle), math.sin(angle)
    assert torch.allclose(R, torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]), atol=1e-6)
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6)
