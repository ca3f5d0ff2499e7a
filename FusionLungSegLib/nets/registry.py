"""The networks by name: a new network is its module plus one line in :data:`NETWORKS`."""

from __future__ import annotations

from torch import nn

from .baselines import ResUNet18, UNet
from .blocks import count_parameters
from .fusionlungnet import FusionLungNet

__all__ = ["ARCHITECTURES", "NETWORKS", "build_model", "count_parameters"]

#: ``--arch`` name -> (the weights' ``meta["architecture"]``, class)
NETWORKS: dict[str, tuple[str, type[nn.Module]]] = {
    "fusionlungnet": ("FusionLungNet", FusionLungNet),
    "unet": ("U-Net", UNet),
    "resunet18": ("ResUNet-18", ResUNet18),
}
#: ``--arch`` names -> the weights' ``meta["architecture"]``.
ARCHITECTURES = {key: name for key, (name, _) in NETWORKS.items()}


def build_model(architecture: str = "FusionLungNet", **options) -> nn.Module:
    """A network by its ``--arch`` name or its metadata name ("FusionLungNet", "U-Net", "ResUNet-18").

    ``options`` go to the constructor (e.g. ``refinement=False`` for FusionLungNet).
    """
    key = str(architecture).lower().replace("-", "").replace("_", "")
    if key not in NETWORKS:
        raise ValueError(f"unknown architecture {architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
    return NETWORKS[key][1](**options)
