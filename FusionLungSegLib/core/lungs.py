"""Which components of a canonical ``[z, y, x]`` lung candidate mask are the lungs: the removal rules
(outside the body, at its surface, below the lungs, far from them), the selection of one lung per side,
and the growth of the kept lungs into the aerated lung next to them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .body import outer_shell, shell_margin
from .components import components_mask, midline_x, per_label, select_components, x_extent
from .masks import CROSS, bounding_box, fill_holes_axial, label3d


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
    #: the airways post-processing removed (trachea, bronchi and their lumen): (box, mask inside it) or None
    airway: tuple[tuple[slice, ...], np.ndarray] | None = None

    def airway_mask(self, shape) -> np.ndarray | None:
        """The removed airways as a bool array of ``shape`` (the canonical volume's), or None."""
        if self.airway is None:
            return None
        out = np.zeros(shape, bool)
        out[self.airway[0]] = self.airway[1]
        return out

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
    sizes = per_label(labels, n)
    inside = per_label(labels, n, where=body) if body is not None else sizes
    surface = per_label(labels, n, where=shell) if shell is not None else np.zeros(n)
    if midline is None:
        midline = float(per_label(labels, n, x_weighted=True).sum() / max(sizes.sum(), 1))
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
    hu: np.ndarray | None = None,
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
    x range is the other lung (the part of it a cut field of view leaves).  With the
    CT (``hu``), the other pieces that a field of view cut off from a lung reaching the
    image's right or left edge are kept too: inside the body, on that edge (not in a
    corner) within the lung's x range, and aerated lung (median in (-950, -750] HU, not gas).
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
        midline = (midline_x(body) if body.any() else mask.shape[2] / 2) - (crop[2].start or 0)
        body = body[crop]
    labels, n = label3d(mask)
    shell = outer_shell(body, spacing_zyx) if body is not None else None
    comps = _component_stats(labels, n, spacing_zyx, body, shell, midline)
    del shell
    report.components = comps
    sz = float(spacing_zyx[0])
    live = _reject_non_lung(labels, comps, min_ml)
    lateral = [c for c in live if c.lateral_mm >= lateral_mm]
    seeds = (
        _lung_seeds(
            labels, live, lateral, sz, seed_fraction, seed_window_mm, other_lung_window_mm, apex_gap_mm, partner_ml
        )
        if lateral
        else []
    )
    seed_mask = components_mask(labels, seeds)
    footprints = {s.label: (labels[s.box] == s.label).any(axis=0) for s in seeds}
    for c in live:
        if c in seeds or _near(labels, c, seed_mask, spacing_zyx, near_mm):
            continue
        if c.lateral_mm >= lateral_mm and any(_caps(labels, c, s, footprints[s.label], sz, apex_gap_mm) for s in seeds):
            continue  # an apex cut off from its lung (by a tumour, or slices the network missed)
        c.reason = FAR
    if hu is not None and len(seeds) == 2:
        # the image's edges in the labels' rows and columns
        y_edges = (-(crop[1].start or 0), full.shape[1] - (crop[1].start or 0))
        edges = (-(crop[2].start or 0), full.shape[2] - (crop[2].start or 0))
        near_px = (int(np.ceil(3.0 / float(spacing_zyx[1]))), int(np.ceil(3.0 / float(spacing_zyx[2]))))
        _keep_pieces_cut_off(labels, comps, seeds, hu[crop], edges, y_edges, near_px)
    kept = np.zeros(full.shape, bool)
    kept[crop] = _kept_voxels(mask, labels, n, comps)
    _in_volume_coordinates(comps, crop, full.shape, spacing_zyx)
    return kept, report


