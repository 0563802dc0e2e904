"""Self-supervised losses: photometric error with auto-masking, smoothness, motion sparsity, odometry scale.

Photometric error follows monodepth2 (0.85 SSIM + 0.15 L1, 3x3 SSIM with c1 = 0.01², c2 = 0.03²);
the reference code's variant (3·SSIM without luminance + 2·L1) is an incidental choice
(reference-pipeline §6.2). Images are float32 in [0,1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2
INVALID_ERROR = 1.0e3  # photometric error given to out-of-view samples; far above any real error (<= 1)


def ssim_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel, per-channel SSIM dissimilarity clamp((1 - SSIM) / 2, 0, 1): float32 [B,C,H,W].

    x, y: float32 [B,C,H,W] in [0,1]. 3x3 box window on reflection-padded images.
    """
    x = F.pad(x, (1, 1, 1, 1), mode='reflect')
    y = F.pad(y, (1, 1, 1, 1), mode='reflect')
    mu_x = F.avg_pool2d(x, 3, 1)
    mu_y = F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x ** 2
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y ** 2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    den = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return torch.clamp((1 - num / den) / 2, 0, 1)


def photometric_error(pred: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.85) -> torch.Tensor:
    """ssim_weight·SSIM error + (1 - ssim_weight)·L1, averaged over channels: float32 [B,1,H,W] in [0,1]."""
    l1 = (pred - target).abs().mean(1, keepdim=True)
    if ssim_weight == 0:
        return l1
    return ssim_weight * ssim_error(pred, target).mean(1, keepdim=True) + (1 - ssim_weight) * l1


