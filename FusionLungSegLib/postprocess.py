"""3D post-processing of a canonical ``[z, y, x]`` lung mask and the right/left split.

In canonical order x runs from the patient's right to the patient's left
(see :mod:`geometry`), so "right lung" is decided in patient coordinates.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "RIGHT_LUNG",
    "LEFT_LUNG",
    "body_mask",
    "clean_lung_mask",
    "remove_central_airways",
    "split_right_left",
    "postprocess",
]

RIGHT_LUNG = 1
LEFT_LUNG = 2

_CONN6 = ndimage.generate_binary_structure(3, 1)
# 4-connectivity within each axial slice and none across slices: labels every slice's 2D
# components in one call instead of a Python loop over slices.
_AXIAL4 = np.zeros((3, 3, 3), bool)
_AXIAL4[1] = ndimage.generate_binary_structure(2, 1)


def _per_label(labels: np.ndarray, n: int, where: np.ndarray | None = None, x_weighted: bool = False) -> np.ndarray:
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


def _select(labels: np.ndarray, n: int, keep_ids) -> np.ndarray:
    """Boolean volume of the voxels whose label is in ``keep_ids`` (a lookup, no temporaries)."""
    lut = np.zeros(n + 1, bool)
    lut[np.asarray(keep_ids, dtype=np.int64)] = True
    return lut[labels]


def _bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Index box of the True voxels, grown by ``margin`` in y and x (whole array if empty)."""
    box = []
    for axis, pad in zip(range(3), (0, margin, margin)):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return (slice(None),) * 3
        box.append(slice(max(0, idx[0] - pad), min(mask.shape[axis], idx[-1] + 1 + pad)))
    return tuple(box)


def _axial_components(mask: np.ndarray):
    """Yield ``(index, component)`` for every 2D component of every axial slice.

    ``index`` is a tuple of slices that places the component's box in the full
    volume (one slice thick); ``component`` is its (h, w) boolean mask.  All
    slices are labelled in one call, inside the mask's bounding box.
    """
    box = _bounding_box(mask, margin=0)
    labels, _ = ndimage.label(mask[box], structure=_AXIAL4)
    for i, obj in enumerate(ndimage.find_objects(labels), start=1):
        if obj is not None:
            index = tuple(slice(o.start + (b.start or 0), o.stop + (b.start or 0)) for o, b in zip(obj, box))
            yield index, labels[obj][0] == i