def _keep_pieces_cut_off(labels, comps: list[Component], seeds: list[Component], hu, edges, y_edges, near_px) -> None:
    """Keep the pieces of a lung that a field of view cut at the image's right or left edge (at columns
    ``edges`` of ``labels``; its anterior and posterior edges at rows ``y_edges``; "at" an edge: within
    ``near_px`` (y, x) pixels of it): removed as far from the lungs or below them, yet inside the body, on
    the side edge that lung reaches (not in a corner), within its x range, and aerated lung (median in
    (-950, -750] HU; see :func:`select_lungs`)."""

    def at(box: slice, lines, near: int) -> set[int]:
        return {e for e in lines if min(abs(box.start - e), abs(box.stop - e)) <= near}

    def edge_of(c: Component) -> set[int]:
        return at(c.box[2], edges, near_px[1])

    for lung in seeds:
        for c in comps:
            if c.reason not in (FAR, BELOW_LUNG) or c.inside_body < 0.5 or not (edge_of(c) & edge_of(lung)):
                continue
            if min(lung.box[2].stop, c.box[2].stop) <= max(lung.box[2].start, c.box[2].start):
                continue  # not beside that lung
            if at(c.box[1], y_edges, near_px[0]):
                continue  # in a corner too: air around the body (under a blanket), not a lung's piece
            if -950.0 < float(np.median(hu[c.box][labels[c.box] == c.label])) <= -750.0:
                c.reason = ""


def _reject_non_lung(labels: np.ndarray, comps: list[Component], min_ml: float) -> list[Component]:
    """Give a reason to the components that are not lung by themselves (specks, outside the body, at its
    surface, gas below other candidates); the others."""
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
    return [c for c in live if not c.reason]


def _lung_seeds(
    labels, live, lateral, sz, seed_fraction, seed_window_mm, other_lung_window_mm, apex_gap_mm, partner_ml
) -> list[Component]:
    """The lungs among the lateral candidates (see :func:`select_lungs`): one or two components."""
    floor = seed_fraction * max(c.ml for c in lateral)
    eligible = [c for c in lateral if c.ml >= floor]
    highest = max(c.top for c in eligible)
    window = [c for c in eligible if (highest - c.top) * sz <= seed_window_mm]
    first = max(window, key=lambda c: c.ml)
    seeds = [first]
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
        f_lo, f_hi, _ = x_extent(labels, first.label, first.box)
        beyond = []
        for c in live:
            if c is first or c.ml < partner_ml or (highest - c.top) * sz > other_lung_window_mm:
                continue
            c_lo, c_hi, _ = x_extent(labels, c.label, c.box)
            if max(0.0, min(f_hi, c_hi) - max(f_lo, c_lo)) <= 0.25 * (c_hi - c_lo + 1):
                beyond.append(c)
        if beyond:
            seeds.append(max(beyond, key=lambda c: c.ml))
    return seeds


def _kept_voxels(mask: np.ndarray, labels: np.ndarray, n: int, comps: list[Component]) -> np.ndarray:
    """The candidates less the components given a reason."""
    dropped = [c for c in comps if c.reason]
    if len(dropped) == len(comps):
        return np.zeros(mask.shape, bool)
    # Cleared box by box: usually specks and gas pockets, far smaller than the volume a lookup over every
    # label would read.
    if sum(np.prod([b.stop - b.start for b in c.box]) for c in dropped) < labels.size:
        sub = mask.copy()
        for c in dropped:
            sub[c.box] &= labels[c.box] != c.label
        return sub
    return select_components(labels, n, [c.label for c in comps if not c.reason])


def _in_volume_coordinates(comps: list[Component], crop, shape, spacing_zyx) -> None:
    """Report the components in the volume's own slice numbers; a component dropped as far from the lungs
    within 10 mm of the image border is "at the image's edge" instead: cushions or the air around a patient
    in a tight field of view, which the body mask cannot tell from a lung the field cuts."""
    edge_y, edge_x = (int(np.ceil(10.0 / float(s))) for s in spacing_zyx[1:])
    for c in comps:
        c.box = tuple(slice(b.start + (o.start or 0), b.stop + (o.start or 0)) for b, o in zip(c.box, crop))
        c.top, c.bottom = c.top + (crop[0].start or 0), c.bottom + (crop[0].start or 0)
        _, ys, xs = c.box
        if c.reason == FAR and (
            ys.start < edge_y or xs.start < edge_x or ys.stop > shape[1] - edge_y or xs.stop > shape[2] - edge_x
        ):
            c.reason = AT_IMAGE_EDGE


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
    for step in range(1, steps + 1):
        grown = np.empty_like(current)
        for z in range(current.shape[0]):
            grown[z] = cv2.dilate(current[z].view(np.uint8), CROSS) > 0
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
