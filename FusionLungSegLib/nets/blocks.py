"""Layers shared by the networks: convolution + batch norm + ReLU, ResNet's projection shortcut."""

from __future__ import annotations

from torch import nn

__all__ = ["conv_bn_relu", "projection_shortcut", "count_parameters"]


def conv_bn_relu(cin: int, cout: int, kernel=3, padding=1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def projection_shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """ResNet's 1x1 convolution + batch norm on the identity path where the shape changes, else None."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