def _fill_holes_axial(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (vessels inside the lung are lung on an axial slice).

    Same result as ``binary_fill_holes`` on each slice: background not 4-connected
    to the slice's border is a hole.  Works inside the mask's bounding box.
    """
    out = mask.copy()
    if not mask.any():
        return out
    box = _bounding_box(mask)
    sub = mask[box]
    background, n_background = ndimage.label(~sub, structure=_AXIAL4)
    edges = (background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1])
    outside = np.unique(np.concatenate([e.ravel() for e in edges]))
    hole = np.ones(n_background + 1, bool)
    hole[outside] = False
    out[box] |= hole[background]  # (mask voxels, label 0, may come out True here too: harmless)
    return out


def _midline_x(mask: np.ndarray) -> float:
    """Mean x (canonical column) of the True voxels."""
    profile = mask.sum(axis=(0, 1), dtype=np.int64)
    return float((profile * np.arange(profile.size)).sum() / profile.sum())


def body_mask(hu: np.ndarray, threshold: float = -500.0, step: int = 2) -> np.ndarray:
    """The patient's body on a canonical HU volume ``[z, y, x]``, holes filled on each axial slice.

    The largest 3D component above ``threshold`` HU (so the lungs, enclosed by the
    chest wall, are inside; air outside the patient, e.g. under a blanket or a
    head holder, is not).  Computed every ``step`` pixels in-plane and expanded
    back: it is a coarse test, not a contour.
    """
    tissue = np.asarray(hu[:, ::step, ::step]) > threshold
    labels, n = ndimage.label(tissue, structure=_CONN6)
    body = np.zeros(tissue.shape, bool)
    if n:
        body = _fill_holes_axial(_select(labels, n, [np.argmax(_per_label(labels, n)) + 1]))
    body = body.repeat(step, axis=1).repeat(step, axis=2)
    return body[:, : hu.shape[1], : hu.shape[2]]


def clean_lung_mask(
    mask: np.ndarray,
    spacing_zyx,
    min_fraction: float = 0.05,
    min_ml: float = 5.0,
    body: np.ndarray | None = None,
) -> np.ndarray:
    """Keep the lungs' connected components and fill holes.

    Keeps the largest 3D component and any other component holding at least
    ``min_fraction`` of its volume and ``min_ml`` millilitres (the two lungs
    may or may not touch).  With a ``body`` mask, a component other than the
    largest must also lie mostly (over half its voxels) inside the body: air
    pockets outside the patient look like lung to a 2D network.  Returns a new
    boolean array.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    labels, n = ndimage.label(mask, structure=_CONN6)
    sizes = _per_label(labels, n)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    largest = sizes.max()
    keep = (sizes >= min_fraction * largest) & (sizes * voxel_ml >= min_ml)
    if body is not None:
        keep &= _per_label(labels, n, where=body) > 0.5 * sizes
    keep |= sizes == largest
    kept = _select(labels, n, np.flatnonzero(keep) + 1)
    del labels
    return _fill_holes_axial(kept)


def _split_component_2d(comp: np.ndarray, midline: float) -> tuple[np.ndarray, np.ndarray]:
    """Split one 2D component spanning the midline at its thinnest column near the midline."""
    cols = comp.sum(axis=0)
    xs = np.flatnonzero(cols)
    lo, hi = xs[0], xs[-1]
    width = hi - lo + 1
    a, b = lo + width // 4, hi - width // 4  # look in the middle half of the component
    if b <= a:
        cut = int(round(midline))
    else:
        window = cols[a : b + 1].astype(float)
        # Prefer thin columns close to the midline: add a small distance penalty.
        penalty = np.abs(np.arange(a, b + 1) - midline) * (window.max() / max(width, 1)) * 0.5
        cut = a + int(np.argmin(window + penalty))
    right = comp.copy()
    right[:, cut:] = False
    left = comp & ~right
    return right, left


def split_right_left(mask: np.ndarray, big_fraction: float = 0.2) -> np.ndarray:
    """Label a binary canonical lung mask: 1 = right lung (low x), 2 = left lung (high x).

    When two large 3D components exist they are the lungs, ordered by the x of
    their centroids.  Otherwise each axial slice's 2D components are assigned by
    their centroid relative to the lung mask's midline, and a 2D component that
    straddles the midline (the lungs touching) is cut at its thinnest column.
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return out
    labels, n = ndimage.label(mask, structure=_CONN6)
    sizes = _per_label(labels, n)
    order = np.argsort(-sizes)
    if n >= 2 and sizes[order[1]] >= big_fraction * sizes[order[0]]:
        # Centroid x of every component in one pass; the two big ones are the lungs.
        xs = _per_label(labels, n, x_weighted=True) / np.maximum(sizes, 1)
        midline = (xs[order[0]] + xs[order[1]]) / 2
        # Each component (the smaller leftovers too) takes the side of its centroid; right is low x.
        side = np.where(xs < midline, RIGHT_LUNG, LEFT_LUNG).astype(np.uint8)
        return np.concatenate(([0], side)).astype(np.uint8)[labels]
    midline = _midline_x(mask)
    for index, comp in _axial_components(mask):
        x0 = index[2].start
        target = out[index][0]
        frac_right = float(np.mean(np.nonzero(comp)[1] + x0 < midline))
        if 0.2 < frac_right < 0.8 and comp.sum() > 50:
            r, left_part = _split_component_2d(comp, midline - x0)
            target[r] = RIGHT_LUNG
            target[left_part] = LEFT_LUNG
        else:
            target[comp] = RIGHT_LUNG if frac_right >= 0.5 else LEFT_LUNG
    return out


def remove_central_airways(
    mask: np.ndarray, spacing_zyx, max_area_mm2: float = 600.0, max_offset_mm: float = 25.0
) -> np.ndarray:
    """Drop trachea and main-bronchus cross-sections: small, compact 2D components near the midline.

    On each axial slice, a component smaller than ``max_area_mm2`` whose centroid
    lies within ``max_offset_mm`` of the midline (the mean x of the whole lung
    mask) and that fills at least half of its bounding box is airway, not lung.
    Lung apices are lateral, so they are kept.  Returns a new array.
    """
    mask = np.asarray(mask, dtype=bool)
    out = mask.copy()
    if not mask.any():
        return out
    _, sy, sx = (float(s) for s in spacing_zyx)
    midline = _midline_x(mask)
    for index, comp in _axial_components(mask):
        if comp.sum() * sy * sx >= max_area_mm2:
            continue
        cx = (np.nonzero(comp)[1].mean() + index[2].start - midline) * sx
        if abs(cx) <= max_offset_mm and comp.mean() >= 0.5:
            out[index][0][comp] = False
    return out


def postprocess(prob: np.ndarray, spacing_zyx, threshold: float = 0.5, hu: np.ndarray | None = None) -> np.ndarray:
    """Canonical probability volume -> uint8 labels (0 background, 1 right, 2 left).

    ``hu``, the canonical CT itself, lets components outside the patient's body be dropped.
    """
    body = body_mask(hu) if hu is not None else None
    lungs = clean_lung_mask(remove_central_airways(prob > threshold, spacing_zyx), spacing_zyx, body=body)
    del body
    labels = split_right_left(lungs)
    # Each side: keep its largest 3D component (drops stray islands created by the split).
    for side in (RIGHT_LUNG, LEFT_LUNG):
        part = labels == side
        if not part.any():
            continue
        lab, n = ndimage.label(part, structure=_CONN6)
        if n > 1:
            sizes = _per_label(lab, n)
            largest = sizes.max()
            small = _select(lab, n, np.flatnonzero(sizes < 0.05 * largest) + 1)
            labels[small] = 0
    return labels
