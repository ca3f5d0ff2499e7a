"""3D post-processing of a canonical ``[z, y, x]`` lung mask and the right/left split.

In canonical order x runs from the patient's right to the patient's left
(see :mod:`geometry`), so "right lung" is decided in patient coordinates.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["RIGHT_LUNG", "LEFT_LUNG", "clean_lung_mask", "remove_central_airways", "split_right_left", "postprocess"]

RIGHT_LUNG = 1
LEFT_LUNG = 2

_CONN6 = ndimage.generate_binary_structure(3, 1)


def _fill_holes_axial(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (vessels inside the lung are lung on an axial slice)."""
    out = mask.copy()
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        out[z] = ndimage.binary_fill_holes(mask[z])
    return out


def clean_lung_mask(mask: np.ndarray, spacing_zyx, min_fraction: float = 0.05, min_ml: float = 5.0) -> np.ndarray:
    """Keep the lungs' connected components and fill holes.

    Keeps the largest 3D component and any other component holding at least
    ``min_fraction`` of its volume and ``min_ml`` millilitres (the two lungs
    may or may not touch).  Returns a new boolean array.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    labels, n = ndimage.label(mask, structure=_CONN6)
    sizes = np.bincount(labels.ravel())[1:]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    largest = sizes.max()
    keep = np.flatnonzero((sizes == largest) | ((sizes >= min_fraction * largest) & (sizes * voxel_ml >= min_ml))) + 1
    return _fill_holes_axial(np.isin(labels, keep))


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
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes)
    if n >= 2 and sizes[order[1]] >= big_fraction * sizes[order[0]]:
        a, b = order[0] + 1, order[1] + 1
        xa = ndimage.center_of_mass(labels == a)[2]
        xb = ndimage.center_of_mass(labels == b)[2]
        right, left = (a, b) if xa < xb else (b, a)
        out[labels == right] = RIGHT_LUNG
        out[labels == left] = LEFT_LUNG
        # Smaller leftovers join the side of their centroid.
        midline = (xa + xb) / 2
        for lab in order[2:] + 1:
            x = ndimage.center_of_mass(labels == lab)[2]
            out[labels == lab] = RIGHT_LUNG if x < midline else LEFT_LUNG
        return out
    midline = float(np.nonzero(mask)[2].mean())
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        lab2, n2 = ndimage.label(mask[z])
        for i in range(1, n2 + 1):
            comp = lab2 == i
            xs = np.nonzero(comp)[1]
            frac_right = float(np.mean(xs < midline))
            if 0.2 < frac_right < 0.8 and comp.sum() > 50:
                r, left_part = _split_component_2d(comp, midline)
                out[z][r] = RIGHT_LUNG
                out[z][left_part] = LEFT_LUNG
            else:
                out[z][comp] = RIGHT_LUNG if frac_right >= 0.5 else LEFT_LUNG
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
    midline = float(np.nonzero(mask)[2].mean())
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        lab, n = ndimage.label(mask[z])
        for i, box in enumerate(ndimage.find_objects(lab), start=1):
            comp = lab[box] == i
            area = comp.sum() * sy * sx
            if area >= max_area_mm2:
                continue
            cx = (np.nonzero(comp)[1].mean() + box[1].start - midline) * sx
            if abs(cx) <= max_offset_mm and comp.mean() >= 0.5:
                out[z][box][comp] = False
    return out


def postprocess(prob: np.ndarray, spacing_zyx, threshold: float = 0.5) -> np.ndarray:
    """Canonical probability volume -> uint8 labels (0 background, 1 right, 2 left)."""
    lungs = clean_lung_mask(remove_central_airways(prob > threshold, spacing_zyx), spacing_zyx)
    labels = split_right_left(lungs)
    # Each side: keep its largest 3D component (drops stray islands created by the split).
    for side in (RIGHT_LUNG, LEFT_LUNG):
        part = labels == side
        if not part.any():
            continue
        lab, n = ndimage.label(part, structure=_CONN6)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            largest = sizes.max()
            small = np.isin(lab, np.flatnonzero(sizes < 0.05 * largest) + 1)
            labels[small] = 0
    return labels
