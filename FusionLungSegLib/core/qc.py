"""A quality verdict for every segmentation: plain sentences a clinician can act on.

``quality_check`` looks at the final labels in canonical order (z inferior ->
superior, x patient right -> left), the patient's body mask and the report of
what post-processing removed.  It returns::

    {"ok": bool, "flags": [sentence, ...], "notes": [sentence, ...], "measures": {...}}

A flag means "look at this result before using it" and makes ``ok`` False; a
note is information that does not (for example a small bowel-gas pocket the
post-processing removed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .labels import LEFT_LUNG, RIGHT_LUNG
from .lungs import AT_IMAGE_EDGE, AT_SURFACE, BELOW_LUNG, FAR, OUTSIDE_BODY, SelectionReport
from .sides import SIDES_LATERAL, SIDES_UNDECIDED

__all__ = ["quality_check", "QC_LIMITS"]

#: Thresholds of the verdict.
QC_LIMITS = {
    "cut_off_mm2": 100.0,  # lung area on the first or last slice that means "cut off"
    "side_ratio": 0.10,  # one lung under this fraction of the other
    "max_total_ml": 9000.0,  # more lung than any adult has
    "min_lung_to_body": 0.08,  # lung volume / body volume over the slices that hold lung
    "max_lung_to_body": 0.75,
    "surface_ml": 1.0,  # lung in the body's outer 4 mm
    "removed_flag_ml": 50.0,  # lung-like regions removed away from the lungs: flag above, note above 1 mL
    "removed_note_ml": 1.0,
    "fov_cut_mm2": 100.0,  # lung on the image's in-plane edge (summed over slices) that means "cut by the field"
    "missed_ml": 50.0,  # aerated, lung-like air next to the lungs, inside the patient, left unlabelled
    "inner_cut_mm": 30.0,  # one lung cut on its inner side: the band by that edge whose side is undecided
}


def lung_on_image_edge_mm2(labels: np.ndarray, spacing_zyx) -> dict[int, tuple[float, int]]:
    """Per side: lung on the in-plane image border (mm of border times slice thickness / slice, summed as
    an area in mm²: border pixels x pixel size x slice thickness) and the number of slices it is on."""
    sz, sy, sx = (float(s) for s in spacing_zyx)
    out = {}
    for side in (RIGHT_LUNG, LEFT_LUNG):
        on = labels == side
        per_slice = (
            np.count_nonzero(on[:, 0, :], axis=1) * sx
            + np.count_nonzero(on[:, -1, :], axis=1) * sx
            + np.count_nonzero(on[:, 1:-1, 0], axis=1) * sy
            + np.count_nonzero(on[:, 1:-1, -1], axis=1) * sy
        )
        out[side] = (float(per_slice.sum() * sz), int(np.count_nonzero(per_slice)))
    return out


def missed_lung_ml(
    labels: np.ndarray,
    hu: np.ndarray,
    body: np.ndarray,
    spacing_zyx,
    air_hu: float = -400.0,
    airway: np.ndarray | None = None,
) -> float:
    """mL of aerated air inside the patient, touching the labelled lungs in-plane, left unlabelled.

    The lungs are grown into the air next to them during post-processing, so what remains is a region the
    network missed (a lung cut from its side, a lobe) or the central airways, which are left out first:
    ``airway`` (canonical bool, what post-processing removed as airway; see ``SelectionReport.airway``) and
    small, compact cross-sections near the lungs' middle."""
    from scipy import ndimage

    from .masks import AXIAL4, bounding_box, label3d, per_label
    from .postprocess import remove_central_airways

    lung = labels > 0
    if not lung.any():
        return 0.0
    # The lungs' slices; in-plane, the box of the body and the lungs (air is counted inside the body only),
    # which on a whole-body scan keeps the labelling (the cost) to a fraction of the volume.
    zs = bounding_box(lung, margin=0)[0]
    _, ys, xs = bounding_box(body[zs] | lung[zs], margin=1)
    box = (zs, ys, xs)
    lung = lung[box]
    air = np.asarray(hu[box]) < air_hu
    air &= body[box]
    air &= ~lung
    if airway is not None:
        air &= ~airway[box]
    air &= remove_central_airways(air | lung, spacing_zyx)
    near = ndimage.binary_dilation(lung, structure=AXIAL4)
    del lung
    components, n = label3d(air)
    if n == 0:
        return 0.0
    near &= air
    touching = np.unique(components[near])
    touching = touching[touching > 0]
    count = per_label(components, n)[touching - 1].sum()
    return float(count) * float(np.prod([float(s) for s in spacing_zyx])) / 1000.0


