"""3D post-processing of a canonical ``[z, y, x]`` lung mask and the right/left split.

In canonical order x runs from the patient's right to the patient's left
(see :mod:`geometry`), so "right lung" is decided in patient coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .body import body_mask, bounding_box, fill_holes_axial, outer_shell, shell_margin

__all__ = [
    "RIGHT_LUNG",
    "LEFT_LUNG",
    "body_mask",
    "clean_lung_mask",
    "select_lungs",
    "grow_into_aerated_lung",
    "SelectionReport",
    "remove_central_airways",
    "split_right_left",
    "split_sides",
    "postprocess",
    "postprocess_with_report",
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


def _components_mask(labels: np.ndarray, comps) -> np.ndarray:
    """Boolean volume of the given components, each compared within its own box (no lookup over the volume)."""
    out = np.zeros(labels.shape, bool)
    for c in comps:
        out[c.box] |= labels[c.box] == c.label
    return out


def _axial_components(mask: np.ndarray):
    """Yield ``(index, component)`` for every 2D component of every axial slice.

    ``index`` is a tuple of slices that places the component's box in the full
    volume (one slice thick); ``component`` is its (h, w) boolean mask.  All
    slices are labelled in one call, inside the mask's bounding box.
    """
    box = bounding_box(mask, margin=0)
    labels, _ = ndimage.label(mask[box], structure=_AXIAL4)
    for i, obj in enumerate(ndimage.find_objects(labels), start=1):
        if obj is not None:
            index = tuple(slice(o.start + (b.start or 0), o.stop + (b.start or 0)) for o, b in zip(obj, box))
            yield index, labels[obj][0] == i


def _midline_x(mask: np.ndarray) -> float:
    """Mean x (canonical column) of the True voxels."""
    profile = mask.sum(axis=(0, 1), dtype=np.int64)
    return float((profile * np.arange(profile.size)).sum() / profile.sum())


@dataclass
class Component:
    """One 3D component of the network's lung mask and what the rules found about it."""

    label: int
    box: tuple[slice, slice, slice]
    voxels: int
    ml: float
    top: int  # most superior canonical slice
    bottom: int
    inside_body: float = 1.0  # fraction of voxels inside the body
    at_surface: float = 0.0  # fraction of voxels in the body's outer shell
    lateral_mm: float = 0.0  # farthest distance from the body's midline (x), mm
    side: float = 0.5  # fraction of voxels on the patient's right of the midline
    covered_from_above: float = 0.0  # fraction of its footprint with other lung candidates above it
    reason: str = ""  # why it was removed ("" = kept)


@dataclass
class SelectionReport:
    """What :func:`select_lungs` kept and removed (for the QC verdict)."""

    components: list[Component] = field(default_factory=list)
    side_basis: str = ""  # how right and left were told apart (postprocess.SIDES_*)

    def removed(self, reason: str | None = None) -> list[Component]:
        return [c for c in self.components if c.reason and (reason is None or c.reason == reason)]

    def removed_ml(self, reason: str | None = None) -> float:
        return float(sum(c.ml for c in self.removed(reason)))


#: Reasons a component of the network's mask is not lung (values of ``Component.reason``).
OUTSIDE_BODY = "outside the body"
AT_SURFACE = "at the body's surface"
BELOW_LUNG = "below the diaphragm"
FAR = "far from the lungs"
TOO_SMALL = "too small"
AT_IMAGE_EDGE = "at the image's edge"  # far from the lungs and open to the field of view's border


