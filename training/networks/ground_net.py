"""Ground segmentation network and its loss (reference §3U 1.2), trained from the stage-1 normals.

GroundNet: RGB + normalised disparity (4 channels) → ground logit [B,1,H,W] (SegmentationNet). The
reference's network is three full-resolution convolutions; a small U-Net sees more context for the same
cost at our resolutions.

ground_loss: BCE against the noisy target (training.ground.ground_mask of the stage-1 depth) plus an
edge-aware smoothness of the probability, plus, with weight `crop_weight` (0 = off), the reference's
self-supervision from crops: the bottom third of the input, enlarged to full size, is supervised by the
noisy target's bottom third; the enlarged middle and bottom thirds' predictions, detached, thresholded at
0.5 and stacked, supervise the full image's lower two thirds, which extends the ground into the distance
where the normals are too noisy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.networks.segmentation import SegmentationNet


class GroundNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.net = SegmentationNet(4, 1, width)

    def forward(self, rgb: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
        """rgb float32 [B,3,H,W] in [0,1], disparity [B,1,H,W] normalised (segmentation.normalised_disparity)
        → ground logits [B,1,H,W]."""
        return self.net(torch.cat([rgb, disparity], 1))


def edge_aware_smoothness(p: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Mean |∂p| weighted by exp(-|∂I|) (p [B,1,H,W], rgb [B,3,H,W])."""
    dpx = (p[..., :, 1:] - p[..., :, :-1]).abs()
    dpy = (p[..., 1:, :] - p[..., :-1, :]).abs()
    wx = torch.exp(-(rgb[..., :, 1:] - rgb[..., :, :-1]).abs().mean(1, keepdim=True))
    wy = torch.exp(-(rgb[..., 1:, :] - rgb[..., :-1, :]).abs().mean(1, keepdim=True))
    return (dpx * wx).mean() + (dpy * wy).mean()


def _crop_rows(x: torch.Tensor, top: int, bottom: int, size) -> torch.Tensor:
    return F.interpolate(x[..., top:bottom, :], size=size, mode='bilinear', align_corners=False)


def ground_loss(net: GroundNet, rgb: torch.Tensor, disparity: torch.Tensor, target: torch.Tensor,
                smoothness_weight: float, crop_weight: float) -> tuple[torch.Tensor, dict, dict]:
    """(loss, logs, previews) of one batch; target float32 [B,1,H,W] in {0,1} (the noisy ground)."""
    h, w = rgb.shape[-2:]
    logit = net(rgb, disparity)
    p = torch.sigmoid(logit)
    bce = F.binary_cross_entropy_with_logits(logit, target)
    smooth = edge_aware_smoothness(p, rgb)
    loss = bce + smoothness_weight * smooth
    logs = {'bce': float(bce.detach()), 'smooth': float(smooth.detach())}
    if crop_weight > 0:
        third = h // 3
        x = torch.cat([rgb, disparity], 1)
        bottom = _crop_rows(x, h - third, h, (h, w))
        middle = _crop_rows(x, third, 2 * third, (h, w))
        lb = net(bottom[:, :3], bottom[:, 3:])
        tb = F.interpolate(target[..., h - third:, :], size=(h, w), mode='nearest')
        crop_bce = F.binary_cross_entropy_with_logits(lb, tb) + smoothness_weight * edge_aware_smoothness(
            torch.sigmoid(lb), bottom[:, :3])
        with torch.no_grad():
            lm = net(middle[:, :3], middle[:, 3:])
            stacked = torch.cat([torch.sigmoid(lm), torch.sigmoid(lb)], 2)           # [B,1,2H,W]
            pseudo = (F.interpolate(stacked, size=(2 * third, w), mode='bilinear', align_corners=False) >= 0.5).float()
        extend = F.binary_cross_entropy_with_logits(logit[..., h - 2 * third:, :], pseudo)
        loss = loss + crop_weight * (crop_bce + extend)
        logs.update(crop_bce=float(crop_bce.detach()), extend_bce=float(extend.detach()))
    with torch.no_grad():
        logs['target_ground'] = float(target.mean())
        logs['predicted_ground'] = float((p >= 0.5).float().mean())
    return loss, logs, {'rgb': rgb[:1], 'disp': disparity[:1], 'ground target mask': target[:1],
                        'ground prediction mask': p[:1].detach()}
