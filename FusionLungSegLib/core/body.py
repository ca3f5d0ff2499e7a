"""The patient's body on a canonical CT ``[z, y, x]`` and the square box the network sees.

The body mask is the patient only: tissue above a HU threshold, opened in each
axial slice with a disc of a few millimetres so that thin structures touching
the skin (the shell of an air cushion, the table top, blankets, cables) come
loose, the largest 3D component, holes filled per slice (lungs, airways and
bowel gas are inside the body; air under a cushion or a head holder is not).

Training and inference crop every slice to :func:`crop_box` of the body, so
that a 500 mm field of view with a small patient and a 300 mm field of view
filled by the patient look alike to the network.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import masks
from .masks import (
    block_fraction,
    block_majority,
    disc,
    fill_holes_axial,
    label3d,
    largest_component,
    per_label,
    touches_border,
)

__all__ = [
    "ASSUMED_PIXEL_MM",
    "BODY_CROP",
    "HU_WINDOW",
    "body_mask",
    "crop_box",
    "outer_shell",
    "shell_margin",
]

#: In-plane pixel size assumed when a slice comes without spacing (2D training slices): a typical
#: 512-pixel chest field of view of about 360 mm.
ASSUMED_PIXEL_MM = 0.7

#: How the network's input box is drawn around the body (recorded in exported weights' metadata).
BODY_CROP = {"margin_mm": 10.0, "min_side_mm": 120.0}
#: HU mapped to [0, 1] for the network (clipped outside; recorded in exported weights' metadata).
HU_WINDOW: tuple[float, float] = (-1000.0, 400.0)

#: HU of aerated lung (above: tissue; below: the air outside a patient, about -1000 HU).
PARENCHYMA_HU = (-950.0, -400.0)


def body_mask(
    hu: np.ndarray,
    spacing_zyx=None,
    threshold: float = -500.0,
    opening_mm: float = 3.0,
    working_mm: float = 2.0,
    border_gap_mm: float = 60.0,
    lung_at_border: float = 0.4,
) -> np.ndarray:
    """The patient's body on a canonical HU volume ``[z, y, x]`` (bool, same shape).

    ``spacing_zyx`` in mm (None: :data:`ASSUMED_PIXEL_MM` in-plane).  The mask is
    computed on a grid of about ``working_mm`` pixels and expanded back: it is a
    coarse region (for cropping and for judging where a lung can be), not a skin
    contour.  Structures thinner than about ``2 * opening_mm`` that only touch the
    body (cushion shells, the table top, blankets: a few mm) are not part of it;
    a chest wall, even a thin one, is thicker.  Where the field of view cuts
    through the chest, stretches of image border up to ``border_gap_mm`` long
    between body pixels count as closed, so lungs cut by the border stay inside;
    a longer stretch (a lung cut along its whole depth, as in a cardiac
    reconstruction) is closed when the region behind it is aerated lung, not
    the air around a patient: at least ``lung_at_border`` of its pixels between
    -950 and -400 HU, against about none for air (-1000 HU).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected a canonical volume [z, y, x], got shape {hu.shape}")
    pixel = float(min(spacing_zyx[1:])) if spacing_zyx is not None else ASSUMED_PIXEL_MM
    step = max(1, int(round(working_mm / pixel)))
    tissue = block_majority(np.asarray(hu) > threshold, step)
    radius = int(opening_mm / (pixel * step))  # a disc of this radius fits in tissue at least 2 radii thick
    if radius > 0:
        import cv2

        kernel = disc(radius)
        opened = np.empty_like(tissue)
        for z in range(tissue.shape[0]):
            opened[z] = cv2.morphologyEx(tissue[z].astype(np.uint8), cv2.MORPH_OPEN, kernel) > 0
        core = largest_component(opened)
        # Give back the thin parts of the patient next to the opened body (a thin chest wall must
        # still enclose the lungs); the far side of a cushion or the table stays out.
        near = np.empty_like(core)
        grow = disc(radius + 1)
        for z in range(core.shape[0]):
            near[z] = cv2.dilate(core[z].astype(np.uint8), grow) > 0
        body = tissue & near
    else:
        body = largest_component(tissue)
    body = _fill_holes_cut_by_border(body, int(round(border_gap_mm / (pixel * step))))
    if lung_at_border:
        body = _fill_lung_cut_by_border(body, hu, step, lung_at_border)
    body = body.repeat(step, axis=1).repeat(step, axis=2)
    return np.ascontiguousarray(body[:, : hu.shape[1], : hu.shape[2]])


