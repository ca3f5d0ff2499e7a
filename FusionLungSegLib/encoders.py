"""Where the ResNet encoders' trunks come from: torchvision's constructors, or a built-in copy.

With torchvision installed, :class:`model.ResNet50Encoder` and :class:`baselines.ResNet18Encoder`
take their stem and four stages from ``torchvision.models.resnet50/resnet18(weights=None)``, the
first convolution changed to one input channel and the classifier dropped.  Without torchvision
(a plain ``pip install`` of the library, or a Slicer without it) they build the same trunk from
:mod:`model`'s blocks: the same module names, parameter shapes and forward computation, so a
weights file loads and gives the same output either way (``Testing/test_encoders.py``).
"""

from __future__ import annotations

import functools
import os

from torch import nn

__all__ = ["TRUNK_MODULES", "torchvision_available", "use_torchvision", "torchvision_trunk"]

#: The trunk's modules an encoder keeps, under torchvision's names (its state-dict keys).
TRUNK_MODULES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_ENV = "FUSIONLUNGSEG_RESNET"


@functools.lru_cache(maxsize=1)
def torchvision_available() -> bool:
    """True when torchvision imports and its operators fit the installed torch."""
    try:
        import torchvision.models  # noqa: F401  (a torchvision built for another torch raises RuntimeError)
    except Exception:  # noqa: BLE001
        return False
    return True


def use_torchvision(choice: bool | None = None) -> bool:
    """Whether to build from torchvision: ``choice`` if given, else ``$FUSIONLUNGSEG_RESNET``
    (``torchvision`` or ``builtin``), else whenever torchvision is available."""
    if choice is None:
        env = os.environ.get(_ENV, "").strip().lower()
        if env not in ("", "torchvision", "builtin"):
            raise ValueError(f"${_ENV} must be 'torchvision' or 'builtin', got {env!r}")
        choice = {"torchvision": True, "builtin": False}.get(env)
    if choice is None:
        return torchvision_available()
    if choice and not torchvision_available():
        raise ImportError("torchvision was asked for but does not import here (pip install torchvision)")
    return bool(choice)


def torchvision_trunk(depth: int, in_channels: int = 1) -> nn.Module:
    """torchvision's ResNet-``depth`` (18 or 50) without weights, its stem taking ``in_channels``
    and without the classifier (``avgpool``, ``fc``)."""
    from torchvision.models import resnet18, resnet50

    constructors = {18: resnet18, 50: resnet50}
    if depth not in constructors:
        raise ValueError(f"ResNet depth must be 18 or 50, got {depth}")
    net = constructors[depth](weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's init
    del net.avgpool, net.fc
    return net