def _component_stats(labels, n, spacing_zyx, body, shell, midline: float | None) -> list[Component]:
    sz, sy, sx = (float(s) for s in spacing_zyx)
    voxel_ml = sz * sy * sx / 1000.0
    sizes = _per_label(labels, n)
    inside = _per_label(labels, n, where=body) if body is not None else sizes
    surface = _per_label(labels, n, where=shell) if shell is not None else np.zeros(n)
    if midline is None:
        midline = float(_per_label(labels, n, x_weighted=True).sum() / max(sizes.sum(), 1))
    out = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        sub = labels[box] == i
        cols = np.flatnonzero(sub.any(axis=(0, 1))) + box[2].start
        right = float(np.count_nonzero(sub[:, :, : max(0, int(np.ceil(midline)) - box[2].start)]))
        out.append(
            Component(
                label=i,
                box=box,
                voxels=int(sizes[i - 1]),
                ml=float(sizes[i - 1]) * voxel_ml,
                top=box[0].stop - 1,
                bottom=box[0].start,
                inside_body=float(inside[i - 1] / sizes[i - 1]),
                at_surface=float(surface[i - 1] / sizes[i - 1]),
                lateral_mm=float(max(abs(cols[0] - midline), abs(cols[-1] - midline)) * sx),
                side=right / sizes[i - 1],
            )
        )
    return out


def _covered_from_above(labels: np.ndarray, candidates: list[Component]) -> None:
    """For each candidate: the fraction of its footprint (y, x) where another candidate lies higher."""
    lut = np.zeros(labels.max() + 1, bool)
    lut[[c.label for c in candidates]] = True
    n_z = labels.shape[0]
    highest = np.full(labels.shape[1:], -1, np.int32)  # most superior candidate voxel of each column
    for z in range(n_z):
        highest[lut[labels[z]]] = z
    for c in candidates:
        sub = labels[c.box] == c.label
        footprint = sub.any(axis=0)
        top = c.box[0].start + (sub.shape[0] - 1 - np.argmax(sub[::-1], axis=0))
        above = highest[c.box[1:]] > top
        c.covered_from_above = float(np.count_nonzero(above & footprint) / max(1, np.count_nonzero(footprint)))


def _near(labels: np.ndarray, comp: Component, seeds: np.ndarray, spacing_zyx, distance_mm: float) -> bool:
    """Whether a voxel of ``comp`` lies within ``distance_mm`` of a ``seeds`` voxel."""
    pad = [int(np.ceil(distance_mm / float(s))) + 1 for s in spacing_zyx]
    box = tuple(slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(comp.box, pad, labels.shape))
    local_seeds = seeds[box]
    if not local_seeds.any():
        return False
    distance = ndimage.distance_transform_edt(~local_seeds, sampling=spacing_zyx)
    return bool((distance[labels[box] == comp.label] <= distance_mm).any())


def _caps(
    labels: np.ndarray, comp: Component, lung: Component, lung_footprint: np.ndarray, sz: float, gap_mm: float
) -> bool:
    """Whether ``comp`` lies above ``lung`` (within ``gap_mm``), at least half of its footprint over the lung's."""
    if comp.bottom <= lung.top or (comp.bottom - lung.top) * sz > gap_mm:
        return False
    footprint = (labels[comp.box] == comp.label).any(axis=0)
    over = np.zeros(labels.shape[1:], bool)
    over[lung.box[1:]] = lung_footprint
    return np.count_nonzero(footprint & over[comp.box[1:]]) >= 0.5 * np.count_nonzero(footprint)