def _fill_holes_cut_by_border(body: np.ndarray, max_gap: int) -> np.ndarray:
    """Fill holes per slice, counting as closed the short stretches of image border between body pixels.

    A field of view that cuts through the chest leaves the lungs open to the
    image border; where the body meets the border on both sides of such a
    stretch (at most ``max_gap`` pixels long), the border closes it.  Air
    outside a patient who lies inside the field meets the border over long
    stretches and stays outside.
    """
    z, h, w = body.shape
    ring = masks.ring(body)
    closed = ring.copy()
    for k in range(z):
        hits = np.flatnonzero(ring[k])
        if hits.size < 2 or max_gap < 1:
            continue
        gaps = np.diff(np.concatenate([hits, hits[:1] + ring.shape[1]]))  # around the ring
        for start, gap in zip(hits, gaps):
            if 1 < gap <= max_gap + 1:
                idx = np.arange(start + 1, start + gap) % ring.shape[1]
                closed[k, idx] = True
    if np.array_equal(closed, ring):
        return fill_holes_axial(body)
    padded = np.zeros((z, h + 2, w + 2), bool)
    padded[:, 1:-1, 1:-1] = body
    n_top, n_right, n_bottom = w, h - 1, w - 1
    top, right = closed[:, :n_top], closed[:, n_top : n_top + n_right]
    bottom = closed[:, n_top + n_right : n_top + n_right + n_bottom]
    left = closed[:, n_top + n_right + n_bottom :]
    padded[:, 0, 1:-1] |= top
    padded[:, 2:-1, -1] |= right
    padded[:, -1, 1:-2] |= bottom[:, ::-1]
    padded[:, 2:-2, 0] |= left[:, ::-1]
    return fill_holes_axial(padded)[:, 1:-1, 1:-1] | fill_holes_axial(body)


def _fill_lung_cut_by_border(body: np.ndarray, hu: np.ndarray, step: int, min_share: float) -> np.ndarray:
    """Add to the body the regions open to the image border between body pixels that hold aerated lung.

    Per slice that reaches the border: a background region touching the border along at most four
    stretches and less than half of the border, of which ``min_share`` or more is lung-density
    (:data:`PARENCHYMA_HU`), is a lung the field of view cuts.  The air around a patient is darker.
    """
    import cv2

    cut = np.flatnonzero(touches_border(body))
    if cut.size == 0:
        return body
    out = body.copy()
    for k in cut:
        background = (~body[k]).view(np.uint8)
        n, labels = cv2.connectedComponents(background, connectivity=4)
        if n <= 1:
            continue
        ring = masks.ring(labels)
        touching = np.unique(ring[ring > 0])
        if touching.size == 0:
            continue
        share = None
        for c in touching:
            on_ring = ring == c
            if on_ring.mean() >= 0.5:
                continue
            runs = np.count_nonzero(on_ring & ~np.roll(on_ring, 1))
            if runs > 4:
                continue
            if share is None:  # lung-density share per working pixel, only for slices that need it
                share = block_fraction(hu[k : k + 1], *PARENCHYMA_HU, step)[0, : body.shape[1], : body.shape[2]]
            region = labels == c
            if float(share[region].mean()) >= min_share:
                out[k] |= region
    return out


#: Depth (mm) of the band inside the body's outer surface that :func:`outer_shell` marks.
SHELL_DEPTH_MM = 4.0


def shell_margin(spacing_zyx, depth_mm: float = SHELL_DEPTH_MM) -> int:
    """In-plane pixels of room around a region for which :func:`outer_shell`, computed on a box with
    that margin, agrees with the whole volume's shell over the region (at least the erosion's radius)."""
    return int(np.ceil(depth_mm / min(float(s) for s in spacing_zyx[1:]))) + 1


