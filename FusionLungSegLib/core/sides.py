"""Right and left, in the patient's coordinates: which lung of a canonical ``[z, y, x]`` mask is which.

In canonical order x runs from the patient's right to the patient's left (see :mod:`.geometry`).  The
side is decided from anatomy in view (two lungs and the gap between them; one lung and the body's
midline, its chest wall or its hollow toward the heart); when nothing decides, it is "undecided".
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .components import axial_components, midline_x, per_label, select_components, x_extent
from .labels import LEFT_LUNG, RIGHT_LUNG
from .masks import disc, label3d


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


def split_right_left(mask: np.ndarray, big_fraction: float = 0.2, body: np.ndarray | None = None, spacing_zyx=None):
    """Label a binary canonical lung mask: 1 = right lung (low x), 2 = left lung (high x).

    The sides are decided from what is in view (see :func:`split_sides`); this returns the labels only.
    """
    return split_sides(mask, big_fraction, body=body, spacing_zyx=spacing_zyx)[0]


#: How :func:`split_sides` decided right from left (``SelectionReport.side_basis``).
SIDES_TWO_LUNGS = "two lungs"
SIDES_GAP = "the gap between the lungs"
SIDES_BODY = "the body's midline"
SIDES_LATERAL = "one lung: the side its chest wall is on"
SIDES_UNDECIDED = "undecided"
SIDES_MASK = "the mask's middle (no body mask given)"


def _partner(labels: np.ndarray, sizes: np.ndarray, order: np.ndarray, voxel_ml: float, min_ml: float):
    """The other lung beside the largest component: the largest other component of ``min_ml`` or more whose x
    range lies beyond the largest one's (the mediastinum between them).  Returns (ids, midline) or None."""
    boxes = ndimage.find_objects(labels)
    a = int(order[0]) + 1
    a_lo, a_hi, _ = x_extent(labels, a, boxes[a - 1])
    for k in order[1:6]:
        if sizes[k] * voxel_ml < min_ml:
            break
        b = int(k) + 1
        b_lo, b_hi, _ = x_extent(labels, b, boxes[b - 1])
        overlap = max(0.0, min(a_hi, b_hi) - max(a_lo, b_lo))
        if overlap <= 0.25 * (b_hi - b_lo + 1):
            return (a, b), ((a_hi + b_lo) / 2 if b_lo > a_lo else (b_hi + a_lo) / 2)
    return None


def _cut_borders(body: np.ndarray, mask: np.ndarray, pixel_mm: float, contact_mm: float = 20.0) -> np.ndarray:
    """Whether the body reaches the low-x (patient's right) and the high-x image border over ``contact_mm``
    or more on a slice that holds lung: (2,) bool."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return np.zeros(2, bool)
    edges = np.count_nonzero(body[:, :, [0, -1]][zs], axis=1)  # (slices, 2) pixels on each side border
    return (edges * pixel_mm >= contact_mm).any(axis=0)


def _body_whole_across(body: np.ndarray, mask: np.ndarray, pixel_mm: float, contact_mm: float = 20.0) -> bool:
    """Whether the body's right and left edges are in view on the slices that hold lung: it does not
    reach the right or left image border over ``contact_mm`` or more on any of them."""
    return not _cut_borders(body, mask, pixel_mm, contact_mm).any()


def _body_midline(body: np.ndarray, mask: np.ndarray) -> float:
    """x halfway between the body's right and left edges, over the slices that hold lung."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    cols = np.flatnonzero(body[zs].any(axis=(0, 1)))
    return (cols[0] + cols[-1]) / 2


def cut_field_midlines(mask: np.ndarray, body: np.ndarray, spacing_zyx, partner_ml: float = 20.0) -> tuple[float, ...]:
    """Where the field of view cuts the body at its right or left edge, where the patient's midline (and the
    trachea) may lie instead of the mask's middle, which is then one lung's (canonical x, none, one or two):

    - the gap between the lung that fills the view and the part of the other lung beside it (a component of
      its own, ``partner_ml`` or more, beyond the lung's x range);
    - with the body cut at one side only (half of the patient, or a field shifted to one side), that image
      border.

    Empty when the body is whole across."""
    if not mask.any():
        return ()
    cut = _cut_borders(body, mask, float(spacing_zyx[2]))
    if not cut.any():
        return ()
    out = []
    labels, n = label3d(mask)
    if n >= 2:
        sizes = per_label(labels, n)
        pair = _partner(labels, sizes, np.argsort(-sizes), float(np.prod(spacing_zyx)) / 1000.0, partner_ml)
        if pair is not None:
            out.append(pair[1])
    if not cut.all():
        out.append(0.0 if cut[0] else float(mask.shape[2] - 1))
    return tuple(out)


