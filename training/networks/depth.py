"""Monocular depth network: ResNet encoder + monodepth2-style decoder with sigmoid disparity heads.

Decoder (Godard et al. 2019): from the coarsest feature, for each level i = 4..0 a ConvBlock
(reflection-padded 3x3 conv + ELU), nearest x2 upsampling, concatenation with the encoder skip at
that resolution, a second ConvBlock; disparity heads (reflection-padded 3x3 conv + sigmoid) at the
requested scales. Scale s has resolution H/2^s x W/2^s. Input H and W must be multiples of 32.

Decoder styles (`decoder`): 'elu_reflect' is monodepth2's (above); 'relu_zero' uses zero padding and ReLU,
which inference runtimes fuse into the convolution (ONNX Runtime: Conv+ReLU, and in INT8 QLinearConv with no
float operator between the convolutions), with the same parameters (state dicts load across the styles).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.networks.resnet import ResNetEncoder

DECODER_CHANNELS = (16, 32, 64, 128, 256)
DECODER_STYLES = ('elu_reflect', 'relu_zero')


def disp_to_depth(disp: torch.Tensor, min_depth: float, max_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid output → (scaled disparity, depth).

    disp: float32 [...] in [0,1]. Returns scaled_disp in [1/max_depth, 1/min_depth] and
    depth = 1/scaled_disp in [min_depth, max_depth] (metres when the model is metric), same shape.
    """
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    scaled = min_disp + (max_disp - min_disp) * disp
    return scaled, 1.0 / scaled


def _check_style(style: str) -> str:
    if style not in DECODER_STYLES:
        raise ValueError(f'decoder style must be one of {DECODER_STYLES}, got {style!r}')
    return style


class ConvBlock(nn.Module):
    """Reflection-padded 3x3 conv followed by ELU (style relu_zero: zero-padded, ReLU); keeps H, W."""

    def __init__(self, in_channels: int, out_channels: int, style: str = 'elu_reflect'):
        super().__init__()
        zero = _check_style(style) == 'relu_zero'
        self.pad = nn.Identity() if zero else nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1 if zero else 0)
        self.act = nn.ReLU(inplace=True) if zero else nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.pad(x)))


class DispHead(nn.Module):
    """Reflection-padded (style relu_zero: zero-padded) 3x3 conv to one channel + sigmoid: disparity in [0,1]."""

    def __init__(self, in_channels: int, style: str = 'elu_reflect'):
        super().__init__()
        zero = _check_style(style) == 'relu_zero'
        self.pad = nn.Identity() if zero else nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, 1, 3, padding=1 if zero else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(self.pad(x)))


class DepthDecoder(nn.Module):
    """Monodepth2 decoder.

    Args:
        num_ch_enc: channel counts of the 5 encoder features (1/2 … 1/32).
        scales: output scales (0 = full input resolution … 3 = 1/8).
        num_ch_dec: decoder channels at levels 0..4 (full … 1/16 resolution).
        style: 'elu_reflect' (monodepth2) or 'relu_zero' (module docstring).

    ``forward(features, scales=None)``: features as returned by ``ResNetEncoder`` → dict
    {s: disparity float32 [B,1,H/2^s,W/2^s] in [0,1]} for ``scales`` (default: all built heads).
    """

    def __init__(self, num_ch_enc: list[int] | tuple[int, ...], scales: tuple[int, ...] = (0, 1, 2, 3),
                 num_ch_dec: tuple[int, ...] = DECODER_CHANNELS, style: str = 'elu_reflect'):
        super().__init__()
        self.style = _check_style(style)
        if len(num_ch_enc) != 5 or len(num_ch_dec) != 5:
            raise ValueError('DepthDecoder needs 5 encoder and 5 decoder channel counts')
        if not scales or any(s not in (0, 1, 2, 3) for s in scales):
            raise ValueError(f'scales must be a non-empty subset of (0, 1, 2, 3), got {scales}')
        self.scales = tuple(sorted(set(scales)))
        self.num_ch_enc = list(num_ch_enc)
        self.num_ch_dec = list(num_ch_dec)
        self.upconv0 = nn.ModuleList()
        self.upconv1 = nn.ModuleList()
        for i in range(5):  # index i = decoder level i (resolution 1/2^i after upsampling)
            cin = self.num_ch_enc[-1] if i == 4 else self.num_ch_dec[i + 1]
            self.upconv0.append(ConvBlock(cin, self.num_ch_dec[i], style))
            skip = self.num_ch_enc[i - 1] if i > 0 else 0
            self.upconv1.append(ConvBlock(self.num_ch_dec[i] + skip, self.num_ch_dec[i], style))
        self.heads = nn.ModuleDict({str(s): DispHead(self.num_ch_dec[s], style) for s in self.scales})

    def forward(self, features: list[torch.Tensor], scales: tuple[int, ...] | None = None) -> dict[int, torch.Tensor]:
        wanted = self.scales if scales is None else tuple(scales)
        unknown = [s for s in wanted if s not in self.scales]
        if unknown:
            raise ValueError(f'scales {unknown} have no disparity head (built for {self.scales})')
        out = {}
        x = features[-1]
        for i in range(4, -1, -1):
            x = self.upconv0[i](x)
            x = F.interpolate(x, scale_factor=2.0, mode='nearest')
            if i > 0:
                x = torch.cat([x, features[i - 1]], dim=1)
            x = self.upconv1[i](x)
            if i in wanted:
                out[i] = self.heads[str(i)](x)
                if i == min(wanted):
                    break
        return out