def min_reprojection_loss(target: torch.Tensor, warped: list[torch.Tensor], sources: list[torch.Tensor],
                          valid: list[torch.Tensor], ssim_weight: float = 0.85,
                          identity_noise: float = 1e-5, keep: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel minimum photometric error over the sources, with monodepth2 auto-masking.

    target: float32 [B,3,H,W] the reference frame; warped: per source, the source warped into the
    reference view [B,3,H,W]; sources: the unwarped source frames [B,3,H,W]; valid: per source,
    [B,1,H,W] 1 where the warped sample is inside the source image. keep: optional [B,1,H,W], 0 where a
    pixel must not count whatever its error (stage 4 leaves labelled dynamic objects to their labels).
    A pixel counts (automask = 1) when the best warped error beats the best *unwarped* error
    (identity error + tiny noise to break ties): pixels that move with the camera, and pixels whose
    warps all fall out of view, are excluded.
    Returns (loss scalar = mean of the min error over counted pixels, automask float32 [B,1,H,W],
    min_error float32 [B,1,H,W] (INVALID_ERROR where no source is in view)).
    """
    if not (len(warped) == len(sources) == len(valid)) or not warped:
        raise ValueError('warped, sources and valid must be non-empty lists of equal length')
    reproj = []
    for pred, ok in zip(warped, valid):
        err = photometric_error(pred, target, ssim_weight)
        reproj.append(torch.where(ok > 0.5, err, torch.full_like(err, INVALID_ERROR)))
    min_error = torch.cat(reproj, 1).min(1, keepdim=True).values
    with torch.no_grad():
        identity = torch.cat([photometric_error(src, target, ssim_weight) for src in sources], 1)
        if identity_noise > 0:
            identity = identity + identity_noise * torch.randn_like(identity)
        automask = (min_error.detach() < identity.min(1, keepdim=True).values).to(target.dtype)
        if keep is not None:
            automask = automask * (keep > 0.5).to(target.dtype)
    counted = automask.sum()
    loss = torch.where(automask > 0, min_error, torch.zeros_like(min_error)).sum() / counted.clamp(min=1.0)
    return loss, automask, min_error


def edge_aware_smoothness(disp: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """First-order edge-aware smoothness of mean-normalised disparity: scalar.

    disp: float32 [B,1,H,W]; image: float32 [B,3,H,W] at the same resolution. Gradients of
    d / mean(d) are weighted by exp(-mean_c |∂I|), so depth may jump where the image has edges.
    """
    if disp.shape[-2:] != image.shape[-2:]:
        raise ValueError(f'disparity {tuple(disp.shape[-2:])} and image {tuple(image.shape[-2:])} sizes differ')
    d = disp / (disp.mean(dim=(2, 3), keepdim=True) + 1e-7)
    grad_dx = (d[..., :, :-1] - d[..., :, 1:]).abs()
    grad_dy = (d[..., :-1, :] - d[..., 1:, :]).abs()
    grad_ix = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    grad_iy = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (grad_dx * torch.exp(-grad_ix)).mean() + (grad_dy * torch.exp(-grad_iy)).mean()


def motion_sparsity(flow: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L½-like sparsity of a motion field (Li et al., CoRL 2020): scalar.

    flow: float32 [B,C,H,W] (pixels). With m̄ = per-image, per-channel mean |m| (no gradient), the
    penalty is mean(2 m̄ sqrt(|m| / m̄ + 1)): roughly L1 for small motion and sqrt-like for large, so
    it prefers few moving pixels with large motion over many with small motion. 0 for a zero field.
    """
    mean_abs = flow.abs().mean(dim=(2, 3), keepdim=True).detach()
    return (2 * mean_abs * torch.sqrt(flow.abs() / (mean_abs + eps) + 1)).mean()


def translation_magnitude_loss(translation: torch.Tensor, odom_distance: torch.Tensor,
                               valid: torch.Tensor | None = None) -> torch.Tensor:
    """|‖t‖ - d| averaged over samples with a known distance: scalar (metres).

    translation: float32 [B,3] predicted camera translation between two frames; odom_distance:
    float32 [B] metres travelled between them (odometry); valid: bool [B] (default: finite
    distances). Pulls the pose, and through the photometric loss the depth, to metric scale.
    Returns 0 (still attached to the graph) when no sample has a distance.
    """
    if valid is None:
        valid = torch.isfinite(odom_distance)
    valid = valid & torch.isfinite(odom_distance)
    norm = torch.sqrt((translation * translation).sum(dim=1) + 1e-12)
    dist = torch.where(valid, odom_distance, torch.zeros_like(odom_distance))
    err = torch.where(valid, (norm - dist).abs(), torch.zeros_like(norm))
    return err.sum() / valid.sum().clamp(min=1).to(err.dtype)



def relative_pose_loss(T: torch.Tensor, odom_T: torch.Tensor, rotation_weight: float = 10.0) -> torch.Tensor:
    """Σ_xyz |t - t_odom| + w_rot · ‖R - R_odom‖_F/√2, averaged over samples with odometry: scalar.

    T: float32 [B,4,4] predicted T_ref→src; odom_T: float32 [B,4,4] the same from odometry poses, NaN
    when unknown. ‖R - R_odom‖_F/√2 ≈ the rotation error in radians; rotation_weight (metres per radian,
    default 10) makes a 1° error cost what a 17 cm translation error costs, about the same pixel
    shift for a point 10 m away. Supervising direction and rotation, not only the length, keeps a
    from-scratch pose network out of the basins a length-only term allows (sideways motion, a
    rotation error of ~1° that makes infinite depth the photometric optimum), and gives metric scale.
    Returns 0 (attached) when no sample has odometry.
    """
    valid = torch.isfinite(odom_T.flatten(1)).all(dim=1)
    target = torch.where(valid[:, None, None], odom_T, torch.eye(4, dtype=T.dtype, device=T.device).expand_as(T))
    t_err = (T[:, :3, 3] - target[:, :3, 3]).abs().sum(dim=1)
    r_err = torch.sqrt(((T[:, :3, :3] - target[:, :3, :3]) ** 2).sum(dim=(1, 2)) / 2 + 1e-12)
    err = torch.where(valid, t_err + rotation_weight * r_err, torch.zeros_like(t_err))
    return err.sum() / valid.sum().clamp(min=1).to(err.dtype)