def lateral_side_votes(
    mask: np.ndarray, body: np.ndarray, pixel_mm: float, wall_mm: float = 60.0, max_slices: int = 40
) -> tuple[int, int]:
    """Rows of evidence that one lung's chest wall lies toward low x (the patient's right) or high x (left).

    On sampled slices, each row through the lung is followed from its outermost lung pixel outward: a
    chest wall is body tissue that ends in the air outside the patient within ``wall_mm``.  A row where
    that happens on one side only votes for that side (the mediastinum, on the other side, is wider, or
    cut off by the field of view); a row with a chest wall on both sides runs through both lungs.
    Returns (votes for low x, votes for high x, rows with a wall on both sides).
    """
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    zs = zs[:: max(1, -(-zs.size // max_slices))]
    reach = int(round(wall_mm / pixel_mm))
    low = high = both = 0
    for z in zs:
        rows = np.flatnonzero(mask[z].any(axis=1))
        m, b = mask[z][rows], body[z][rows]
        first = np.argmax(m, axis=1)
        last = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
        for r in range(rows.size):
            right_run = b[r, max(0, first[r] - reach) : first[r]][::-1]
            left_run = b[r, last[r] + 1 : last[r] + 1 + reach]
            # the wall ends in outside air inside the reach (not at the image border)
            low_wall = (
                right_run.size == reach and not right_run.all() or (right_run.size < reach and not right_run.all())
            )
            high_wall = left_run.size == reach and not left_run.all() or (left_run.size < reach and not left_run.all())
            if low_wall != high_wall:
                low += int(low_wall)
                high += int(high_wall)
            else:
                both += int(low_wall)
    return low, high, both


def concavity_side_votes(mask: np.ndarray, max_slices: int = 40) -> tuple[float, float]:
    """Evidence of which way one lung's medial side faces: the lung is convex toward its chest wall and
    hollow toward the mediastinum (the heart, the hilum).  On sampled slices of the upper two thirds of the
    lung (its base wraps around the liver or spleen, hollow on any side), the area between the lung's
    cross-section and its convex hull, times its offset from the cross-section's centre, is weighed on
    the side it lies on; hollows that weigh less than 2 % of the lung's area times its width count as
    none, and so do cross-sections hollow in their middle (two lungs with the heart between them).
    Returns (weight saying the chest wall is at low x, weight saying high x)."""
    import cv2

    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    zs = zs[zs >= zs[0] + (zs[-1] - zs[0]) / 3] if zs.size else zs
    zs = zs[:: max(1, -(-zs.size // max_slices))]
    low = high = lung = central = sided = 0.0
    for z in zs:
        plane = mask[z].view(np.uint8)
        hull = cv2.convexHull(cv2.findNonZero(plane))
        filled = np.zeros_like(plane)
        cv2.fillConvexPoly(filled, hull, 1)
        deficit = (filled > 0) & ~mask[z]
        area = float(np.count_nonzero(deficit))
        cols = np.flatnonzero(mask[z].any(axis=0))
        width = float(cols[-1] - cols[0] + 1)
        lung += float(np.count_nonzero(mask[z])) * width
        if area == 0:
            continue
        toward = np.nonzero(deficit)[1].mean() - np.nonzero(mask[z])[1].mean()
        if abs(toward) < 0.15 * width:  # hollow in the middle: the heart between two lungs, or no side
            central += area
            continue
        sided += area
        if toward > 0:  # hollow toward high x: the mediastinum is there, the chest wall at low x
            low += area * toward
        else:
            high -= area * toward
    if low + high < 0.02 * lung or central > sided:  # a few pixels of hollow tell nothing; a middle one, no side
        return 0.0, 0.0
    return low, high


def split_sides(
    mask: np.ndarray,
    big_fraction: float = 0.2,
    island_fraction: float = 0.0,
    body: np.ndarray | None = None,
    spacing_zyx=None,
    partner_ml: float = 20.0,
    erosion_mm: float = 5.0,
    core_mm2: float = 25.0,
    core_erosion_mm: float = 2.0,
) -> tuple[np.ndarray, str]:
    """Right and left lung labels of a binary canonical mask, and how the sides were decided.

    In canonical order the patient's right is low x, whatever part of the patient is in view, so the
    rules look for anatomy that tells the sides apart instead of the middle of the image or of the mask:

    1. two large 3D components (each at least ``big_fraction`` of the other): the lungs, by x;
    2. the largest component and another of ``partner_ml`` or more beyond its x range: a lung and the
       part of the other lung in view, the mediastinum between them;
    3. lungs that touch: eroded by ``erosion_mm`` in-plane they come apart, and the gap between them is
       the midline; an axial component holding eroded lung (cores of ``core_mm2`` or more, eroded
       ``core_erosion_mm`` more) on both sides of it is cut by the nearest core;
    4. one lung in view: with the body's right and left edges in view (the ``body`` mask), the body's
       midline; else the side its chest wall is on (:func:`lateral_side_votes`);
    5. otherwise undecided: the mask is labelled by the image's middle and the basis says so.

    Where a midline is known, each axial 2D component takes the side of its centroid and one that
    straddles it is cut at its thinnest column.  With ``island_fraction``, a 3D component of a side
    smaller than that fraction of the side's largest is dropped, unless the field of view (or the scan's
    range) cut it off along a border (or end slice) that lung reaches.  Returns (labels uint8, basis).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, np.uint8), SIDES_TWO_LUNGS
    spacing_zyx = tuple(float(s) for s in (spacing_zyx or (1.0, 1.0, 1.0)))
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    labels, n = label3d(mask)
    sizes = per_label(labels, n)
    order = np.argsort(-sizes)
    xs = per_label(labels, n, x_weighted=True) / np.maximum(sizes, 1)
    midline = None
    if n >= 2 and sizes[order[1]] >= big_fraction * sizes[order[0]]:
        midline, basis = (xs[order[0]] + xs[order[1]]) / 2, SIDES_TWO_LUNGS
    elif n >= 2 and (pair := _partner(labels, sizes, order, voxel_ml, partner_ml)) is not None:
        midline, basis = pair[1], SIDES_GAP
    if midline is not None:
        # Each component (the smaller leftovers too) takes the side of its centroid; right is low x.
        side = np.where(xs < midline, RIGHT_LUNG, LEFT_LUNG).astype(np.uint8)
        if island_fraction:  # whole components never touch, so a side's components are these very labels
            edges = _side_edges(labels, n)
            for s in (RIGHT_LUNG, LEFT_LUNG):
                on_side = side == s
                if on_side.any():
                    side[on_side & _islands(sizes, on_side, island_fraction, edges)] = 0
        return np.concatenate(([0], side)).astype(np.uint8)[labels], basis
    del labels  # the rules below need none of the components: their memory is free for the next
    out = np.zeros(mask.shape, np.uint8)
    midline, cores = _touching_lungs(mask, spacing_zyx, big_fraction, erosion_mm)
    basis = SIDES_GAP
    if midline is None and body is not None:
        if _body_whole_across(body, mask, spacing_zyx[2]):
            midline, basis = _body_midline(body, mask), SIDES_BODY
        else:
            low, high, both = lateral_side_votes(mask, body, spacing_zyx[2])
            if both >= max(10, low, high):  # chest wall to chest wall: both lungs, not parted above
                low = high = 0
            elif not (max(low, high) >= 10 and max(low, high) >= 3 * min(low, high)):  # the chest wall is cut too
                low, high = concavity_side_votes(mask)
                low, high = (low, high) if max(low, high) >= 2 * min(low, high) else (0, 0)
            if max(low, high) > 0:
                out[mask] = RIGHT_LUNG if low > high else LEFT_LUNG
                return _drop_islands(out, island_fraction), SIDES_LATERAL
    if midline is None:
        if body is None:  # no anatomy to go by: the mask's own middle
            midline, basis = midline_x(mask), SIDES_MASK
        else:
            midline, basis = mask.shape[2] / 2, SIDES_UNDECIDED
    min_px = int(np.ceil(core_mm2 / (spacing_zyx[1] * spacing_zyx[2])))
    core_kernel = disc(int(round(core_erosion_mm / min(spacing_zyx[1:]))))
    for index, comp in axial_components(mask):
        x0 = index[2].start
        target = out[index][0]
        if cores is not None and _nearest_core_sides(
            target, comp, cores[index][0] & comp, midline - x0, min_px, core_kernel
        ):
            continue
        frac_right = float(np.mean(np.nonzero(comp)[1] + x0 < midline))
        if 0.2 < frac_right < 0.8 and comp.sum() > 50:
            r, left_part = _split_component_2d(comp, midline - x0)
            target[r] = RIGHT_LUNG
            target[left_part] = LEFT_LUNG
        else:
            target[comp] = RIGHT_LUNG if frac_right >= 0.5 else LEFT_LUNG
    return _drop_islands(out, island_fraction), basis


def _side_edges(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, 6) bool: whether each component reaches each face of the volume (its first and last slice, the
    image's anterior and posterior, right and left borders): where the field of view or the scan's range
    cuts it."""
    edges = np.zeros((n, 6), bool)
    faces = (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1])
    for c, face in enumerate(faces):
        ids = np.unique(face)
        edges[ids[ids > 0] - 1, c] = True
    return edges


def _islands(sizes: np.ndarray, on_side: np.ndarray, island_fraction: float, edges: np.ndarray) -> np.ndarray:
    """Which components of one side (``on_side``) are stray islands: smaller than ``island_fraction`` of the
    side's largest, unless open to a face of the volume the largest also reaches (a lung the field of view
    or the scan's range cuts comes apart into pieces along that face: they are the lung, not islands)."""
    largest = int(np.argmax(np.where(on_side, sizes, -1)))
    small = on_side & (sizes < island_fraction * sizes[largest])
    return small & ~(edges & edges[largest]).any(axis=1)


def _drop_islands(out: np.ndarray, island_fraction: float) -> np.ndarray:
    """Drop each side's stray islands (see :func:`_islands`), in place."""
    if island_fraction:
        for side in (RIGHT_LUNG, LEFT_LUNG):
            part = out == side
            if not part.any():
                continue
            lab, k = label3d(part)
            if k > 1:
                counts = per_label(lab, k)
                drop = _islands(counts, np.ones(k, bool), island_fraction, _side_edges(lab, k))
                out[select_components(lab, k, np.flatnonzero(drop) + 1)] = 0
    return out


def _nearest_core_sides(
    target: np.ndarray, comp: np.ndarray, core: np.ndarray, midline: float, min_px: int, kernel: np.ndarray
) -> bool:
    """A 2D component holding cores on both sides of the midline is two lungs joined: each pixel takes the
    side of its nearest core, so a part of one lung joined to the other (in front of the heart) keeps its
    side even as a small share of the component.  ``core``: the component's eroded pixels, eroded again
    with ``kernel`` (so a wider junction parts too); each 2D core of ``min_px`` pixels or more takes the
    side of its centroid (``midline`` in the component's columns).
    Labels ``target`` in place; False (nothing done) when the cores lie on one side only."""
    import cv2

    core = cv2.erode(core.view(np.uint8), kernel)
    _, cores, stats, centroids = cv2.connectedComponentsWithStats(core, connectivity=8)
    side = np.where(centroids[:, 0] < midline, RIGHT_LUNG, LEFT_LUNG).astype(np.uint8)
    side[stats[:, cv2.CC_STAT_AREA] < min_px] = 0
    side[0] = 0  # background
    if not ((side == RIGHT_LUNG).any() and (side == LEFT_LUNG).any()):
        return False
    seeds = side[cores]
    iy, ix = ndimage.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    target[comp] = seeds[iy, ix][comp]
    return True


def _touching_lungs(
    mask: np.ndarray, spacing_zyx, big_fraction: float, erosion_mm: float, core_ml: float = 2.0
) -> tuple[float | None, np.ndarray | None]:
    """Two lungs that touch: eroded in-plane by ``erosion_mm`` they fall apart into two large components (or
    one and a part of the other beyond its x range).  Returns the midline between them and the cores (the
    eroded components of ``core_ml`` or more), or (None, None) when they do not fall apart."""
    import cv2

    radius = max(1, int(round(erosion_mm / min(spacing_zyx[1:]))))
    kernel = disc(radius)
    eroded = np.empty_like(mask)
    for z in range(mask.shape[0]):
        eroded[z] = cv2.erode(mask[z].view(np.uint8), kernel) > 0 if mask[z].any() else False
    labels, n = label3d(eroded)
    del eroded
    if n < 2:
        return None, None
    sizes = per_label(labels, n)
    order = np.argsort(-sizes)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    if sizes[order[1]] >= big_fraction * sizes[order[0]]:
        boxes = ndimage.find_objects(labels)
        a, b = (int(k) + 1 for k in order[:2])
        (a_lo, a_hi, a_mean), (b_lo, b_hi, b_mean) = (
            x_extent(labels, a, boxes[a - 1]),
            x_extent(labels, b, boxes[b - 1]),
        )
        midline = (a_hi + b_lo) / 2 if a_mean < b_mean else (b_hi + a_lo) / 2
    else:
        pair = _partner(labels, sizes, order, voxel_ml, 20.0)
        if pair is None:
            return None, None
        midline = pair[1]
    return midline, np.concatenate(([False], sizes * voxel_ml >= core_ml))[labels]