def select_lungs(
    mask: np.ndarray,
    spacing_zyx,
    body: np.ndarray | None = None,
    min_ml: float = 1.0,
    seed_fraction: float = 0.02,
    seed_window_mm: float = 30.0,
    lateral_mm: float = 25.0,
    near_mm: float = 10.0,
    other_lung_window_mm: float = 100.0,
    apex_gap_mm: float = 30.0,
    partner_ml: float = 20.0,
) -> tuple[np.ndarray, SelectionReport]:
    """Keep the components of a canonical lung mask that belong to the two lungs.

    No component is kept for its size alone.  With the ``body`` mask, a
    component is removed when it lies mostly outside the body (air in a cushion
    or under a blanket) or mostly in the body's outer 4 mm (skin folds).  A
    component is removed as gas below the diaphragm when, over half of its
    footprint, other candidates lie above it and together outweigh it (stomach
    and colon gas under the lung bases).  The lungs are then found: the largest
    candidates lying away from the midline (``lateral_mm``) whose top is within
    ``seed_window_mm`` of the most superior such candidate (so that on a scan of
    the abdomen the lung bases, not bowel gas, are the lungs), one per side unless
    one component spans both.  Every other component must lie within
    ``near_mm`` of them, or sit on top of one of them (its lowest slice within
    ``apex_gap_mm`` above the lung's top, at least half of its footprint over the
    lung's: an apex that a tumour or missed slices cut off from the rest of the
    lung).  With one lung found, a candidate of ``partner_ml`` or more beyond its
    x range is the other lung (the part of it a cut field of view leaves).
    Returns the kept voxels (not hole-filled) and a report.
    """
    full = np.asarray(mask, dtype=bool)
    report = SelectionReport()
    if not full.any():
        return full.copy(), report
    # Work inside the candidates' box (with room for the 4 mm surface band): labelling is the cost.
    crop = bounding_box(full, margin=shell_margin(spacing_zyx))
    mask = full[crop]
    midline = None
    if body is not None:
        midline = (_midline_x(body) if body.any() else mask.shape[2] / 2) - (crop[2].start or 0)
        body = body[crop]
    labels, n = ndimage.label(mask, structure=_CONN6)
    shell = outer_shell(body, spacing_zyx) if body is not None else None
    comps = _component_stats(labels, n, spacing_zyx, body, shell, midline)
    del shell
    report.components = comps
    sz = float(spacing_zyx[0])
    speck = min(min_ml, 0.005 * max(c.ml for c in comps))  # relative, so thin slabs keep their lungs
    for c in comps:
        if c.ml < speck:
            c.reason = TOO_SMALL
        elif c.inside_body < 0.5:
            c.reason = OUTSIDE_BODY
        elif c.at_surface > 0.3:
            c.reason = AT_SURFACE
    live = [c for c in comps if not c.reason]
    _covered_from_above(labels, live)
    for c in live:
        higher = sum(o.ml for o in live if o is not c and o.top > c.top)
        if c.covered_from_above >= 0.5 and higher > c.ml:
            c.reason = BELOW_LUNG
    live = [c for c in live if not c.reason]
    lateral = [c for c in live if c.lateral_mm >= lateral_mm]
    seeds: list[Component] = []
    if lateral:
        floor = seed_fraction * max(c.ml for c in lateral)
        eligible = [c for c in lateral if c.ml >= floor]
        highest = max(c.top for c in eligible)
        window = [c for c in eligible if (highest - c.top) * sz <= seed_window_mm]
        first = max(window, key=lambda c: c.ml)
        seeds.append(first)
        if not 0.2 < first.side < 0.8:  # else one component holds both lungs
            other_side = [c for c in eligible if (c.side >= 0.5) != (first.side >= 0.5)]
            # The other lung: within the window if it is there; else its apex may be lower (e.g. after
            # an upper lobectomy), but not by more than a lung's height.
            reach = [c for c in other_side if (highest - c.top) * sz <= other_lung_window_mm]
            others = [c for c in other_side if c in window] or reach
            if others:
                second = max(others, key=lambda c: c.ml)
                # An apex cut off by a tumour is in the window while the rest of its lung lies lower: the
                # larger part under it is the lung (the apex is kept later for capping it).
                lower = max(reach, key=lambda c: c.ml, default=second)
                if lower.ml > second.ml:
                    lower_footprint = (labels[lower.box] == lower.label).any(axis=0)
                    if _caps(labels, second, lower, lower_footprint, sz, apex_gap_mm):
                        second = lower
                seeds.append(second)
        if len(seeds) == 1:
            # The other lung may be a part the field of view cuts (a Crop Volume ROI around one lung): a
            # candidate of partner_ml or more lying beyond the lung's x range, whatever the visible body's middle.
            f_lo, f_hi, _ = _x_extent(labels, first.label, first.box)
            beyond = []
            for c in live:
                if c is first or c.ml < partner_ml or (highest - c.top) * sz > other_lung_window_mm:
                    continue
                c_lo, c_hi, _ = _x_extent(labels, c.label, c.box)
                if max(0.0, min(f_hi, c_hi) - max(f_lo, c_lo)) <= 0.25 * (c_hi - c_lo + 1):
                    beyond.append(c)
            if beyond:
                seeds.append(max(beyond, key=lambda c: c.ml))
    seed_mask = _components_mask(labels, seeds)
    footprints = {s.label: (labels[s.box] == s.label).any(axis=0) for s in seeds}
    for c in live:
        if c in seeds or _near(labels, c, seed_mask, spacing_zyx, near_mm):
            continue
        if c.lateral_mm >= lateral_mm and any(_caps(labels, c, s, footprints[s.label], sz, apex_gap_mm) for s in seeds):
            continue  # an apex cut off from its lung (by a tumour, or slices the network missed)
        c.reason = FAR
    dropped = [c for c in comps if c.reason]
    kept = np.zeros(full.shape, bool)
    if len(dropped) < len(comps):
        # The candidates less the dropped components, cleared box by box: usually specks and gas pockets,
        # far smaller than the volume a lookup over every label would read.
        if sum(np.prod([b.stop - b.start for b in c.box]) for c in dropped) < labels.size:
            sub = mask.copy()
            for c in dropped:
                sub[c.box] &= labels[c.box] != c.label
            kept[crop] = sub
        else:
            kept[crop] = _select(labels, n, [c.label for c in comps if not c.reason])
    for c in comps:  # report in the volume's own slice numbers
        c.box = tuple(slice(b.start + (o.start or 0), b.stop + (o.start or 0)) for b, o in zip(c.box, crop))
        c.top, c.bottom = c.top + (crop[0].start or 0), c.bottom + (crop[0].start or 0)
        # Away from the lungs and within 10 mm of the image border: cushions or the air around a patient
        # in a tight field of view, which the body mask cannot tell from a lung the field cuts.
        _, ys, xs = c.box
        edge_y, edge_x = (int(np.ceil(10.0 / float(s))) for s in spacing_zyx[1:])
        if c.reason == FAR and (
            ys.start < edge_y
            or xs.start < edge_x
            or ys.stop > full.shape[1] - edge_y
            or xs.stop > full.shape[2] - edge_x
        ):
            c.reason = AT_IMAGE_EDGE
    return kept, report


