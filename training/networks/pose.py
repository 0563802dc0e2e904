"""Relative camera pose network and the axis-angle → SE(3) conversion.

Convention (used by the whole stage-1 model): the reference frame is I_0, sources are I_-1 and I_+1.
For the source s = +1 the network sees [I_0, I_+1] and its transform is used as is; for s = -1 it
sees [I_-1, I_0] (always "earlier, later") and the transform is inverted. Either way the result
``T`` maps points in the reference camera frame into the source camera frame s:
``X_s = R X_0 + t`` (REP 103 optical axes, metres when trained with odometry).
"""
from __future__ import annotations

import torch
from torch import nn

from training.networks.resnet import ResNetEncoder


def rotation_from_axisangle(axisangle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle float32 [B,3] (direction = axis, norm = angle in rad) → rotation [B,3,3].

    Numerically safe at zero angle (Taylor expansion of sin(θ)/θ and (1-cos θ)/θ²).
    """
    theta2 = (axisangle * axisangle).sum(dim=1, keepdim=True)  # [B,1]
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2_safe)
    x, y, z = axisangle[:, 0], axisangle[:, 1], axisangle[:, 2]
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=axisangle.dtype, device=axisangle.device).expand_as(skew)
    return eye + a.view(-1, 1, 1) * skew + b.view(-1, 1, 1) * (skew @ skew)


def transformation_from_parameters(axisangle: torch.Tensor, translation: torch.Tensor,
                                   invert: bool = False) -> torch.Tensor:
    """4x4 transform float32 [B,4,4] from axisangle [B,3] (rad) and translation [B,3].

    ``invert=False``: X' = R X + t. ``invert=True``: the inverse, X' = Rᵀ (X - t).
    """
    if axisangle.shape != translation.shape or axisangle.dim() != 2 or axisangle.shape[1] != 3:
        raise ValueError(f'axisangle and translation must both be [B,3], got {tuple(axisangle.shape)} '
                         f'and {tuple(translation.shape)}')
    R = rotation_from_axisangle(axisangle)
    t = translation.unsqueeze(-1)
    if invert:
        R = R.transpose(1, 2)
        t = -R @ t
    bottom = torch.zeros_like(R[:, :1, :])
    bottom = torch.cat([bottom, torch.ones_like(bottom[:, :, :1])], dim=2)  # [B,1,4]
    return torch.cat([torch.cat([R, t], dim=2), bottom], dim=1)


class PoseDecoder(nn.Module):
    """1x1 squeeze, two 3x3 convs, 1x1 to 6 numbers, spatial mean, small output scale (monodepth2)."""

    def __init__(self, in_channels: int, width: int = 256, rotation_scale: float = 0.01,
                 translation_scale: float = 0.01):
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, width, 1)
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1)
        self.out = nn.Conv2d(width, 6, 1)
        self.relu = nn.ReLU(inplace=True)
        self.rotation_scale = float(rotation_scale)
        self.translation_scale = float(translation_scale)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.relu(self.squeeze(feature))
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.out(x).mean(dim=(2, 3))  # [B,6]
        return self.rotation_scale * x[:, :3], self.translation_scale * x[:, 3:]


class PoseNet(nn.Module):
    """Two frames → relative pose.

    Args:
        depth, width_mult: size of the 6-channel ResNet encoder (the decoder width scales too).
        rotation_scale, translation_scale: output multipliers (0.01 as monodepth2: small initial motion).

    ``forward(earlier, later)``: two images float32 [B,3,H,W] in [0,1] → (axisangle [B,3] rad,
    translation [B,3]) of the transform that maps points in ``earlier``'s camera into ``later``'s.
    ``reference_to_source(reference, source, offset)`` applies the sign convention above.
    """

    def __init__(self, depth: int = 18, width_mult: float = 1.0, rotation_scale: float = 0.01,
                 translation_scale: float = 0.01):
        super().__init__()
        self.encoder = ResNetEncoder(depth, width_mult, in_channels=6)
        self.decoder = PoseDecoder(self.encoder.num_ch_enc[-1], max(8, int(round(256 * width_mult))),
                                   rotation_scale, translation_scale)

    def forward(self, earlier: torch.Tensor, later: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if earlier.shape != later.shape:
            raise ValueError(f'frame shapes differ: {tuple(earlier.shape)} vs {tuple(later.shape)}')
        return self.decoder(self.encoder(torch.cat([earlier, later], dim=1))[-1])

    def reference_to_source(self, reference: torch.Tensor, source: torch.Tensor,
                            offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T [B,4,4] reference camera → source camera, axisangle [B,3], translation [B,3]).

        offset: -1 when ``source`` precedes the reference in time, +1 when it follows.
        """
        if offset not in (-1, 1):
            raise ValueError(f'offset must be -1 or +1, got {offset}')
        if offset < 0:
            axisangle, translation = self(source, reference)
            return transformation_from_parameters(axisangle, translation, invert=True), axisangle, translation
        axisangle, translation = self(reference, source)
        return transformation_from_parameters(axisangle, translation), axisangle, translation
