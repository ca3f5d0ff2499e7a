"""The segmentation pipeline's steps on numpy arrays: geometry, body mask, post-processing, QC, metrics.

The lowest layer: imports nothing from the rest of the package except :mod:`FusionLungSegLib.resources`,
and no torch.
"""