def outer_shell(body: np.ndarray, spacing_zyx=None, depth_mm: float = SHELL_DEPTH_MM) -> np.ndarray:
    """Body voxels within ``depth_mm`` of the body's outer surface, slice by slice.

    The image border does not count as surface: a body cut by a small field of
    view has no known surface there.
    """
    pixel = float(min(spacing_zyx[1:])) if spacing_zyx is not None else ASSUMED_PIXEL_MM
    radius = max(1, int(round(depth_mm / pixel)))
    import cv2

    kernel = disc(radius)
    out = np.zeros(body.shape, bool)
    for z in range(body.shape[0]):
        if body[z].any():
            padded = np.pad(body[z].astype(np.uint8), radius, mode="edge")
            inner = cv2.erode(padded, kernel)[radius:-radius, radius:-radius] > 0
            out[z] = body[z] & ~inner
    return out


def crop_box(
    body: np.ndarray,
    spacing_yx=None,
    margin_mm: float = BODY_CROP["margin_mm"],
    min_side_mm: float = BODY_CROP["min_side_mm"],
) -> tuple[int, int, int, int] | None:
    """Square box ``(y0, y1, x0, x1)`` in pixels around the body, ``margin_mm`` on each side.

    ``body`` is a 2D slice or a 3D ``[z, y, x]`` mask (the box covers the body
    on every slice).  The box is square in millimetres and may reach beyond the
    image (that part is padded with air).  None when there is no body.  Without
    ``spacing_yx`` the pixel is taken as :data:`ASSUMED_PIXEL_MM`.
    """
    plane = body.any(axis=0) if body.ndim == 3 else np.asarray(body, bool)
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    if rows.size == 0:
        return None
    sy, sx = (float(s) for s in spacing_yx) if spacing_yx is not None else (ASSUMED_PIXEL_MM,) * 2
    height_mm = (rows[-1] - rows[0] + 1) * sy
    width_mm = (cols[-1] - cols[0] + 1) * sx
    side_mm = max(height_mm, width_mm, min_side_mm) + 2 * margin_mm
    cy, cx = (rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2
    h, w = max(1, int(round(side_mm / sy))), max(1, int(round(side_mm / sx)))
    y0, x0 = int(round(cy - h / 2)), int(round(cx - w / 2))
    return y0, y0 + h, x0, x0 + w


def slices_that_may_hold_lung(
    hu: np.ndarray,
    body: np.ndarray,
    spacing_zyx,
    air_hu: float = -400.0,
    lungs_ml: float = 100.0,
    min_area_mm2: float = 300.0,
    margin_mm: float = 30.0,
    working_mm: float = 2.0,
) -> np.ndarray:
    """Canonical slices (bool per z) on which the network must run; the others cannot hold lung.

    Air regions inside the body of ``lungs_ml`` or more are the lungs (with the
    airways, and large stomach or bowel gas, which only costs time).  A slice
    may hold lung when it lies within ``margin_mm`` of a slice where they cover
    ``min_area_mm2`` or more; the margin covers the thin apices and
    costophrenic recesses.  A scan without such a region (only the tips of the
    lungs, or no lung) runs on every slice.  Cheap: HU and the body mask on a
    coarse grid.
    """
    n_z = hu.shape[0]
    sz, sy, sx = (float(s) for s in spacing_zyx)
    step = max(1, int(round(working_mm / min(sy, sx))))
    air = (np.asarray(hu[:, ::step, ::step]) < air_hu) & body[:, ::step, ::step]
    labels, n = label3d(air)
    pixel_mm2 = sy * sx * step * step
    big = np.concatenate(([False], per_label(labels, n) * pixel_mm2 * sz / 1000.0 >= lungs_ml))
    if not big.any():
        return np.ones(n_z, bool)
    area = np.array([np.count_nonzero(big[labels[z]]) for z in range(n_z)]) * pixel_mm2
    core = area >= min_area_mm2
    reach = int(np.ceil(margin_mm / sz))
    return ndimage.binary_dilation(core, iterations=reach) if reach and core.any() else core
