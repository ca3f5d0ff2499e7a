"""Generic helpers on boolean masks ``[z, y, x]``: connectivity, discs, hole filling, boxes, components,
block downsampling and the image border."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "CONN6",
    "AXIAL4",
    "CROSS",
    "disc",
    "fill_holes_axial",
    "bounding_box",
    "largest_component",
    "label3d",
    "per_label",
    "block_majority",
    "block_fraction",
    "touches_border",
    "ring",
]

#: 6-connectivity in 3D
CONN6 = ndimage.generate_binary_structure(3, 1)
#: 4-connectivity within each axial slice and none across slices: every slice's 2D components in one call
AXIAL4 = np.zeros((3, 3, 3), bool)
AXIAL4[1] = ndimage.generate_binary_structure(2, 1)
#: the same 4-connected cross in 2D, as a cv2 kernel (uint8): one pixel's step in-plane
CROSS = AXIAL4[1].astype(np.uint8)


def disc(radius_px: int) -> np.ndarray:
    """A filled disc of radius ``radius_px`` pixels (uint8, for cv2 and scipy morphology)."""
    r = max(0, int(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2 <= r * r + r).astype(np.uint8)  # "+ r" rounds the disc like a pixel circle


def fill_holes_axial(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice: background not 4-connected to the slice's border becomes True.

    Same result as ``binary_fill_holes`` on every axial slice; works inside the
    mask's bounding box.  Returns a new array.
    """
    out = np.array(mask, dtype=bool, copy=True)
    if not out.any():
        return out
    box = bounding_box(out, margin=1)
    sub = out[box]
    background, n_background = ndimage.label(~sub, structure=AXIAL4)
    edges = (background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1])
    outside = np.unique(np.concatenate([e.ravel() for e in edges]))
    hole = np.ones(n_background + 1, bool)
    hole[outside] = False
    out[box] |= hole[background]  # label 0 (mask voxels) may come out True here too: harmless
    return out


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Index box of the True voxels of a 3D mask, grown by ``margin`` in y and x (whole array if empty)."""
    box = []
    for axis, pad in zip(range(3), (0, margin, margin)):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return (slice(None),) * 3
        box.append(slice(max(0, idx[0] - pad), min(mask.shape[axis], idx[-1] + 1 + pad)))
    return tuple(box)


def label3d(mask: np.ndarray, structure: np.ndarray = CONN6) -> tuple[np.ndarray, int]:
    """``ndimage.label`` with 2-byte labels when they fit (they nearly always do), else 4: half the memory
    of the default on a whole volume (an 800-slice scan: 400 MB instead of 800 MB)."""
    try:
        return ndimage.label(mask, structure=structure, output=np.uint16)
    except RuntimeError:  # more than 65535 components
        return ndimage.label(mask, structure=structure)


def per_label(labels: np.ndarray, n: int, where: np.ndarray | None = None, x_weighted: bool = False) -> np.ndarray:
    """Voxel count (or sum of x) of labels 1..n, slab by slab so no full-volume temporaries are made."""
    out = np.zeros(n + 1, np.float64)
    x = np.arange(labels.shape[2], dtype=np.float64)
    for z in range(0, labels.shape[0], 16):
        lab = labels[z : z + 16]
        if where is not None:
            lab = lab[where[z : z + 16]]
            out += np.bincount(lab, minlength=n + 1)
        elif x_weighted:
            out += np.bincount(lab.ravel(), weights=np.broadcast_to(x, lab.shape).ravel(), minlength=n + 1)
        else:
            out += np.bincount(lab.ravel(), minlength=n + 1)
    return out[1:]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a 3D mask (all False when empty)."""
    labels, n = label3d(mask)
    if n == 0:
        return np.zeros(mask.shape, bool)
    return labels == int(np.argmax(per_label(labels, n))) + 1


def block_majority(mask: np.ndarray, step: int) -> np.ndarray:
    """Downsample ``[z, y, x]`` in-plane by ``step``: a block is True if half or more of its pixels are.

    Unlike sampling every ``step``-th pixel, a thin wall neither vanishes nor thickens.  Blocks
    past the edge repeat the last row and column.
    """
    if step == 1:
        return mask
    import cv2

    z, h, w = mask.shape
    hh, ww = -(-h // step) * step, -(-w // step) * step
    out = np.empty((z, hh // step, ww // step), bool)
    need = (step * step + 1) // 2  # pixels that make half a block
    for k in range(z):
        m = np.ascontiguousarray(mask[k]).view(np.uint8)
        if (hh, ww) != (h, w):
            m = cv2.copyMakeBorder(m, 0, hh - h, 0, ww - w, cv2.BORDER_REPLICATE)
        # An area resize by a whole factor is each block's mean: times the block size, its pixel count
        # (within float rounding, hence the quarter-pixel margin). 20-30x faster than numpy's reshape-sum.
        counts = cv2.resize(m.astype(np.float32), (ww // step, hh // step), interpolation=cv2.INTER_AREA)
        out[k] = counts * (step * step) >= need - 0.25
    return out


def block_fraction(hu: np.ndarray, lo: float, hi: float, step: int) -> np.ndarray:
    """Share of each ``step`` x ``step`` block's pixels with ``lo < HU < hi`` (the grid of :func:`block_majority`)."""
    import cv2

    z, h, w = hu.shape
    hh, ww = -(-h // step) * step, -(-w // step) * step
    out = np.empty((z, hh // step, ww // step), np.float32)
    for k in range(z):
        m = ((hu[k] > lo) & (hu[k] < hi)).astype(np.float32)
        if (hh, ww) != (h, w):
            m = cv2.copyMakeBorder(m, 0, hh - h, 0, ww - w, cv2.BORDER_REPLICATE)
        out[k] = cv2.resize(m, (ww // step, hh // step), interpolation=cv2.INTER_AREA) if step > 1 else m
    return out


def touches_border(body: np.ndarray) -> np.ndarray:
    """Per slice of a ``[z, y, x]`` mask: whether it reaches the image border."""
    return (
        body[:, 0, :].any(axis=1) | body[:, -1, :].any(axis=1) | body[:, :, 0].any(axis=1) | body[:, :, -1].any(axis=1)
    )


def ring(a: np.ndarray) -> np.ndarray:
    """The border pixels of each (h, w) plane of ``a`` (last two axes) in order around it, clockwise from
    the top-left corner: shape (..., 2 * (h + w) - 4)."""
    return np.concatenate([a[..., 0, :], a[..., 1:, -1], a[..., -1, -2::-1], a[..., -2:0:-1, 0]], axis=-1)