class DepthNet(nn.Module):
    """Image → multi-scale disparity.

    Args:
        depth, width_mult: ResNet encoder size (width_mult also scales the decoder channels).
        min_depth, max_depth: depth range in metres that disparity 1 and 0 map to.
        scales: decoder output scales.
        init_depth: depth (metres) the untrained network predicts on average, set through the
            disparity heads' bias; None keeps the zero bias (sigmoid 0.5, about 2·min_depth).
            Metric training starts best near the scene's typical depth (see SceneModelConfig).
        decoder: decoder style, 'elu_reflect' or 'relu_zero' (module docstring).

    ``forward(image)``: image float32 [B,3,H,W], RGB in [0,1], H and W multiples of 32 →
    dict {s: disp float32 [B,1,H/2^s,W/2^s] in [0,1]}; depth via ``disp_to_depth``.
    """

    def __init__(self, depth: int = 18, width_mult: float = 1.0, min_depth: float = 0.1, max_depth: float = 100.0,
                 scales: tuple[int, ...] = (0, 1, 2, 3), init_depth: float | None = None,
                 decoder: str = 'elu_reflect'):
        super().__init__()
        if not 0 < min_depth < max_depth:
            raise ValueError(f'need 0 < min_depth < max_depth, got {min_depth}, {max_depth}')
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.encoder = ResNetEncoder(depth, width_mult, in_channels=3)
        dec = tuple(max(4, int(round(c * width_mult))) for c in DECODER_CHANNELS)
        self.decoder = DepthDecoder(self.encoder.num_ch_enc, scales, dec, decoder)
        if init_depth is not None:
            if not min_depth < init_depth < max_depth:
                raise ValueError(f'init_depth {init_depth} must lie inside ({min_depth}, {max_depth})')
            sigma = (1.0 / init_depth - 1.0 / max_depth) / (1.0 / min_depth - 1.0 / max_depth)
            with torch.no_grad():
                for head in self.decoder.heads.values():
                    head.conv.bias.fill_(math.log(sigma / (1.0 - sigma)))

    @property
    def scales(self) -> tuple[int, ...]:
        return self.decoder.scales

    def forward(self, image: torch.Tensor, scales: tuple[int, ...] | None = None) -> dict[int, torch.Tensor]:
        _check_image(image)
        return self.decoder(self.encoder(image), scales)

    def depth(self, image: torch.Tensor) -> torch.Tensor:
        """Full-resolution depth float32 [B,1,H,W] in [min_depth, max_depth] (metres if metric)."""
        return disp_to_depth(self(image, scales=(0,))[0], self.min_depth, self.max_depth)[1]


class DepthExportModule(nn.Module):
    """The exported graph: image float32 [N,3,H,W] RGB in [0,1] → depth float32 [N,1,H,W].

    Scale 0 only; normalisation and the disparity → depth conversion are inside the graph, as the
    model contract (design §3) requires.
    """

    def __init__(self, depth_net: DepthNet):
        super().__init__()
        if 0 not in depth_net.scales:
            raise ValueError('the depth network has no scale-0 head to export')
        self.net = depth_net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        disp = self.net.decoder(self.net.encoder(image), (0,))[0]
        return disp_to_depth(disp, self.net.min_depth, self.net.max_depth)[1]


def _check_image(image: torch.Tensor) -> None:
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f'expected an image batch [B,3,H,W], got shape {tuple(image.shape)}')
    h, w = image.shape[-2:]
    if h % 32 or w % 32:
        raise ValueError(f'image size {h}x{w} is not a multiple of 32; resize or crop the input to e.g. '
                         f'{max(32, h // 32 * 32)}x{max(32, w // 32 * 32)}')
