"""FusionLungSegLib: lung segmentation in chest CT with FusionLungNet (arXiv 2410.15812).

Pure Python (torch, SimpleITK, numpy); no Slicer or Qt imports except in
:mod:`FusionLungSegLib.mrml`, which is only imported on demand.
"""

from ._version import __version__

__all__ = ["__version__", "LungSegmenter", "FusionLungNet", "HybridLoss"]


def __getattr__(name):  # lazy: importing the package stays cheap
    if name == "LungSegmenter":
        from .segmenter import LungSegmenter

        return LungSegmenter
    if name == "FusionLungNet":
        from .nets.fusionlungnet import FusionLungNet

        return FusionLungNet
    if name == "HybridLoss":
        from .training.losses import HybridLoss

        return HybridLoss
    raise AttributeError(name)