def _side_name(label: int) -> str:
    return "right" if label == RIGHT_LUNG else "left"


@dataclass
class _Verdict:
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measures: dict = field(default_factory=dict)


def quality_check(
    labels: np.ndarray,
    spacing_zyx,
    body: np.ndarray | None = None,
    report: SelectionReport | None = None,
    limits: dict | None = None,
    hu: np.ndarray | None = None,
) -> dict:
    """QC verdict for canonical ``labels`` (0, 1 right, 2 left) with voxel size ``spacing_zyx`` (mm).

    With the canonical CT ``hu`` (and ``body``), aerated lung left unlabelled next to the lungs is looked for.
    Returns ``{"ok", "flags", "notes", "measures"}``; the checks run in a fixed order, so flags read alike.
    """
    lim = {**QC_LIMITS, **(limits or {})}
    voxel_ml = float(np.prod([float(s) for s in spacing_zyx])) / 1000.0
    ml = {side: int(np.count_nonzero(labels == side)) * voxel_ml for side in (RIGHT_LUNG, LEFT_LUNG)}
    total = sum(ml.values())
    per_slice = np.count_nonzero(labels, axis=(1, 2))
    lung_slices = np.flatnonzero(per_slice)
    v = _Verdict()
    v.measures.update(
        right_lung_ml=round(ml[RIGHT_LUNG], 1),
        left_lung_ml=round(ml[LEFT_LUNG], 1),
        scan_slices=int(labels.shape[0]),
        lung_slices=[int(lung_slices[0]), int(lung_slices[-1])] if lung_slices.size else None,
    )
    if total == 0:
        v.flags.append("No lung was found in this scan. Check that it is a chest CT that covers the lungs.")
    else:
        cut = _check_scan_ends(v, per_slice * float(spacing_zyx[1]) * float(spacing_zyx[2]), lim)
        _check_sides(v, ml, lim)
        if total > lim["max_total_ml"]:
            v.flags.append(f"The total lung volume ({total:.0f} mL) is more than any adult's lungs hold.")
        cut = _check_field_of_view(v, labels, spacing_zyx, lim) or cut
        if body is not None:
            _check_body(v, labels, body, lung_slices, total, spacing_zyx, cut, lim)
    if total > 0 and hu is not None and body is not None:
        airway = None if report is None else report.airway_mask(labels.shape)
        _check_missed_lung(v, labels, hu, body, spacing_zyx, lim, airway)
        del airway
    if total > 0 and report is not None:
        _check_side_basis(v, report)
        _check_inner_cut(v, labels, ml, spacing_zyx, report, lim)
    if report is not None:
        _check_removed(v, report, lim)
    return {"ok": not v.flags, "flags": v.flags, "notes": v.notes, "measures": v.measures}


def _check_scan_ends(v: _Verdict, area_mm2: np.ndarray, lim: dict) -> bool:
    """1. Lung on the scan's first or last slice: cut off at either end.  Whether it is."""
    if area_mm2[-1] >= lim["cut_off_mm2"]:
        v.flags.append(
            f"Lung reaches the last (most superior) slice of the scan ({area_mm2[-1] / 100:.0f} cm² on it): "
            "the lungs may be cut off at the scan's upper end, so the volumes are incomplete."
        )
    if area_mm2[0] >= lim["cut_off_mm2"]:
        v.flags.append(
            f"Lung reaches the first (most inferior) slice of the scan ({area_mm2[0] / 100:.0f} cm² on it): "
            "the lungs may be cut off at the scan's lower end, so the volumes are incomplete."
        )
    return bool(area_mm2[0] >= lim["cut_off_mm2"] or area_mm2[-1] >= lim["cut_off_mm2"])