def grow_into_aerated_lung(
    lungs: np.ndarray,
    hu: np.ndarray,
    body: np.ndarray,
    spacing_zyx,
    exclude: np.ndarray | None = None,
    air_hu: float = -400.0,
    distance_mm: float = 10.0,
) -> np.ndarray:
    """Grow a canonical lung mask into the aerated voxels next to it, up to ``distance_mm``.

    A 2D network at about 2 mm per pixel misses the thin crescents of lung in
    the costophrenic recesses and under-reaches the lung's edge; those voxels
    are air (below ``air_hu``) touching the lung.  The growth follows air inside
    the body only, never into ``exclude`` (components post-processing removed,
    such as stomach gas), in steps of one pixel in-plane; the slices within
    ``distance_mm`` are reached in steps spread among them.  Returns a new array.
    """
    import cv2

    lungs = np.asarray(lungs, dtype=bool)
    if not lungs.any():
        return lungs.copy()
    sz, sy, sx = (float(s) for s in spacing_zyx)
    steps = max(1, int(round(distance_mm / min(sy, sx))))  # in-plane pixels
    z_steps = int(distance_mm // sz)  # whole slices within the distance, spread over the steps
    z_at = {max(1, int(round(k * steps / z_steps))) for k in range(1, z_steps + 1)} if z_steps else set()
    box = bounding_box(lungs, margin=steps + 1)
    box = (slice(max(0, box[0].start - z_steps), min(lungs.shape[0], box[0].stop + z_steps)), *box[1:])
    current = lungs[box].copy()
    allowed = (np.asarray(hu[box]) < air_hu) & body[box]
    if exclude is not None:
        allowed &= ~exclude[box]
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    for step in range(1, steps + 1):
        grown = np.empty_like(current)
        for z in range(current.shape[0]):
            grown[z] = cv2.dilate(current[z].view(np.uint8), cross) > 0
        if step in z_at:
            grown[1:] |= current[:-1]
            grown[:-1] |= current[1:]
        current |= grown & allowed
    out = lungs.copy()
    out[box] = current
    return out


def clean_lung_mask(mask: np.ndarray, spacing_zyx, body: np.ndarray | None = None) -> np.ndarray:
    """The lungs' components of a canonical mask (see :func:`select_lungs`), holes filled per slice."""
    return fill_holes_axial(select_lungs(mask, spacing_zyx, body)[0])


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


def _x_extent(labels: np.ndarray, comp: int, box) -> tuple[float, float, float]:
    """2nd and 98th percentile and mean of a component's x (canonical columns)."""
    xs = np.nonzero(labels[box] == comp)[2] + (box[2].start or 0)
    lo, hi = np.percentile(xs, (2, 98))
    return float(lo), float(hi), float(xs.mean())


def _partner(labels: np.ndarray, sizes: np.ndarray, order: np.ndarray, voxel_ml: float, min_ml: float):
    """The other lung beside the largest component: the largest other component of ``min_ml`` or more whose x
    range lies beyond the largest one's (the mediastinum between them).  Returns (ids, midline) or None."""
    boxes = ndimage.find_objects(labels)
    a = int(order[0]) + 1
    a_lo, a_hi, _ = _x_extent(labels, a, boxes[a - 1])
    for k in order[1:6]:
        if sizes[k] * voxel_ml < min_ml:
            break
        b = int(k) + 1
        b_lo, b_hi, _ = _x_extent(labels, b, boxes[b - 1])
        overlap = max(0.0, min(a_hi, b_hi) - max(a_lo, b_lo))
        if overlap <= 0.25 * (b_hi - b_lo + 1):
            return (a, b), ((a_hi + b_lo) / 2 if b_lo > a_lo else (b_hi + a_lo) / 2)
    return None


def _body_whole_across(body: np.ndarray, mask: np.ndarray, pixel_mm: float, contact_mm: float = 20.0) -> bool:
    """Whether the body's right and left edges are in view on the slices that hold lung: it does not
    reach the right or left image border over ``contact_mm`` or more on any of them."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return True
    edges = np.count_nonzero(body[zs][:, :, [0, -1]], axis=1)  # (slices, 2) pixels on each side border
    return bool((edges * pixel_mm < contact_mm).all())


def _body_midline(body: np.ndarray, mask: np.ndarray) -> float:
    """x halfway between the body's right and left edges, over the slices that hold lung."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    cols = np.flatnonzero(body[zs].any(axis=(0, 1)))
    return (cols[0] + cols[-1]) / 2


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
) -> tuple[np.ndarray, str]:
    """Right and left lung labels of a binary canonical mask, and how the sides were decided.

    In canonical order the patient's right is low x, whatever part of the patient is in view, so the
    rules look for anatomy that tells the sides apart instead of the middle of the image or of the mask:

    1. two large 3D components (each at least ``big_fraction`` of the other): the lungs, by x;
    2. the largest component and another of ``partner_ml`` or more beyond its x range: a lung and the
       part of the other lung in view, the mediastinum between them;
    3. lungs that touch: eroded by ``erosion_mm`` in-plane they come apart, and the gap between them is
       the midline;
    4. one lung in view: with the body's right and left edges in view (the ``body`` mask), the body's
       midline; else the side its chest wall is on (:func:`lateral_side_votes`);
    5. otherwise undecided: the mask is labelled by the image's middle and the basis says so.

    Where a midline is known, each axial 2D component takes the side of its centroid and one that
    straddles it is cut at its thinnest column.  With ``island_fraction``, a 3D component of a side
    smaller than that fraction of the side's largest is dropped.  Returns (labels uint8, basis).
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return out, SIDES_TWO_LUNGS
    spacing_zyx = tuple(float(s) for s in (spacing_zyx or (1.0, 1.0, 1.0)))
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    labels, n = ndimage.label(mask, structure=_CONN6)
    sizes = _per_label(labels, n)
    order = np.argsort(-sizes)
    xs = _per_label(labels, n, x_weighted=True) / np.maximum(sizes, 1)
    midline = None
    if n >= 2 and sizes[order[1]] >= big_fraction * sizes[order[0]]:
        midline, basis = (xs[order[0]] + xs[order[1]]) / 2, SIDES_TWO_LUNGS
    elif n >= 2 and (pair := _partner(labels, sizes, order, voxel_ml, partner_ml)) is not None:
        midline, basis = pair[1], SIDES_GAP
    if midline is not None:
        # Each component (the smaller leftovers too) takes the side of its centroid; right is low x.
        side = np.where(xs < midline, RIGHT_LUNG, LEFT_LUNG).astype(np.uint8)
        if island_fraction:  # whole components never touch, so a side's components are these very labels
            for s in (RIGHT_LUNG, LEFT_LUNG):
                on_side = side == s
                if on_side.any():
                    side[on_side & (sizes < island_fraction * sizes[on_side].max())] = 0
        return np.concatenate(([0], side)).astype(np.uint8)[labels], basis
    midline, basis = _touching_lungs_midline(mask, spacing_zyx, big_fraction, erosion_mm), SIDES_GAP
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
            midline, basis = _midline_x(mask), SIDES_MASK
        else:
            midline, basis = mask.shape[2] / 2, SIDES_UNDECIDED
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
    return _drop_islands(out, island_fraction), basis


def _drop_islands(out: np.ndarray, island_fraction: float) -> np.ndarray:
    """Drop each side's 3D components smaller than ``island_fraction`` of that side's largest (in place)."""
    if island_fraction:
        for side in (RIGHT_LUNG, LEFT_LUNG):
            part = out == side
            if not part.any():
                continue
            lab, k = ndimage.label(part, structure=_CONN6)
            if k > 1:
                counts = _per_label(lab, k)
                out[_select(lab, k, np.flatnonzero(counts < island_fraction * counts.max()) + 1)] = 0
    return out


def _touching_lungs_midline(mask: np.ndarray, spacing_zyx, big_fraction: float, erosion_mm: float) -> float | None:
    """Midline between two lungs that touch: eroded in-plane they fall apart into two large components
    (or one and a part of the other beyond its x range); None when they do not."""
    import cv2

    from .body import _disc

    radius = max(1, int(round(erosion_mm / min(spacing_zyx[1:]))))
    kernel = _disc(radius)
    eroded = np.empty_like(mask)
    for z in range(mask.shape[0]):
        eroded[z] = cv2.erode(mask[z].view(np.uint8), kernel) > 0 if mask[z].any() else False
    labels, n = ndimage.label(eroded, structure=_CONN6)
    if n < 2:
        return None
    sizes = _per_label(labels, n)
    order = np.argsort(-sizes)
    if sizes[order[1]] >= big_fraction * sizes[order[0]]:
        boxes = ndimage.find_objects(labels)
        a, b = (int(k) + 1 for k in order[:2])
        (a_lo, a_hi, a_mean), (b_lo, b_hi, b_mean) = (
            _x_extent(labels, a, boxes[a - 1]),
            _x_extent(labels, b, boxes[b - 1]),
        )
        return (a_hi + b_lo) / 2 if a_mean < b_mean else (b_hi + a_lo) / 2
    pair = _partner(labels, sizes, order, float(np.prod(spacing_zyx)) / 1000.0, 20.0)
    return None if pair is None else pair[1]


def remove_central_airways(
    mask: np.ndarray, spacing_zyx, max_area_mm2: float = 600.0, max_offset_mm: float = 25.0
) -> np.ndarray:
    """Drop trachea and main-bronchus cross-sections: small, compact 2D components near the midline.

    On each axial slice, a component smaller than ``max_area_mm2`` whose centroid
    lies within ``max_offset_mm`` of the midline (the mean x of the whole lung
    mask) and that fills at least half of its bounding box is airway, not lung.
    Lung apices are lateral, so they are kept.  Returns a new array.
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    out = mask.copy()
    if not mask.any():
        return out
    _, sy, sx = (float(s) for s in spacing_zyx)
    midline = _midline_x(mask)
    zs, ys, xs = bounding_box(mask, margin=0)
    # One 4-connected labelling per slice with its stats (area, box, centroid): no Python loop over components.
    for z in range(zs.start, zs.stop):
        plane = mask[z, ys, xs]
        n, labels, stats, centroids = cv2.connectedComponentsWithStats(plane.view(np.uint8), connectivity=4)
        if n <= 1:
            continue
        area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
        box = stats[:, cv2.CC_STAT_WIDTH].astype(np.float64) * stats[:, cv2.CC_STAT_HEIGHT]
        offset = (centroids[:, 0] + xs.start - midline) * sx
        airway = (area * sy * sx < max_area_mm2) & (np.abs(offset) <= max_offset_mm) & (area >= 0.5 * box)
        airway[0] = False  # background
        if airway.any():
            out[z, ys, xs][airway[labels]] = False
    return out


