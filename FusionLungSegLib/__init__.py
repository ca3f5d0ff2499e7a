"""FusionLungSegLib: lung segmentation in chest CT with FusionLungNet (arXiv 2410.15812).

Pure Python (torch, SimpleITK, numpy); no Slicer or Qt imports except in
:mod:`FusionLungSegLib.mrml`, which is only imported on demand.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "LungSegmenter", "FusionLungNet", "HybridLoss"]


def __getattr__(name):  # lazy: importing the package stays cheap
    if name == "LungSegmenter":
        from .inference import LungSegmenter

        return LungSegmenter
    if name == "FusionLungNet":
        from .model import FusionLungNet

        return FusionLungNet
    if name == "HybridLoss":
        from .losses import HybridLoss

        return HybridLoss
    raise AttributeError(name)