def _check_sides(v: _Verdict, ml: dict, lim: dict) -> None:
    """2. One lung missing or much smaller than the other."""
    small, big = sorted((RIGHT_LUNG, LEFT_LUNG), key=lambda s: ml[s])
    if ml[small] == 0:
        v.flags.append(
            f"Only the {_side_name(big)} lung was found; the {_side_name(small)} lung is missing "
            "(removed, collapsed, replaced by disease, or outside the scan)."
        )
    elif ml[small] < lim["side_ratio"] * ml[big]:
        v.flags.append(
            f"The {_side_name(small)} lung ({ml[small]:.0f} mL) is less than "
            f"{lim['side_ratio']:.0%} of the {_side_name(big)} lung ({ml[big]:.0f} mL)."
        )


def _check_field_of_view(v: _Verdict, labels: np.ndarray, spacing_zyx, lim: dict) -> bool:
    """3b. The field of view cuts a lung in-plane (a cardiac reconstruction, a cropped volume, a patient
    wider than the field): that lung is only partly in the scan.  Whether it does."""
    on_edge = lung_on_image_edge_mm2(labels, spacing_zyx)
    v.measures["lung_on_image_edge_cm2"] = {_side_name(s): round(a / 100, 1) for s, (a, _) in on_edge.items()}
    cut_sides = [s for s in (RIGHT_LUNG, LEFT_LUNG) if on_edge[s][0] >= lim["fov_cut_mm2"]]
    if cut_sides:
        what = " and ".join(
            f"the {_side_name(s)} lung ({on_edge[s][0] / 100:.0f} cm² on the edge over {on_edge[s][1]} slices)"
            for s in cut_sides
        )
        v.flags.append(
            f"The field of view cuts {what}: the lungs are only partly in the scan, so the volumes are incomplete."
        )
    return bool(cut_sides)


def _check_body(v: _Verdict, labels, body, lung_slices, total: float, spacing_zyx, cut: bool, lim: dict) -> None:
    """3. Total volume against the body (whole lungs only); 4. lung at the body's outer surface."""
    from .body import outer_shell, shell_margin
    from .masks import bounding_box

    voxel_ml = float(np.prod([float(s) for s in spacing_zyx])) / 1000.0
    body_ml = float(np.count_nonzero(body[lung_slices[0] : lung_slices[-1] + 1])) * voxel_ml
    ratio = total / body_ml if body_ml else float("inf")
    v.measures["lung_to_body"] = round(ratio, 3)
    # Only for whole lungs: a scan that holds just the bases or the apices has a small ratio.
    if not cut and not lim["min_lung_to_body"] <= ratio <= lim["max_lung_to_body"]:
        v.flags.append(
            f"The lungs fill {ratio:.0%} of the body over the slices that hold them, outside the "
            f"usual {lim['min_lung_to_body']:.0%}-{lim['max_lung_to_body']:.0%}: the volume is implausible "
            "for this body size."
        )
    # The shell only where lung is: a box around the lungs with room for the 4 mm band.
    lung = labels > 0
    box = bounding_box(lung, margin=shell_margin(spacing_zyx))
    surface_ml = float(np.count_nonzero(outer_shell(body[box], spacing_zyx) & lung[box])) * voxel_ml
    v.measures["lung_at_body_surface_ml"] = round(surface_ml, 1)
    if surface_ml >= lim["surface_ml"]:
        v.flags.append(
            f"{surface_ml:.0f} mL of lung lies within 4 mm of the body's outer surface: check for air "
            "outside the patient labelled as lung, or a chest-wall defect."
        )


def _check_missed_lung(v: _Verdict, labels, hu, body, spacing_zyx, lim: dict, airway=None) -> None:
    """4b. Aerated lung next to the labelled lungs left unlabelled (a lung part the network missed)."""
    missed = missed_lung_ml(labels, hu, body, spacing_zyx, airway=airway)
    v.measures["unlabelled_air_next_to_lungs_ml"] = round(missed, 1)
    if missed >= lim["missed_ml"]:
        v.flags.append(
            f"{missed:.0f} mL of aerated, lung-like tissue inside the patient next to the lungs is not labelled: "
            "part of a lung may be missing from the result."
        )