def postprocess(
    prob: np.ndarray,
    spacing_zyx,
    threshold: float = 0.5,
    hu: np.ndarray | None = None,
    body: np.ndarray | None = None,
) -> np.ndarray:
    """Canonical probability volume -> uint8 labels (0 background, 1 right, 2 left).

    ``hu``, the canonical CT itself, or its ``body`` mask lets the body rules of
    :func:`select_lungs` apply.
    """
    return postprocess_with_report(prob, spacing_zyx, threshold, hu, body)[0]


def postprocess_with_report(
    prob: np.ndarray,
    spacing_zyx,
    threshold: float = 0.5,
    hu: np.ndarray | None = None,
    body: np.ndarray | None = None,
) -> tuple[np.ndarray, SelectionReport]:
    """:func:`postprocess`, and the report of which components were removed and why.

    With ``hu``, the kept lungs are grown into the aerated voxels next to them
    (:func:`grow_into_aerated_lung`), and trachea cross-sections are removed again.
    """
    if body is None and hu is not None:
        body = body_mask(hu, spacing_zyx)
    candidates = remove_central_airways(prob > threshold, spacing_zyx)
    kept, report = select_lungs(candidates, spacing_zyx, body)
    if hu is not None and kept.any():
        kept = grow_into_aerated_lung(kept, hu, body, spacing_zyx, exclude=candidates & ~kept)
        kept = remove_central_airways(kept, spacing_zyx)
    del candidates
    labels = np.zeros(kept.shape, np.uint8)
    if not kept.any():
        return labels, report
    # The lungs' slices, whole: the sides' rules look at the body's edges and chest wall around the lungs.
    box = (bounding_box(kept, margin=1)[0], slice(None), slice(None))
    # Each side: drop stray islands (under 5 % of that side's largest part).
    labels[box], report.side_basis = split_sides(
        fill_holes_axial(kept[box]),
        island_fraction=0.05,
        body=None if body is None else body[box],
        spacing_zyx=spacing_zyx,
    )
    return labels, report
