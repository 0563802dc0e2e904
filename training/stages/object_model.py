"""Stage-2 model: object depth with one rigid SE(3) motion per object (reference §3.2).

One sample is one instance: its frames t-gap, t, t+gap, each multiplied by that frame's mask of
the instance (the object on black). A depth network (started from the stage-1 depth weights)
predicts the object's depth from the masked reference frame; the pose network (started from the
stage-1 pose weights) run on masked pairs gives one rigid transform per direction — camera motion
and object motion together. Losses: the photometric loss of stage 1 (min over the two sources,
auto-masking) counted inside the reference mask only, and a smoothness of the mean-normalised
disparity inside the mask (a gradient counts only where both pixels are inside; the mean is over
the mask, not the whole image — reference bug §6.7). No residual motion, no odometry term (the
object's motion is not the camera's). Object depth is defined up to its own scale; stage 3 aligns it.

Batch keys: frames / frames_raw [B,3,3,H,W], K / inv_K [B,3,3], object_masks uint8 [B,3,H,W].
"""
from __future__ import annotations

import torch
from torch import nn

from training.geometry import warp
from training.losses import min_reprojection_loss
from training.networks.depth import DepthNet, disp_to_depth
from training.networks.pose import PoseNet
from training.stages.scene_model import OFFSETS, SceneModelConfig


def masked_smoothness(disp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """First-order smoothness of disp / mean_in_mask(disp), counted where both neighbours are in the
    mask and normalised by the number of such pairs (x and y separately, then summed): scalar."""
    m = mask.to(disp.dtype)
    mean = (disp * m).sum(dim=(2, 3), keepdim=True) / m.sum(dim=(2, 3), keepdim=True).clamp(min=1)
    d = disp / (mean + 1e-7)
    mx = m[..., :, :-1] * m[..., :, 1:]
    my = m[..., :-1, :] * m[..., 1:, :]
    gx = ((d[..., :, :-1] - d[..., :, 1:]).abs() * mx).sum() / mx.sum().clamp(min=1)
    gy = ((d[..., :-1, :] - d[..., 1:, :]).abs() * my).sum() / my.sum().clamp(min=1)
    return gx + gy


class ObjectModel(nn.Module):
    """``depth`` (DepthNet) and ``pose`` (PoseNet) with the stage-2 loss; same architecture as stage 1."""

    def __init__(self, config: SceneModelConfig, smoothness_weight: float = 0.005):
        super().__init__()
        self.config = cfg = config
        self.smoothness_weight = float(smoothness_weight)
        self.depth = DepthNet(cfg.encoder_depth, cfg.width_mult, cfg.min_depth, cfg.max_depth, (0,), cfg.init_depth)
        self.pose = PoseNet(cfg.pose_encoder_depth, cfg.pose_width_mult, cfg.rotation_scale, cfg.translation_scale)

    def load_scene_weights(self, scene_state: dict) -> None:
        """Start from the stage-1 depth and pose weights (the decoder heads of scales > 0 are not used)."""
        own = self.state_dict()
        take = {k: v for k, v in scene_state.items() if k in own and own[k].shape == v.shape
                and (k.startswith('depth.') or k.startswith('pose.'))}
        missing = sorted(set(own) - set(take))
        if missing:
            raise ValueError(f'stage-1 weights lack {missing[:5]}... for the object model; were they trained with '
                             f'another architecture?')
        self.load_state_dict(take)

    @staticmethod
    def trainable(phase: str) -> list[str]:
        return ['depth', 'pose']

    def forward(self, batch: dict, phase: str = 'object'):
        return self.loss(batch, phase)

    def object_depth(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Depth [B,1,H,W] of the masked image (0 outside the mask). image [B,3,H,W], mask [B,1,H,W]."""
        m = mask.to(image.dtype)
        disp = self.depth(image * m, scales=(0,))[0]
        return disp_to_depth(disp, self.config.min_depth, self.config.max_depth)[1] * m

    def loss(self, batch: dict, phase: str = 'object'):
        cfg = self.config
        frames, K, inv_K = batch['frames'], batch['K'], batch['inv_K']
        raw = batch.get('frames_raw', frames)
        masks = batch['object_masks'].to(frames.dtype)          # [B,3,H,W]
        inp = frames * masks[:, :, None]
        tgt = raw * masks[:, :, None]
        ref_mask = masks[:, 1:2]
        disp = self.depth(inp[:, 1], scales=(0,))[0]
        depth = disp_to_depth(disp, cfg.min_depth, cfg.max_depth)[1]
        warped, valid, sources = [], [], []
        poses = {}
        for off in OFFSETS:
            T, _, translation = self.pose.reference_to_source(inp[:, 1], inp[:, off + 1], off)
            poses[off] = translation
            img, ok = warp(tgt[:, off + 1], depth, K, inv_K, T)
            warped.append(img)
            valid.append(ok * ref_mask)
            sources.append(tgt[:, off + 1])
        photometric, automask, _ = min_reprojection_loss(tgt[:, 1], warped, sources, valid, cfg.ssim_weight)
        smooth = masked_smoothness(disp, ref_mask)
        total = photometric + self.smoothness_weight * smooth
        with torch.no_grad():
            inside = ref_mask.sum().clamp(min=1)
            logs = {'photometric': photometric.item(), 'smoothness': smooth.item(),
                    'automask_in_mask': ((automask * ref_mask).sum() / inside).item(),
                    'translation_norm': torch.stack([t.norm(dim=1) for t in poses.values()]).mean().item(),
                    'mask_fraction': ref_mask.mean().item()}
        previews = {'masked_ref': tgt[0, 1].detach().cpu(), 'object_depth': (depth * ref_mask)[0].detach().cpu(),
                    'warped_prev': warped[0][0].detach().cpu(), 'warped_next': warped[1][0].detach().cpu(),
                    'mask_prev': masks[0, 0:1].detach().cpu(), 'mask_next': masks[0, 2:3].detach().cpu()}
        return total, logs, previews
