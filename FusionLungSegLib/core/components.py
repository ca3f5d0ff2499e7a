"""Labelled 3D components of a canonical ``[z, y, x]`` mask: per-component sums, selections, the axial
2D components of every slice, and the mask's middle in x."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .masks import AXIAL4, bounding_box, per_label  # per_label: kept importable from here

__all__ = ["per_label", "select_components", "components_mask", "axial_components", "midline_x", "x_extent"]


def select_components(labels: np.ndarray, n: int, keep_ids) -> np.ndarray:
    """Boolean volume of the voxels whose label is in ``keep_ids`` (a lookup, no temporaries)."""
    lut = np.zeros(n + 1, bool)
    lut[np.asarray(keep_ids, dtype=np.int64)] = True
    return lut[labels]


def components_mask(labels: np.ndarray, comps) -> np.ndarray:
    """Boolean volume of the given components, each compared within its own box (no lookup over the volume)."""
    out = np.zeros(labels.shape, bool)
    for c in comps:
        out[c.box] |= labels[c.box] == c.label
    return out


def axial_components(mask: np.ndarray):
    """Yield ``(index, component)`` for every 2D component of every axial slice.

    ``index`` is a tuple of slices that places the component's box in the full
    volume (one slice thick); ``component`` is its (h, w) boolean mask.  All
    slices are labelled in one call, inside the mask's bounding box.
    """
    box = bounding_box(mask, margin=0)
    labels, _ = ndimage.label(mask[box], structure=AXIAL4)
    for i, obj in enumerate(ndimage.find_objects(labels), start=1):
        if obj is not None:
            index = tuple(slice(o.start + (b.start or 0), o.stop + (b.start or 0)) for o, b in zip(obj, box))
            yield index, labels[obj][0] == i


def midline_x(mask: np.ndarray) -> float:
    """Mean x (canonical column) of the True voxels."""
    profile = mask.sum(axis=(0, 1), dtype=np.int64)
    return float((profile * np.arange(profile.size)).sum() / profile.sum())


def x_extent(labels: np.ndarray, comp: int, box) -> tuple[float, float, float]:
    """2nd and 98th percentile and mean of a component's x (canonical columns)."""
    xs = np.nonzero(labels[box] == comp)[2] + (box[2].start or 0)
    lo, hi = np.percentile(xs, (2, 98))
    return float(lo), float(hi), float(xs.mean())
