"""FusionLungNet (Rezvani et al., arXiv 2410.15812) for 2D lung segmentation.

Input: (N, 1, H, W) float tensor, normalised CT (see :mod:`preprocess`), H and W
multiples of 32 (160 and 320 are the sizes used here).  Output: a tuple of five
logit maps, each (N, 1, H, W): the refined map first, then the four side
outputs used for deep supervision (finest to coarsest).

The encoder is torchvision's ResNet-50 where torchvision is installed, else a
built-in copy with the same names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``;
see :mod:`encoders`), so a weights file loads either way and a locally stored
torchvision ImageNet state dict loads with :func:`load_encoder_weights`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import conv_bn_relu, projection_shortcut
from .encoders import ResNetTrunk

__all__ = [
    "FusionLungNet",
    "ResNet50Encoder",
    "ChannelAggregationAttention",
    "MultiScaleFeatureFusion",
    "SelfRefinement",
    "ResidualRefinement",
    "load_encoder_weights",
]


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection_shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Encoder(ResNetTrunk):
    """ResNet-50 trunk for single-channel input (torchvision's, or the built-in copy: :mod:`encoders`).

    Returns five feature maps: 64 ch at 1/2, 256 at 1/4, 512 at 1/8,
    1024 at 1/16 and 2048 at 1/32 of the input size.
    """

    depth = 50

    def builtin_stages(self) -> list[nn.Module]:
        cin, layers = 64, []
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * Bottleneck.expansion
            layers.append(nn.Sequential(*stage))
        return layers


def load_encoder_weights(encoder: ResNet50Encoder, path: str | Path) -> list[str]:
    """Load a local torchvision-style ResNet-50 state dict into ``encoder``.

    RGB ``conv1`` weights are summed over the colour axis to fit one CT channel;
    the classifier (``fc.*``) is dropped.  Returns the encoder keys not found.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    w = state.get("conv1.weight")
    in_ch = encoder.conv1.weight.shape[1]
    if w is not None and w.shape[1] != in_ch:
        state["conv1.weight"] = w.sum(dim=1, keepdim=True).repeat(1, in_ch, 1, 1) / in_ch
    result = encoder.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path}: not a ResNet-50 state dict (unexpected keys, e.g. {result.unexpected_keys[:3]})")
    return list(result.missing_keys)


# ---------------------------------------------------------------- decoder blocks
class ChannelAggregationAttention(nn.Module):
    """CAA on the deepest encoder block.

    1x1 then 3x3 convolution; parallel 1x3 and 3x1 branches are summed,
    global-average pooled and squashed by a sigmoid into channel weights that
    multiply the 3x3 features element-wise.
    """

    def __init__(self, cin: int = 2048, channels: int = 256):
        super().__init__()
        self.reduce = conv_bn_relu(cin, channels, 1, 0)
        self.conv = conv_bn_relu(channels, channels)
        self.branch_1x3 = conv_bn_relu(channels, channels, (1, 3), (0, 1))
        self.branch_3x1 = conv_bn_relu(channels, channels, (3, 1), (1, 0))
        self.excite = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.reduce(x))
        agg = self.branch_1x3(y) + self.branch_3x1(y)
        weights = torch.sigmoid(self.excite(F.adaptive_avg_pool2d(agg, 1)))
        return y * weights


class MultiScaleFeatureFusion(nn.Module):
    """MFF: three inputs -> 3x3 conv to ``channels`` each, resized to the
    second input's size, pairwise products concatenated, fused by a 3x3 conv."""

    def __init__(self, in_channels: tuple[int, int, int], channels: int = 256):
        super().__init__()
        self.proj = nn.ModuleList(conv_bn_relu(c, channels) for c in in_channels)
        self.fuse = conv_bn_relu(3 * channels, channels)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        size = skip.shape[-2:]
        a, b, c = (
            F.interpolate(p(t), size=size, mode="bilinear", align_corners=False) if t.shape[-2:] != size else p(t)
            for p, t in zip(self.proj, (deep, skip, context))
        )
        return self.fuse(torch.cat((a * b, a * c, b * c), dim=1))


class SelfRefinement(nn.Module):
    """SR: 3x3 conv to ``channels``; a 3x3 conv to 2x``channels`` split into a
    weight w and bias b; output relu(w * F + b)."""

    def __init__(self, cin: int = 256, channels: int = 256):
        super().__init__()
        self.conv = conv_bn_relu(cin, channels)
        self.affine = nn.Conv2d(channels, 2 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        w, b = self.affine(f).chunk(2, dim=1)
        return F.relu(w * f + b)


class ResidualRefinement(nn.Module):
    """RRM: a small encoder-decoder (4 poolings, shortcut connections) that
    predicts a residual added to the coarse logit map."""

    def __init__(self, channels: int = 64, depth: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.down = nn.ModuleList(conv_bn_relu(channels, channels) for _ in range(depth))
        self.bridge = conv_bn_relu(channels, channels)
        self.up = nn.ModuleList(conv_bn_relu(2 * channels, channels) for _ in range(depth))
        self.head = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, coarse: torch.Tensor) -> torch.Tensor:
        x = self.stem(coarse)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2, ceil_mode=True)
        x = self.bridge(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat((x, skip), dim=1))
        return coarse + self.head(x)


# ---------------------------------------------------------------- network
class FusionLungNet(nn.Module):
    """ResNet-50 encoder, CAA, three MFF+SR decoder stages, four side outputs, RRM.

    ``forward(x)`` with x (N, in_channels, H, W) returns
    ``(refined, side_1/4, side_1/8, side_1/16, side_1/32)`` logits, each (N, 1, H, W).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 256,
        attention_channels: int = 352,
        refine_channels: int = 64,
        refinement: bool = True,
    ):
        super().__init__()
        self.encoder = ResNet50Encoder(in_channels)
        a, c = attention_channels, channels
        self.caa = ChannelAggregationAttention(2048, a)
        # Each stage fuses (previous decoder output, encoder skip, global CAA context).
        self.mff = nn.ModuleList(
            [
                MultiScaleFeatureFusion((a, 1024, a), c),
                MultiScaleFeatureFusion((c, 512, a), c),
                MultiScaleFeatureFusion((c, 256, a), c),
            ]
        )
        self.sr = nn.ModuleList(SelfRefinement(c, c) for _ in range(3))
        self.side = nn.ModuleList(nn.Conv2d(ch, 1, 3, padding=1) for ch in (c, c, c, a))
        # Ablation: without the residual refinement module the first output is the finest side output.
        self.refine = ResidualRefinement(refine_channels) if refinement else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = x.shape[-2:]
        _, e2, e3, e4, e5 = self.encoder(x)
        context = self.caa(e5)
        d1 = self.sr[0](self.mff[0](context, e4, context))
        d2 = self.sr[1](self.mff[1](d1, e3, context))
        d3 = self.sr[2](self.mff[2](d2, e2, context))
        sides = [
            F.interpolate(head(f), size=size, mode="bilinear", align_corners=False)
            for head, f in zip(self.side, (d3, d2, d1, context))
        ]
        refined = self.refine(sides[0]) if self.refine is not None else sides[0]
        return (refined, *sides)
