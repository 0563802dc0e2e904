"""Instance segmentation network of the learned masks, its targets and loss (reference §3U 1.3, our own form).

The reference self-trains a torchvision Mask R-CNN (ResNet-18 FPN) on RGB + disparity + road probability;
torchvision is not part of this project's stack. This is a bottom-up instance network in the manner of
Panoptic-DeepLab / CenterNet on a small U-Net (SegmentationNet), same 5 input channels:

    InstanceNet(rgb, disparity, ground) → foreground logit [B,1,H,W], centre logit [B,1,H,W],
                                          offset [B,2,H,W] (dx, dy) pixels to the object's centre

decoded by dynadepth_ros.instance_masks.decode_instances (the runtime decodes the exported model the same
way). Targets from an id map (instance_targets): foreground = any instance; centre heat = a Gaussian at
each instance's centroid (σ = 0.2 √area, within [1, 6] px), 1 at the centroid pixel; offsets from each
instance pixel to its centroid. Loss: BCE (foreground) + centre_weight x CenterNet's focal loss (α 2,
β 4; summed over the pixels and divided by the number of centres, it is ~10x the BCE, hence a small
centre_weight, masks.instances.centre_weight) + offset_weight x L1 of the offsets in units of offset_scale
pixels on instance pixels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.networks.segmentation import SegmentationNet


class InstanceNet(nn.Module):
    def __init__(self, width: int = 16, offset_scale: float = 8.0):
        super().__init__()
        self.net = SegmentationNet(5, 4, width)
        self.offset_scale = float(offset_scale)
        with torch.no_grad():           # start at a prior of 0.1 (CenterNet): at 0.5 the focal loss of the many
            self.net.head.bias[0:2].fill_(-2.19)   # background pixels swamps the centres for hundreds of steps

    def forward(self, rgb: torch.Tensor, disparity: torch.Tensor, ground: torch.Tensor) -> dict[str, torch.Tensor]:
        """rgb [B,3,H,W] in [0,1], disparity [B,1,H,W] normalised, ground [B,1,H,W] probability."""
        out = self.net(torch.cat([rgb, disparity, ground], 1))
        return {'foreground': out[:, 0:1], 'centre': out[:, 1:2], 'offset': out[:, 2:4] * self.offset_scale}


def centre_sigma(area: int) -> float:
    return float(np.clip(0.2 * np.sqrt(area), 1.0, 6.0))


def instance_targets(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Targets of an id map (int [H,W], 0 = none): foreground float32 [1,H,W], centre float32 [1,H,W],
    offset float32 [2,H,W] (dx, dy) px (0 outside instances)."""
    h, w = ids.shape
    fg = (ids > 0).astype(np.float32)
    heat = np.zeros((h, w), np.float32)
    offset = np.zeros((2, h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in np.unique(ids[ids > 0]).tolist():
        m = ids == i
        ys, xs = np.nonzero(m)
        cy, cx = float(ys.mean()), float(xs.mean())
        px, py = int(round(cx)), int(round(cy))
        s = centre_sigma(len(ys))
        g = np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * s * s))
        heat = np.maximum(heat, g)
        offset[0][m] = cx - xs
        offset[1][m] = cy - ys
    return {'foreground': fg[None], 'centre': heat[None], 'offset': offset}


def centre_focal_loss(logit: torch.Tensor, heat: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed and divided by the number of centres (at least 1)."""
    p = torch.sigmoid(logit).clamp(1e-4, 1 - 1e-4)
    pos = heat >= 1.0 - 1e-4
    pos_loss = -((1 - p) ** alpha * torch.log(p))[pos].sum()
    neg_loss = -(((1 - heat) ** beta) * p ** alpha * torch.log(1 - p))[~pos].sum()
    return (pos_loss + neg_loss) / pos.sum().clamp(min=1)


def instance_loss(net: InstanceNet, batch: dict, centre_weight: float, offset_weight: float
                  ) -> tuple[torch.Tensor, dict, dict]:
    """(loss, logs, previews); batch: rgb, disparity, ground (inputs) and foreground, centre, offset (targets)."""
    out = net(batch['rgb'], batch['disparity'], batch['ground'])
    fg_t = batch['foreground']
    fg = F.binary_cross_entropy_with_logits(out['foreground'], fg_t)
    centre = centre_focal_loss(out['centre'], batch['centre'])
    diff = (out['offset'] - batch['offset']).abs().sum(1, keepdim=True) / net.offset_scale
    offset = (diff * fg_t).sum() / fg_t.sum().clamp(min=1)
    loss = fg + centre_weight * centre + offset_weight * offset
    logs = {'foreground_bce': float(fg.detach()), 'centre_focal': float(centre.detach()), 'offset_l1': float(offset.detach())}
    previews = {'rgb': batch['rgb'][:1], 'disp': batch['disparity'][:1],
                'target foreground mask': fg_t[:1], 'foreground mask': torch.sigmoid(out['foreground'][:1]).detach(),
                'target centre mask': batch['centre'][:1], 'centre mask': torch.sigmoid(out['centre'][:1]).detach()}
    return loss, logs, previews
