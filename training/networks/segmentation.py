"""A small U-Net for dense per-pixel outputs (the ground and instance networks of the learned masks), and
the normalised disparity both take as input.

SegmentationNet(in_channels, out_channels, width): a stride-2 stem, then three 2x downsamplings (input H and
W divisible by 16), two 3x3 conv + BatchNorm + ReLU blocks per level with width, 2, 4, 8 x width channels,
bilinear upsampling with skip concatenation back to 1/2 resolution, a 1x1 conv to out_channels raw outputs
(logits) upsampled bilinearly to the input size (the stem keeps the cost at a quarter of a full-resolution
U-Net: 96x320 trains at ~1 s per batch of 8 on 2 busy CPU cores). RGB channels are normalised inside with
the ResNet encoder's mean/std; the extra channels are used as they come (reference: mean 0, std 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.networks.resnet import IMAGE_MEAN, IMAGE_STD


def normalised_disparity(depth: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """depth float32 [B,1,H,W] (metres or relative, > 0) → 1/depth divided by its per-image maximum, in
    (0, 1] (reference: disparity normalised by its maximum; independent of the depth's scale)."""
    disp = 1.0 / depth.clamp(min=eps)
    return disp / disp.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegmentationNet(nn.Module):
    """x float32 [B,in_channels,H,W] (channels 0-2 RGB in [0,1]) → float32 [B,out_channels,H,W] logits."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 16):
        super().__init__()
        c = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True))
        self.down = nn.ModuleList([_block(c[0], c[0]), _block(c[0], c[1]), _block(c[1], c[2]), _block(c[2], c[3])])
        self.up = nn.ModuleList([_block(c[3] + c[2], c[2]), _block(c[2] + c[1], c[1]), _block(c[1] + c[0], c[0])])
        self.head = nn.Conv2d(c[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stem(torch.cat([(x[:, :3] - IMAGE_MEAN) / IMAGE_STD, x[:, 3:]], dim=1))
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode='bilinear', align_corners=False), skip], 1))
        return F.interpolate(self.head(x), size=size, mode='bilinear', align_corners=False)
