"""ResNet-18/34/50 feature encoder with torchvision's layer and parameter names.

The modules are named exactly as in torchvision's ``resnet18/34/50`` (``conv1, bn1, layer1..4``,
``downsample.0/1``, Bottleneck ``conv3/bn3``), so an ImageNet checkpoint saved by torchvision loads
with ``load_pretrained`` (without torchvision installed). ``width_mult`` scales every channel
count for small/fast models (then no ImageNet checkpoint fits). Normalisation
``(x - 0.45) / 0.225`` happens inside ``forward`` so an exported graph takes [0, 1] RGB.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IMAGE_MEAN = 0.45
IMAGE_STD = 0.225

_LAYERS = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)), 50: ('bottleneck', (3, 4, 6, 3))}


def _scaled(channels: int, width_mult: float) -> int:
    """Channel count ``channels * width_mult``, rounded, at least 4."""
    return max(4, int(round(channels * width_mult)))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projected) shortcut; torchvision names."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, torchvision "v1.5"), 1x1 expand x4; torchvision names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet feature pyramid.

    Args:
        depth: 18, 34 or 50.
        width_mult: multiplies every channel count (1.0 = torchvision sizes).
        in_channels: 3 for one RGB image, 6 for two stacked frames (pose network), any multiple of 3.

    ``forward(x)``: x float32 [B,in_channels,H,W], RGB in [0,1] (H, W multiples of 32) → list of 5
    feature maps at 1/2, 1/4, 1/8, 1/16, 1/32 of the input with ``num_ch_enc`` channels.
    """

    def __init__(self, depth: int = 18, width_mult: float = 1.0, in_channels: int = 3):
        super().__init__()
        if depth not in _LAYERS:
            raise ValueError(f'ResNet depth {depth} is not supported; choose one of {sorted(_LAYERS)}')
        if width_mult <= 0:
            raise ValueError(f'width_mult must be > 0, got {width_mult}')
        if in_channels < 1:
            raise ValueError(f'in_channels must be >= 1, got {in_channels}')
        kind, blocks = _LAYERS[depth]
        block = BasicBlock if kind == 'basic' else Bottleneck
        self.depth = depth
        self.width_mult = float(width_mult)
        self.in_channels = in_channels

        stem = _scaled(64, width_mult)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._inplanes = stem
        planes = [_scaled(c, width_mult) for c in (64, 128, 256, 512)]
        self.layer1 = self._make_layer(block, planes[0], blocks[0], 1)
        self.layer2 = self._make_layer(block, planes[1], blocks[1], 2)
        self.layer3 = self._make_layer(block, planes[2], blocks[2], 2)
        self.layer4 = self._make_layer(block, planes[3], blocks[3], 2)
        self.num_ch_enc = [stem] + [p * block.expansion for p in planes]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: float32 [B,in_channels,H,W] in [0,1] → 5 features [B,num_ch_enc[i],H/2^(i+1),W/2^(i+1)]."""
        x = (x - IMAGE_MEAN) / IMAGE_STD
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]

    def load_pretrained(self, path: str | Path) -> None:
        """Load a torchvision ImageNet checkpoint (``resnet18-*.pth`` etc.) from a local file.

        The classifier (``fc.*``) is dropped. For in_channels = 3k the RGB conv1 filters are repeated k
        times and divided by k (monodepth2's trick for the 6-channel pose encoder), so a stacked pair of
        identical frames gives the same first activations as one frame.
        """
        path = Path(path)
        if self.width_mult != 1.0:
            raise ValueError(f'ImageNet weights exist only for width_mult=1.0 (this encoder has width_mult='
                             f'{self.width_mult}); set width_mult to 1.0 or train without pretrained weights')
        if not path.is_file():
            raise FileNotFoundError(f'pretrained encoder weights {path} not found; download torchvision\'s '
                                    f'resnet{self.depth} ImageNet .pth there or drop the pretrained setting')
        state = torch.load(path, map_location='cpu', weights_only=True)
        if isinstance(state, dict) and 'state_dict' in state and isinstance(state['state_dict'], dict):
            state = state['state_dict']
        if not isinstance(state, dict):
            raise ValueError(f'{path} does not hold a state dict (got {type(state).__name__})')
        state = {k.removeprefix('module.'): v for k, v in state.items() if not k.startswith('fc.')}
        if 'conv1.weight' not in state:
            raise ValueError(f'{path} has no conv1.weight: not a torchvision ResNet checkpoint')
        conv1 = state['conv1.weight']
        if conv1.shape[1] != self.in_channels:
            if conv1.shape[1] != 3 or self.in_channels % 3:
                raise ValueError(f'{path}: conv1 takes {conv1.shape[1]} channels, this encoder {self.in_channels}; '
                                 'only 3 → 3k channel expansion is supported')
            k = self.in_channels // 3
            state['conv1.weight'] = conv1.repeat(1, k, 1, 1) / k
        own = self.state_dict()
        # Older torchvision checkpoints carry no BatchNorm num_batches_tracked; BatchNorm fills those in.
        missing = sorted(k for k in set(own) - set(state) if not k.endswith('num_batches_tracked'))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(f'{path} does not match resnet{self.depth}: missing {missing[:5]}, '
                             f'unexpected {unexpected[:5]}, wrong shapes {wrong[:5]} '
                             f'(is it a resnet{self.depth} checkpoint?)')
        self.load_state_dict(state)
