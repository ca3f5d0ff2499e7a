"""Where the ResNet encoders' trunks come from: torchvision's constructors, or a built-in copy.

With torchvision installed, :class:`model.ResNet50Encoder` and :class:`baselines.ResNet18Encoder`
take their stem and four stages from ``torchvision.models.resnet50/resnet18(weights=None)``, the
first convolution changed to one input channel and the classifier dropped.  Without torchvision
(a plain ``pip install`` of the library, or a Slicer without it) they build the same trunk from
:mod:`model`'s blocks: the same module names, parameter shapes and forward computation, so a
weights file loads and gives the same output either way (``Testing/test_encoders.py``).
Both encoders are :class:`ResNetTrunk` subclasses, which holds the choice, the stem and the forward pass.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

__all__ = [
    "TRUNK_MODULES",
    "ResNetTrunk",
    "torchvision_available",
    "use_torchvision",
    "torchvision_trunk",
    "trunk_source",
]

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


class ResNetTrunk(nn.Module):
    """A ResNet stem and four stages for ``in_channels``-channel input, under torchvision's names.

    Subclasses set ``depth`` (18 or 50) and build the stages of the built-in copy in
    :meth:`builtin_stages`.  ``torchvision``: True or False forces the source, None
    lets :func:`use_torchvision` decide.  ``forward`` returns the five feature maps,
    at 1/2 (stem), 1/4, 1/8, 1/16 and 1/32 of the input size.
    """

    depth: int

    def __init__(self, in_channels: int = 1, torchvision: bool | None = None):
        super().__init__()
        if use_torchvision(torchvision):
            trunk = torchvision_trunk(self.depth, in_channels)
            for name in TRUNK_MODULES:
                setattr(self, name, getattr(trunk, name))
            return
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = self.builtin_stages()

    def builtin_stages(self) -> list[nn.Module]:
        """The four stages of the built-in copy (``layer1`` ... ``layer4``)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        e1 = self.relu(self.bn1(self.conv1(x)))
        e2 = self.layer1(self.maxpool(e1))
        e3 = self.layer2(e2)
        e4 = self.layer3(e3)
        return [e1, e2, e3, e4, self.layer4(e4)]


def trunk_source(trunk: nn.Module | None) -> str | None:
    """ "torchvision X.Y.Z" or "built-in": where ``trunk`` took its stages from (None: not a ResNetTrunk)."""
    if not isinstance(trunk, ResNetTrunk):
        return None
    if type(trunk.layer1[0]).__module__.startswith("torchvision"):
        import torchvision

        return f"torchvision {torchvision.__version__}"
    return "built-in"
