"""Baseline networks trained and scored like FusionLungNet (issue 13): U-Net and ResUNet-18.

Both take (N, 1, H, W) normalised CT (H, W multiples of 32) and return a one-element tuple of
(N, 1, H, W) logits, the shape of FusionLungNet's first output, so training, inference and
export treat every architecture alike.

The ResNet-18 encoder is torchvision's ``resnet18(weights=None)`` where torchvision is installed, else a
built-in copy with torchvision's names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``, blocks with
``conv1``/``bn1``/``conv2``/``bn2``/``downsample``; see :mod:`encoders`), so a weights file loads either
way and a locally stored torchvision state dict loads with :func:`model.load_encoder_weights`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import conv_bn_relu, projection_shortcut
from .encoders import ResNetTrunk

__all__ = ["UNet", "ResNet18Encoder", "ResUNet18"]


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    # Flat (conv, bn, relu) x 2, so the state-dict keys are those of one Sequential of six layers.
    return nn.Sequential(*conv_bn_relu(cin, cout), *conv_bn_relu(cout, cout))


class UNet(nn.Module):
    """The classic 4-level U-Net (Ronneberger et al. 2015) with batch norm and same-size padding.

    ``base`` 64 gives widths 64-128-256-512-1024 and 31.0 M parameters.
    """

    def __init__(self, in_channels: int = 1, base: int = 64):
        super().__init__()
        widths = [base * 2**i for i in range(5)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])])
        self.down.extend(_double_conv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths[:-1], widths[1:]))
        self.merge = nn.ModuleList(_double_conv(2 * a, a) for a in widths[:-1])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge)):
            x = merge(torch.cat((skips.pop(), up(x)), dim=1))
        return (self.head(x),)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions), torchvision's attribute names."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection_shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Encoder(ResNetTrunk):
    """ResNet-18 trunk for single-channel input (torchvision's, or the built-in copy: :mod:`encoders`):
    feature maps of 64 ch at 1/2 and 1/4, 128 at 1/8, 256 at 1/16 and 512 at 1/32 of the input size."""

    depth = 18
    channels = (64, 64, 128, 256, 512)

    def builtin_stages(self) -> list[nn.Module]:
        cin, layers = 64, []
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        return layers


class ResUNet18(nn.Module):
    """U-Net decoder on a ResNet-18 encoder: four up-steps with skips (1/16 ... 1/2), then a last
    up-step to full size; 14.4 M parameters."""

    def __init__(self, in_channels: int = 1, decoder: tuple[int, ...] = (256, 128, 64, 64, 32)):
        super().__init__()
        self.encoder = ResNet18Encoder(in_channels)
        skips = self.encoder.channels[:-1][::-1]  # 256, 128, 64, 64
        cin = self.encoder.channels[-1]
        blocks = []
        for skip, cout in zip((*skips, 0), decoder):
            blocks.append(_double_conv(cin + skip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        feats = self.encoder(x)
        y = feats[-1]
        for block, skip in zip(self.decoder, (*feats[-2::-1], None)):
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
            y = block(y if skip is None else torch.cat((y, skip), dim=1))
        return (self.head(y),)
