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

import numpy as np

from .postprocess import AT_SURFACE, BELOW_LUNG, FAR, LEFT_LUNG, OUTSIDE_BODY, RIGHT_LUNG, SelectionReport

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
}


def _side_name(label: int) -> str:
    return "right" if label == RIGHT_LUNG else "left"


def quality_check(
    labels: np.ndarray,
    spacing_zyx,
    body: np.ndarray | None = None,
    report: SelectionReport | None = None,
    limits: dict | None = None,
) -> dict:
    """QC verdict for canonical ``labels`` (0, 1 right, 2 left) with voxel size ``spacing_zyx`` (mm)."""
    lim = {**QC_LIMITS, **(limits or {})}
    sz, sy, sx = (float(s) for s in spacing_zyx)
    voxel_ml = sz * sy * sx / 1000.0
    flags: list[str] = []
    notes: list[str] = []
    counts = {side: int(np.count_nonzero(labels == side)) for side in (RIGHT_LUNG, LEFT_LUNG)}
    ml = {side: counts[side] * voxel_ml for side in counts}
    total = sum(ml.values())
    per_slice = np.count_nonzero(labels, axis=(1, 2))
    lung_slices = np.flatnonzero(per_slice)
    measures: dict = {
        "right_lung_ml": round(ml[RIGHT_LUNG], 1),
        "left_lung_ml": round(ml[LEFT_LUNG], 1),
        "scan_slices": int(labels.shape[0]),
        "lung_slices": [int(lung_slices[0]), int(lung_slices[-1])] if lung_slices.size else None,
    }
    if total == 0:
        flags.append("No lung was found in this scan. Check that it is a chest CT that covers the lungs.")
    else:
        # 1. Cut off at either end of the scan.
        area_mm2 = per_slice * sy * sx
        if area_mm2[-1] >= lim["cut_off_mm2"]:
            flags.append(
                f"Lung reaches the last (most superior) slice of the scan ({area_mm2[-1] / 100:.0f} cm² on it): "
                "the lungs may be cut off at the scan's upper end, so the volumes are incomplete."
            )
        if area_mm2[0] >= lim["cut_off_mm2"]:
            flags.append(
                f"Lung reaches the first (most inferior) slice of the scan ({area_mm2[0] / 100:.0f} cm² on it): "
                "the lungs may be cut off at the scan's lower end, so the volumes are incomplete."
            )
        # 2. One lung missing or much smaller than the other.
        small, big = sorted((RIGHT_LUNG, LEFT_LUNG), key=lambda s: ml[s])
        if ml[small] == 0:
            flags.append(
                f"Only the {_side_name(big)} lung was found; the {_side_name(small)} lung is missing "
                "(removed, collapsed, replaced by disease, or outside the scan)."
            )
        elif ml[small] < lim["side_ratio"] * ml[big]:
            flags.append(
                f"The {_side_name(small)} lung ({ml[small]:.0f} mL) is less than "
                f"{lim['side_ratio']:.0%} of the {_side_name(big)} lung ({ml[big]:.0f} mL)."
            )
        # 3. Total volume against the body.
        if total > lim["max_total_ml"]:
            flags.append(f"The total lung volume ({total:.0f} mL) is more than any adult's lungs hold.")
        cut = area_mm2[0] >= lim["cut_off_mm2"] or area_mm2[-1] >= lim["cut_off_mm2"]
        if body is not None:
            body_ml = float(np.count_nonzero(body[lung_slices[0] : lung_slices[-1] + 1])) * voxel_ml
            ratio = total / body_ml if body_ml else float("inf")
            measures["lung_to_body"] = round(ratio, 3)
            # Only for whole lungs: a scan that holds just the bases or the apices has a small ratio.
            if not cut and not lim["min_lung_to_body"] <= ratio <= lim["max_lung_to_body"]:
                flags.append(
                    f"The lungs fill {ratio:.0%} of the body over the slices that hold them, outside the "
                    f"usual {lim['min_lung_to_body']:.0%}-{lim['max_lung_to_body']:.0%}: the volume is implausible "
                    "for this body size."
                )
            # 4. Lung at the body's outer surface.
            from .body import bounding_box, outer_shell, shell_margin

            # The shell only where lung is: a box around the lungs with room for the 4 mm band.
            lung = labels > 0
            box = bounding_box(lung, margin=shell_margin(spacing_zyx))
            surface_ml = float(np.count_nonzero(outer_shell(body[box], spacing_zyx) & lung[box])) * voxel_ml
            measures["lung_at_body_surface_ml"] = round(surface_ml, 1)
            if surface_ml >= lim["surface_ml"]:
                flags.append(
                    f"{surface_ml:.0f} mL of lung lies within 4 mm of the body's outer surface: check for air "
                    "outside the patient labelled as lung, or a chest-wall defect."
                )
    # 5. Lung-like regions that post-processing removed.  Air outside the patient (cushions, head
    # holders) is unambiguous and only noted; inside the body it may hide a mistake: flagged when large.
    if report is not None:
        removed = {reason: report.removed_ml(reason) for reason in (OUTSIDE_BODY, AT_SURFACE, BELOW_LUNG, FAR)}
        measures["removed_ml"] = {k: round(v, 1) for k, v in removed.items() if v > 0}
        inside = {k: v for k, v in removed.items() if k != OUTSIDE_BODY and v >= 0.5}
        where = ", ".join(f"{v:.0f} mL {k}" for k, v in inside.items())
        if sum(inside.values()) >= lim["removed_flag_ml"]:
            flags.append(
                f"Lung-like regions inside the body but away from the lungs were found and removed ({where}): "
                "check that nothing similar was kept."
            )
        elif sum(inside.values()) >= lim["removed_note_ml"]:
            notes.append(f"Small lung-like regions away from the lungs were removed ({where}).")
        if removed[OUTSIDE_BODY] >= lim["removed_note_ml"]:
            notes.append(
                f"{removed[OUTSIDE_BODY]:.0f} mL of air outside the patient (cushions, table, blankets) looked like "
                "lung to the network and was removed."
            )
    return {"ok": not flags, "flags": flags, "notes": notes, "measures": measures}
