"""Residual (independent-object) motion network: a small correlation U-Net flow estimator.

The reference trains a full RAFT from random initialisation and runs a single update iteration,
so RAFT's recurrent refinement and convex upsampling do little there: what remains is one
correlation lookup around zero flow followed by a convolutional decoder, at about 5 M parameters
and the largest share of a stage-1 step. This network keeps exactly those ingredients (shared
features of the rigid rendering and the source, local cost volumes at 1/8 and 1/16 that reach
±32 and ±64 pixels, and a skip-connected decoder down to 1/2 resolution that keeps flow edges on
object boundaries) with 0.7 M parameters and a fraction of the compute, which matters for training
on a CPU or a small GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.networks.resnet import IMAGE_MEAN, IMAGE_STD


def local_correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
    """Cost volume float32 [B,(2r+1)²,H,W]: channel-mean of f1(p)·f2(p + d) for |dx|,|dy| <= radius.

    f1, f2: float32 [B,C,H,W]. Displacements outside f2 see zeros. Channel k = (dy + r)(2r+1) + (dx + r).
    """
    b, c, h, w = f1.shape
    f2p = F.pad(f2, (radius, radius, radius, radius))
    n = 2 * radius + 1
    return torch.cat([(f1 * f2p[:, :, dy:dy + h, dx:dx + w]).mean(1, keepdim=True)
                      for dy in range(n) for dx in range(n)], dim=1)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.1, inplace=True))


class FeaturePyramid(nn.Module):
    """Four-level conv encoder: image [B,3,H,W] in [0,1] → features at 1/2, 1/4, 1/8, 1/16."""

    def __init__(self, channels: tuple[int, int, int, int]):
        super().__init__()
        cin = 3
        self.levels = nn.ModuleList()
        for c in channels:
            self.levels.append(nn.Sequential(_conv(cin, c, 2), _conv(c, c)))
            cin = c

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = (image - IMAGE_MEAN) / IMAGE_STD
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


class ResidualMotionNet(nn.Module):
    """Flow from the rigidly rendered reference to the real source frame, in source pixels.

    Args:
        channels: base width (features use channels/2, channels, 2·channels, 3·channels at 1/2..1/16).
        radius: correlation radius (in feature pixels) at 1/8 and 1/16.

    ``forward(rigid_rendered, source, valid)``: rigid_rendered float32 [B,3,H,W] the reference image
    rendered into view s under a static-scene assumption (0 where empty), source [B,3,H,W] frame s,
    valid [B,1,H,W] 1 where the rendering has content → flow float32 [B,2,H,W], pixels of view s,
    (du, dv) from where the rendered content sits to where it is in the source. H, W multiples of 16.
    The output is not masked; the caller applies ``valid`` and its own motion masks.
    """

    def __init__(self, channels: int = 32, radius: int = 4):
        super().__init__()
        if channels < 4 or radius < 1:
            raise ValueError(f'need channels >= 4 and radius >= 1, got {channels}, {radius}')
        c = (max(channels // 2, 4), channels, 2 * channels, 3 * channels)
        self.radius = radius
        self.features = FeaturePyramid(c)
        ncorr = (2 * radius + 1) ** 2
        self.dec16 = nn.Sequential(_conv(ncorr + c[3] + 1, c[3]), _conv(c[3], c[3]))
        self.dec8 = nn.Sequential(_conv(c[3] + ncorr + c[2] + 1, c[2]), _conv(c[2], c[2]))
        self.coarse_head = nn.Conv2d(c[2], 2, 3, 1, 1)  # flow at 1/8 in units of 8 px
        self.dec4 = _conv(c[2] + 2 * c[1] + 2, c[1])
        self.dec2 = nn.Sequential(_conv(c[1] + 2 * c[0] + 1, c[0]), _conv(c[0], c[0]))
        self.fine_head = nn.Conv2d(c[0], 2, 3, 1, 1)  # residual at 1/2 resolution, full-resolution pixels
        for head in (self.coarse_head, self.fine_head):
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)

    def forward(self, rigid_rendered: torch.Tensor, source: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if rigid_rendered.shape != source.shape or rigid_rendered.dim() != 4 or rigid_rendered.shape[1] != 3:
            raise ValueError(f'need two [B,3,H,W] images of one shape, got {tuple(rigid_rendered.shape)} and '
                             f'{tuple(source.shape)}')
        h, w = source.shape[-2:]
        if h % 16 or w % 16:
            raise ValueError(f'image size {h}x{w} is not a multiple of 16')
        fr = self.features(rigid_rendered)
        fs = self.features(source)
        v8 = F.avg_pool2d(valid, 8)
        v16 = F.avg_pool2d(valid, 16)
        x = self.dec16(torch.cat([local_correlation(fr[3], fs[3], self.radius), fr[3], v16], 1))
        x = F.interpolate(x, scale_factor=2.0, mode='bilinear', align_corners=False)
        x = self.dec8(torch.cat([x, local_correlation(fr[2], fs[2], self.radius), fr[2], v8], 1))
        coarse = 8.0 * self.coarse_head(x)
        x = F.interpolate(x, scale_factor=2.0, mode='bilinear', align_corners=False)
        coarse4 = F.interpolate(coarse, scale_factor=2.0, mode='bilinear', align_corners=False)
        x = self.dec4(torch.cat([x, fr[1], fs[1], coarse4 / 4.0], 1))
        x = F.interpolate(x, scale_factor=2.0, mode='bilinear', align_corners=False)
        x = self.dec2(torch.cat([x, fr[0], fs[0], F.avg_pool2d(valid, 2)], 1))
        flow_half = F.interpolate(coarse, scale_factor=4.0, mode='bilinear', align_corners=False) + self.fine_head(x)
        return F.interpolate(flow_half, size=(h, w), mode='bilinear', align_corners=False)