def _check_side_basis(v: _Verdict, report: SelectionReport) -> None:
    """4c. Right and left could not be told apart from what is in view."""
    if report.side_basis:
        v.measures["sides_decided_by"] = report.side_basis
    if report.side_basis == SIDES_UNDECIDED:
        v.flags.append(
            "Right and left could not be decided from what is in this field of view (one lung, with neither its "
            "chest wall nor the mediastinum clear): the side of the label may be wrong."
        )


def _check_inner_cut(
    v: _Verdict, labels: np.ndarray, ml: dict, spacing_zyx, report: SelectionReport, lim: dict
) -> None:
    """4d. One lung in view, its side taken from its chest wall, and the field cuts it on its inner side (half
    of the patient cut near the midline): where the lungs meet in front of or behind the heart, the other
    lung's edge crosses the midline joined to it, so the lung at that edge may be the other lung's."""
    if report.side_basis != SIDES_LATERAL:
        return
    present = [s for s in (RIGHT_LUNG, LEFT_LUNG) if ml[s] > 0]  # mL per side, measured once by quality_check
    if len(present) != 1:
        return
    side = present[0]
    sz, sy, sx = (float(s) for s in spacing_zyx)
    band = max(1, int(round(lim["inner_cut_mm"] / sx)))
    # canonical x runs from the patient's right to left: the right lung's inner side is at high x
    inner = np.s_[:, :, -band:] if side == RIGHT_LUNG else np.s_[:, :, :band]
    edge = labels[:, :, -1] if side == RIGHT_LUNG else labels[:, :, 0]
    area_mm2 = float(np.count_nonzero(edge == side)) * sy * sz
    if area_mm2 < lim["fov_cut_mm2"]:
        return
    ml = float(np.count_nonzero(labels[inner] == side)) * sz * sy * sx / 1000.0
    v.measures["side_undecided_ml"] = round(ml, 1)
    other = LEFT_LUNG if side == RIGHT_LUNG else RIGHT_LUNG
    v.flags.append(
        f"The field of view cuts the {_side_name(side)} lung on its inner side, toward the "
        f"{_side_name(other)} lung ({area_mm2 / 100:.0f} cm² on that edge): where the lungs meet in front of or "
        f"behind the heart, lung at this edge may be the {_side_name(other)} lung's, so the side of the "
        f"{ml:.0f} mL within {lim['inner_cut_mm']:.0f} mm of the edge is undecided."
    )


def _check_removed(v: _Verdict, report: SelectionReport, lim: dict) -> None:
    """5. Lung-like regions that post-processing removed.  Air outside the patient (cushions, head holders)
    is unambiguous and only noted; inside the body it may hide a mistake: flagged when large."""
    reasons = (OUTSIDE_BODY, AT_SURFACE, BELOW_LUNG, FAR, AT_IMAGE_EDGE)
    removed = {reason: report.removed_ml(reason) for reason in reasons}
    v.measures["removed_ml"] = {k: round(x, 1) for k, x in removed.items() if x > 0}
    inside = {k: x for k, x in removed.items() if k not in (OUTSIDE_BODY, AT_IMAGE_EDGE) and x >= 0.5}
    where = ", ".join(f"{x:.0f} mL {k}" for k, x in inside.items())
    if sum(inside.values()) >= lim["removed_flag_ml"]:
        v.flags.append(
            f"Lung-like regions inside the body but away from the lungs were found and removed ({where}): "
            "check that nothing similar was kept."
        )
    elif sum(inside.values()) >= lim["removed_note_ml"]:
        v.notes.append(f"Small lung-like regions away from the lungs were removed ({where}).")
    if removed[OUTSIDE_BODY] >= lim["removed_note_ml"]:
        v.notes.append(
            f"{removed[OUTSIDE_BODY]:.0f} mL of air outside the patient (cushions, table, blankets) looked like "
            "lung to the network and was removed."
        )
    if removed[AT_IMAGE_EDGE] >= lim["removed_note_ml"]:
        v.notes.append(
            f"{removed[AT_IMAGE_EDGE]:.0f} mL of lung-like air at the image's edge, away from the lungs (cushions, "
            "air around a patient in a tight field of view), looked like lung to the network and was removed."
        )
