"""Cut fields of view: the body, the sides and the QC when the image border cuts the patient.

Phantoms are canonical ``[z, y, x]`` (x from the patient's right to left); each crop below is what a
cardiac reconstruction, a Crop Volume ROI or half of the patient leaves in view, and every case is also
run mirrored (the patient's sides swapped), so no rule can pass by favouring one side of the image.
"""

from __future__ import annotations

import numpy as np
import pytest
from phantoms import chest

from FusionLungSegLib.core.body import body_mask
from FusionLungSegLib.core.labels import LEFT_LUNG, RIGHT_LUNG
from FusionLungSegLib.core.postprocess import postprocess, postprocess_with_report
from FusionLungSegLib.core.qc import quality_check
from FusionLungSegLib.core.sides import SIDES_LATERAL, SIDES_UNDECIDED
from FusionLungSegLib.training.data import SliceSet
from FusionLungSegLib.training.fov import FOV_CUTS, fov_cut_variants, fov_kinds


def _crop(p, y0=None, y1=None, x0=None, x1=None, mirror=False):
    """The phantom's CT and lungs inside an in-plane window (mirrored: the patient's sides swapped)."""
    hu = p.hu[:, y0:y1, x0:x1]
    right, left = p.parts["lung_right"][:, y0:y1, x0:x1], p.parts["lung_left"][:, y0:y1, x0:x1]
    if mirror:
        hu, right, left = hu[:, :, ::-1], left[:, :, ::-1], right[:, :, ::-1]
    return np.ascontiguousarray(hu), np.ascontiguousarray(right), np.ascontiguousarray(left)


def _segment(hu, lungs, spacing):
    """Post-processing of a perfect network output, as the pipeline runs it."""
    body = body_mask(hu, spacing)
    labels, report = postprocess_with_report(lungs.astype(np.float32), spacing, hu=hu, body=body)
    return labels, report, body


def _windows(p):
    """name -> (y0, y1, x0, x1) in pixels of a 256-pixel phantom (body 240 x 340 mm at 1.95 mm)."""
    n = p.hu.shape[2]
    mid = n // 2
    lung_rows = np.flatnonzero(p.parts["lung_right"].any(axis=(0, 2)))
    heart_y = (lung_rows[0] + lung_rows[-1]) // 2 - 9  # the heart lies in front of the lungs' middle
    return {
        "cardiac": (heart_y - 56, heart_y + 57, mid + 9 - 56, mid + 9 + 57),  # 220 mm around the heart
        "right_half": (None, None, None, mid),
        "left_half": (None, None, mid, None),
        "roi_right_lung": (lung_rows[0] - 5, lung_rows[-1] + 5, 50, mid + 10),  # chest wall cut too
        "roi_left_lung": (lung_rows[0] - 5, lung_rows[-1] + 5, mid - 10, n - 50),
    }


def _joined_in_front(right_reaches: int):
    """A chest whose lungs are joined in front of the heart on the upper slices (an anterior junction): 8 mm
    of lung from one lung to the other, the right lung's up to column ``right_reaches`` (the midline is 128)."""
    p = chest(heart=True)
    right, left = p.parts["lung_right"], p.parts["lung_left"]
    lung_z = np.flatnonzero((right | left).any(axis=(1, 2)))
    lung_rows = np.flatnonzero(right.any(axis=(0, 2)))
    bridge = np.zeros(right.shape, bool)
    bridge[lung_z[len(lung_z) // 2] : lung_z[-1] + 1, lung_rows[0] + 12 : lung_rows[0] + 16, 90:170] = True
    p.hu[bridge] = -850
    cols = np.arange(right.shape[2])
    p.parts["lung_right"] = right | (bridge & (cols < right_reaches))
    p.parts["lung_left"] = left | (bridge & (cols >= right_reaches))
    return p


def test_lungs_cut_along_their_depth_stay_inside_the_body():
    p = chest(heart=True)
    hu, right, left = _crop(p, *_windows(p)["cardiac"])
    body = body_mask(hu, p.spacing_zyx)
    assert np.mean(body[right | left]) > 0.99


def test_air_beside_a_patient_wider_than_the_field_stays_outside():
    p = chest(body_mm=(240.0, 480.0))  # the body runs off both sides of a 500 mm field: air above it
    hu = p.hu[:, :, 20:-20]
    body = body_mask(hu, p.spacing_zyx)
    outside = hu < -900
    outside &= ~(p.parts["lung_right"] | p.parts["lung_left"])[:, :, 20:-20]
    assert np.mean(body[outside]) < 0.01


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
@pytest.mark.parametrize("window", ["cardiac", "right_half", "left_half", "roi_right_lung", "roi_left_lung"])
def test_sides_come_from_the_anatomy_in_view(window, mirror):
    p = chest(heart=True)
    hu, right, left = _crop(p, *_windows(p)[window], mirror=mirror)
    labels, report, _ = _segment(hu, right | left, p.spacing_zyx)
    assert report.side_basis != SIDES_UNDECIDED
    for truth, side, other in ((right, RIGHT_LUNG, LEFT_LUNG), (left, LEFT_LUNG, RIGHT_LUNG)):
        if truth.sum() * np.prod(p.spacing_zyx) / 1000 >= 20:
            assert np.mean(labels[truth] == side) > 0.95, (window, side)
            assert np.mean(labels[truth] == other) < 0.05, (window, side)


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
def test_one_lung_with_its_chest_wall_cut_takes_its_side_from_the_heart_side(mirror):
    p = chest(heart=True)
    n = p.hu.shape[2]
    lung_rows = np.flatnonzero(p.parts["lung_left"].any(axis=(0, 2)))
    lung_cols = np.flatnonzero(p.parts["lung_left"].any(axis=(0, 1)))
    # A tight ROI around the left lung: its chest wall runs into the border, no right lung in view.
    hu, right, left = _crop(p, lung_rows[0] - 3, lung_rows[-1] + 3, n // 2 + 2, lung_cols[-1] + 3, mirror=mirror)
    labels, report, body = _segment(hu, right | left, p.spacing_zyx)
    assert report.side_basis == SIDES_LATERAL
    truth, side = (right, RIGHT_LUNG) if mirror else (left, LEFT_LUNG)
    assert np.mean(labels[truth] == side) > 0.95
    qc = quality_check(labels, p.spacing_zyx, body, report, hu=hu)  # its inner side is in view: nothing undecided
    assert "side_undecided_ml" not in qc["measures"], qc["flags"]


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
def test_rotated_patient_keeps_its_sides(mirror):
    from scipy import ndimage

    p = chest(heart=True)
    rotate = dict(axes=(1, 2), reshape=False, order=0, mode="nearest")
    hu = ndimage.rotate(p.hu, 12, cval=-1000, **{**rotate, "mode": "constant"})
    right = ndimage.rotate(p.parts["lung_right"], 12, **rotate)
    left = ndimage.rotate(p.parts["lung_left"], 12, **rotate)
    n = hu.shape[2]
    hu, right, left = hu[:, :, n // 2 :], right[:, :, n // 2 :], left[:, :, n // 2 :]  # the left half
    if mirror:
        hu, right, left = hu[:, :, ::-1], left[:, :, ::-1], right[:, :, ::-1]
    labels, report, _ = _segment(np.ascontiguousarray(hu), np.ascontiguousarray(right | left), p.spacing_zyx)
    truth, side = (right, RIGHT_LUNG) if mirror else (left, LEFT_LUNG)
    assert np.mean(labels[truth] == side) > 0.95


def test_whole_chest_is_not_flagged_but_a_cut_one_is():
    p = chest(heart=True, table=True)
    hu, right, left = _crop(p)
    labels, report, body = _segment(hu, right | left, p.spacing_zyx)
    qc = quality_check(labels, p.spacing_zyx, body, report, hu=hu)
    assert qc["ok"], qc
    hu, right, left = _crop(p, *_windows(p)["cardiac"])
    labels, report, body = _segment(hu, right | left, p.spacing_zyx)
    qc = quality_check(labels, p.spacing_zyx, body, report, hu=hu)
    assert not qc["ok"]
    assert any("field of view cuts the right lung" in f for f in qc["flags"]), qc  # the left lung fits
    assert qc["measures"]["lung_on_image_edge_cm2"]["right"] > 1


def test_a_lung_with_nothing_to_tell_its_side_is_flagged_undecided():
    p = chest()  # no heart: an ellipse lung has no hollow side
    lung_rows = np.flatnonzero(p.parts["lung_left"].any(axis=(0, 2)))
    lung_cols = np.flatnonzero(p.parts["lung_left"].any(axis=(0, 1)))
    hu, right, left = _crop(p, lung_rows[0] - 3, lung_rows[-1] + 3, lung_cols[0] - 3, lung_cols[-1] + 3)
    labels, report, body = _segment(hu, right | left, p.spacing_zyx)
    assert report.side_basis == SIDES_UNDECIDED
    qc = quality_check(labels, p.spacing_zyx, body, report, hu=hu)
    assert any("could not be decided" in f for f in qc["flags"]), qc


def test_lung_the_network_missed_next_to_the_labels_is_flagged():
    p = chest(heart=True)
    hu, right, left = _crop(p)
    labels, report, body = _segment(hu, right | left, p.spacing_zyx)
    assert quality_check(labels, p.spacing_zyx, body, report, hu=hu)["measures"]["unlabelled_air_next_to_lungs_ml"] < 5
    cols = np.flatnonzero(right.any(axis=(0, 1)))
    missed = labels.copy()
    missed[:, :, : cols[0] + (cols[-1] - cols[0]) // 2] = 0  # the lateral half of the right lung
    qc = quality_check(missed, p.spacing_zyx, body, report, hu=hu)
    assert any("not labelled" in f for f in qc["flags"]), qc


def test_cut_field_of_view_training_copies_keep_size_and_cut_the_mask():
    p = chest(heart=True)
    z = p.hu.shape[0] // 2
    lungs = (p.parts["lung_right"] | p.parts["lung_left"])[z - 2 : z + 2]
    slices = SliceSet(p.hu[z - 2 : z + 2], lungs, ["a"] * 4, [f"s{i}" for i in range(4)], [p.spacing_zyx[1:]] * 4)
    a, b = fov_cut_variants(slices, 3, seed=1), fov_cut_variants(slices, 3, seed=1)
    assert len(a) == 12 and a.images.shape[1:] == p.hu.shape[1:]
    assert np.array_equal(a.images, b.images) and a.boxes == b.boxes  # the seed decides
    outside_view = a.images == -1000
    assert not (a.masks & outside_view & ~np.repeat(lungs, 3, axis=0)).any()
    assert (a.masks.sum(axis=(1, 2)) <= np.repeat(lungs, 3, axis=0).sum(axis=(1, 2))).all()
    assert any(m.sum() < full.sum() for m, full in zip(a.masks, np.repeat(lungs, 3, axis=0)))
    assert all(box is not None for box in a.boxes)


def test_training_copies_draw_only_the_kinds_asked_for():
    p = chest(heart=True)
    z = p.hu.shape[0] // 2
    lungs = (p.parts["lung_right"] | p.parts["lung_left"])[z - 1 : z + 1]
    slices = SliceSet(p.hu[z - 1 : z + 1], lungs, ["a"] * 2, ["s0", "s1"], [p.spacing_zyx[1:]] * 2)
    roi = fov_cut_variants(slices, 4, seed=3, kinds=fov_kinds("lung_roi"))
    assert all(name.endswith("-lung_roi") for name in roi.names) and len(roi) == 8
    every = fov_cut_variants(slices, 4, seed=3)
    assert every.names == fov_cut_variants(slices, 4, seed=3, kinds=fov_kinds(",".join(FOV_CUTS))).names
    assert fov_kinds("lung_roi, zoom,lung_roi") == ("lung_roi", "zoom", "lung_roi")  # a repeat weighs double
    with pytest.raises(ValueError, match="unknown cardiac"):
        fov_kinds("zoom,cardiac")


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
def test_two_lungs_joined_behind_the_heart_in_a_cut_field_are_not_given_one_side(mirror):
    p = chest(heart=True)
    right, left = p.parts["lung_right"], p.parts["lung_left"]
    lung_z = np.flatnonzero((right | left).any(axis=(1, 2)))
    # a band of lung 14 mm deep behind the heart (a posterior junction), from one lung to the other
    bridge = np.zeros(right.shape, bool)
    bridge[lung_z[0] : lung_z[-1] + 1, 132:139, 95:160] = True
    p.hu[bridge] = -850
    right, left = right | (bridge & (np.arange(256) < 128)), left | (bridge & (np.arange(256) >= 128))
    p.parts["lung_right"], p.parts["lung_left"] = right, left
    hu, right, left = _crop(p, *_windows(p)["cardiac"], mirror=mirror)
    labels, report, _ = _segment(hu, right | left, p.spacing_zyx)
    assert np.mean(labels[right | left] > 0) > 0.95
    swapped = max(np.mean(labels[right] == LEFT_LUNG), np.mean(labels[left] == RIGHT_LUNG))
    assert swapped < 0.05 or report.side_basis == SIDES_UNDECIDED, (report.side_basis, swapped)


def test_lung_like_air_at_the_image_edge_away_from_the_lungs_is_noted_not_flagged():
    p = chest(heart=True)
    lung_rows = np.flatnonzero((p.parts["lung_right"] | p.parts["lung_left"]).any(axis=(0, 2)))
    hu, right, left = _crop(p, None, lung_rows[-1] + 20)  # a tight field: the patient's back runs off it
    pocket = np.zeros(hu.shape, bool)  # foam-like air in the body against the border, far from the lungs
    pocket[8:16, -4:, 100:140] = True
    hu[pocket] = -850
    labels, report, body = _segment(hu, right | left | pocket, p.spacing_zyx)
    assert not labels[pocket].any()
    assert report.removed_ml("at the image's edge") > 0 and not report.removed("far from the lungs")
    qc = quality_check(labels, p.spacing_zyx, body, report, hu=hu)
    assert qc["ok"], qc["flags"]
    assert any("image's edge" in n for n in qc["notes"])


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
def test_the_part_of_the_other_lung_joined_in_front_of_the_heart_keeps_its_side(mirror):
    # A Crop Volume ROI around one lung that holds the other lung's medial edge, the lungs joined in front
    # of the heart on the upper slices (an anterior junction): on those slices the other lung's part is a
    # small share of one 2D component, and must not take the side of the lung that fills the crop.
    p = _joined_in_front(right_reaches=128)
    lung_rows = np.flatnonzero(p.parts["lung_right"].any(axis=(0, 2)))
    # the ROI reaches 70 mm past the midline (the image's middle column, 128)
    hu, right, left = _crop(p, lung_rows[0] - 5, lung_rows[-1] + 5, 50, 164, mirror=mirror)
    labels, report, _ = _segment(hu, right | left, p.spacing_zyx)
    part, side = (left, LEFT_LUNG) if not mirror else (right, RIGHT_LUNG)
    assert part.sum() * np.prod(p.spacing_zyx) / 1000 > 20  # a part of the other lung is in view
    assert np.mean(labels[part] == side) > 0.95, report.side_basis


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
def test_trachea_in_a_roi_around_one_lung_is_not_lung(mirror):
    # A Crop Volume ROI around the left lung that holds the trachea beside the right lung's medial part: the
    # mask's middle is the left lung's, so the trachea is found by the gap between the lungs in view.
    p = chest(heart=True)
    right = p.parts["lung_right"]
    lung_z = np.flatnonzero(right.any(axis=(1, 2)))
    rows = np.flatnonzero(right.any(axis=(0, 2)))
    yy, xx = np.mgrid[:256, :256]
    cy, cx = (rows[0] + rows[-1]) // 2, 128 - 7  # 14 mm right of the midline, as a trachea often is
    tube = (yy - cy) ** 2 + (xx - cx) ** 2 < 4**2
    reach = (np.abs(yy - cy) < 12) & (xx < cx - 6) & (xx > 60)  # the right lung reaches the trachea
    trachea = np.zeros(right.shape, bool)
    trachea[lung_z[len(lung_z) // 2] :] = tube
    p.hu[trachea] = -1000
    grown = np.zeros(right.shape, bool)
    grown[lung_z[len(lung_z) // 2] : lung_z[-1] + 1] = reach & p.parts["body"][lung_z[0]]
    p.hu[grown & ~right] = -850
    p.parts["lung_right"] = right | grown
    hu, right, left = _crop(p, rows[0] - 5, rows[-1] + 5, 100, 236, mirror=mirror)  # 55 mm past the midline
    trachea = (hu <= -1000) & body_mask(hu, p.spacing_zyx)
    assert trachea.sum() > 100
    labels, report, _ = _segment(hu, right | left | trachea, p.spacing_zyx)  # the network took it for lung
    assert not labels[trachea].any(), report.side_basis
    part = left if mirror else right
    assert np.mean(labels[part] > 0) > 0.95  # the other lung's part in view is kept


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
def test_pieces_of_the_other_lung_a_roi_cuts_apart_are_kept_but_air_at_its_edge_is_not(mirror):
    # A ROI around the right lung cuts the left lung at the image's edge into pieces more than 10 mm
    # apart (in front of and behind the heart): each is lung.  Gas at that edge, and lung-like air in the
    # image's corner (under a blanket), are not.
    spacing = (3.0, 1.0, 1.0)
    hu = np.full((30, 120, 100), 40, np.int16)
    body = np.ones(hu.shape, bool)  # the body fills the field of view
    right, front, back, gas, corner = (np.zeros(hu.shape, bool) for _ in range(5))
    right[2:28, 20:100, 5:60] = True
    front[10:28, 20:50, 85:100] = True  # the other lung's part in front of the heart (24 mL)
    back[2:14, 70:95, 88:99] = True  # and behind it, 20 mm away (10 mL), a pixel short of the edge
    gas[20:28, 61:69, 90:100] = True
    corner[20:28, 0:6, 70:100] = True
    hu[right | front | back] = -850
    hu[gas] = -1000
    hu[corner] = -880
    mask = right | front | back | gas | corner
    if mirror:
        hu, body, mask, right, front, back, gas, corner = (
            a[:, :, ::-1] for a in (hu, body, mask, right, front, back, gas, corner)
        )
    labels, report = postprocess_with_report(mask.astype(np.float32), spacing, hu=hu, body=body)
    lung, other = (RIGHT_LUNG, LEFT_LUNG) if not mirror else (LEFT_LUNG, RIGHT_LUNG)
    assert np.mean(labels[right] == lung) > 0.99
    assert np.mean(labels[front] == other) > 0.99
    assert np.mean(labels[back] == other) > 0.99, [(c.ml, c.reason) for c in report.components]
    assert not labels[gas].any() and not labels[corner].any()


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
def test_one_lung_cut_on_its_inner_side_leaves_the_side_at_that_edge_undecided(mirror):
    # Half of the patient cut at the midline, the right lung's front edge reaching across it joined to the
    # left lung (an anterior junction): nothing in view parts the two, so the QC must say that the side of
    # the lung at the cut is undecided rather than give the sliver the left lung's side in silence.
    p = _joined_in_front(right_reaches=140)  # 12 pixels (23 mm) past the midline
    labels, report, body = _segment(p.hu, p.parts["lung_right"] | p.parts["lung_left"], p.spacing_zyx)
    whole = quality_check(labels, p.spacing_zyx, body, report, hu=p.hu)
    assert "side_undecided_ml" not in whole["measures"], whole["flags"]

    hu, right, left = _crop(p, x0=128, mirror=mirror)  # the patient's left half (right half when mirrored)
    labels, report, body = _segment(hu, right | left, p.spacing_zyx)
    qc = quality_check(labels, p.spacing_zyx, body, report, hu=hu)
    sliver, lung = (right, left) if not mirror else (left, right)
    side = LEFT_LUNG if not mirror else RIGHT_LUNG
    assert report.side_basis == SIDES_LATERAL
    assert np.mean(labels[lung] == side) > 0.95
    sliver_ml = sliver.sum() * np.prod(p.spacing_zyx) / 1000
    assert 1 < sliver_ml < 20
    assert any("on its inner side" in f and "undecided" in f for f in qc["flags"]), qc["flags"]
    assert qc["measures"]["side_undecided_ml"] >= sliver_ml


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
def test_a_dark_lung_base_cut_off_at_the_edge_is_neither_airway_nor_an_island(mirror):
    # Real failure (LUNG1-001, a ROI around the left lung): the right lung's base, cut off from the rest of
    # its part in view by the image's edge, dark (-970 HU, as a lower lobe can be) and compact by the cut
    # midline, was taken for the trachea and then, under 5 % of that side, dropped as an island.
    spacing = (3.0, 1.0, 1.0)
    hu = np.full((30, 120, 100), 40, np.int16)
    body = np.ones(hu.shape, bool)  # the body fills the field of view
    lung, part, base = (np.zeros(hu.shape, bool) for _ in range(3))
    lung[2:28, 20:100, 5:60] = True
    part[6:28, 20:60, 85:100] = True  # the other lung's part in view, at the image's edge (40 mL)
    base[1:5, 62:72, 88:100] = True  # its base below, cut off at that edge (1.4 mL), 3 mm away
    hu[lung | part] = -850
    hu[base] = -970
    mask = lung | part | base
    if mirror:
        hu, body, mask, lung, part, base = (a[:, :, ::-1] for a in (hu, body, mask, lung, part, base))
    labels, report = postprocess_with_report(mask.astype(np.float32), spacing, hu=hu, body=body)
    side, other = (RIGHT_LUNG, LEFT_LUNG) if not mirror else (LEFT_LUNG, RIGHT_LUNG)
    assert np.mean(labels[lung] == side) > 0.99
    assert np.mean(labels[part] == other) > 0.99
    assert np.mean(labels[base] == other) > 0.99, report.side_basis


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
def test_the_trachea_is_followed_down_where_it_runs_beyond_the_midline_reach(mirror):
    # Real failure (LUNG1-001, a ROI around the left lung): the trachea, plain by the gap between the lungs in
    # view where it enters the chest, runs down along the image's edge more than 25 mm from that gap: it was
    # labelled right lung over 12 slices.  Followed down as a tube it stays airway; the right lung's part
    # beside it stays lung.
    spacing = (3.0, 1.0, 1.0)
    hu = np.full((30, 120, 100), 40, np.int16)
    body = np.ones(hu.shape, bool)
    lung, part, trachea = (np.zeros(hu.shape, bool) for _ in range(3))
    lung[2:28, 20:100, 60:95] = True
    part[2:20, 38:100, 0:12] = True  # the right lung's medial part at the edge, 3 mm behind the trachea; gap at x 36
    yy, xx = np.mgrid[:120, :100]
    for z in range(8, 30):
        cx = 6 + max(0, z - 12) * 10 // 17  # 20 mm (x 16) from the gap's middle at the top, 30 mm (x 6) lower
        trachea[z] = (yy - 30) ** 2 + (xx - cx) ** 2 < 5**2
    hu[lung | part] = -850
    hu[trachea] = -1000
    mask = lung | part | trachea  # the network took the trachea for lung
    if mirror:
        hu, body, mask, lung, part, trachea = (a[:, :, ::-1] for a in (hu, body, mask, lung, part, trachea))
    labels, report = postprocess_with_report(mask.astype(np.float32), spacing, hu=hu, body=body)
    assert not labels[trachea].any(), report.side_basis
    other = LEFT_LUNG if not mirror else RIGHT_LUNG
    assert np.mean(labels[part] == 3 - other) > 0.99
    assert np.mean(labels[lung] == other) > 0.99


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
def test_the_lungs_do_not_grow_into_the_trachea_below_where_the_network_saw_it(mirror):
    # Real failure (LUNG1-001, a ROI around the left lung): the network saw the trachea only where it enters
    # the chest; lower down it called the lumen nothing, and the right lung's part beside it grew into it.
    # The lumen is followed down from the airway found; a darker, wider region under it (a bulla) is lung.
    spacing = (3.0, 1.0, 1.0)
    hu = np.full((30, 120, 100), 40, np.int16)
    body = np.ones(hu.shape, bool)
    lung, part, lumen, bridge, bulla = (np.zeros(hu.shape, bool) for _ in range(5))
    lung[2:28, 20:100, 60:95] = True
    part[2:20, 38:100, 0:12] = True
    yy, xx = np.mgrid[:120, :100]
    lumen[8:30] = (yy - 30) ** 2 + (xx - 14) ** 2 < 5**2  # 22 mm from the gap between the lungs (x 36)
    bridge[8:20, 34:38, 8:20] = True  # aerated tissue from the part to the lumen: the growth reaches it
    bulla[2:7, 22:42, 0:12] = True  # under the lumen's end, wider than it
    hu[lung | part] = -850
    hu[bridge] = -900
    hu[lumen] = -1000
    part |= bulla
    hu[bulla] = -990
    mask = lung | part | (lumen & (np.arange(30) >= 20)[:, None, None])  # the trachea seen from slice 20 up
    if mirror:
        hu, body, mask, lung, part, lumen, bulla = (a[:, :, ::-1] for a in (hu, body, mask, lung, part, lumen, bulla))
    labels, report = postprocess_with_report(mask.astype(np.float32), spacing, hu=hu, body=body)
    assert not labels[lumen].any(), report.side_basis
    side = RIGHT_LUNG if not mirror else LEFT_LUNG
    assert np.mean(labels[part] == side) > 0.99
    assert (labels[bulla] == side).all()
    assert np.mean(labels[lung] == 3 - side) > 0.99
    # the QC counts the lumen as airway, not as lung the network missed
    qc = quality_check(labels, spacing, body, report, hu=hu)
    lumen_ml = lumen.sum() * np.prod(spacing) / 1000
    assert qc["measures"]["unlabelled_air_next_to_lungs_ml"] < 0.1 * lumen_ml, (qc["measures"], lumen_ml)


@pytest.mark.parametrize("mirror", [False, True], ids=["as-is", "mirrored"])
def test_the_trachea_on_the_border_of_a_half_field_is_not_lung(mirror):
    # Real failure (LUNG1-001, the patient's right half): the field cut the patient at the midline, through
    # the trachea, joined to the right lung's apex: nothing in view marked the midline, so the half trachea
    # was labelled right lung from the apex down.  The border of a field cut at one side only is the
    # patient's midline there.
    spacing = (3.0, 1.0, 1.0)
    hu = np.full((30, 120, 100), 40, np.int16)
    body = np.ones(hu.shape, bool)
    body[:, :, :5] = False  # the chest wall in view; cut at the other side only
    hu[~body] = -1000
    lung, trachea = (np.zeros(hu.shape, bool) for _ in range(2))
    lung[2:26, 20:100, 20:84] = True
    lung[24:26, 26:34, 84:92] = True  # the apex reaches the trachea
    yy, xx = np.mgrid[:120, :100]
    trachea[10:30] = (yy - 30) ** 2 + (xx - 99) ** 2 < 8**2  # cut in half by the field's border
    hu[lung] = -850
    hu[trachea] = -1000
    mask = lung | trachea  # the network took the trachea for lung
    if mirror:
        hu, body, mask, lung, trachea = (a[:, :, ::-1] for a in (hu, body, mask, lung, trachea))
    labels, report = postprocess_with_report(mask.astype(np.float32), spacing, hu=hu, body=body)
    assert not labels[trachea].any(), report.side_basis
    assert np.mean(labels[lung & ~trachea] == (RIGHT_LUNG if not mirror else LEFT_LUNG)) > 0.99


def test_a_piece_of_a_lung_the_scan_range_cuts_off_is_not_an_island():
    # Real failure (LUNG1-001, the lower half of its slices, fp32): at the crop's top slices the left lung's
    # front part, parted from the rest by a fissure inside the crop and joined to it only above, was
    # dropped as an island of the left side (25 mL, under 5 % of it).  Open to the scan's end the left lung
    # also reaches, it is lung; a piece as small that is not open to an end still goes.
    spacing = (3.0, 1.0, 1.0)
    hu = np.full((20, 100, 120), 40, np.int16)
    right, left, piece, island = (np.zeros(hu.shape, bool) for _ in range(4))
    right[0:20, 20:80, 10:55] = True
    left[0:20, 20:80, 65:110] = True
    piece[15:20, 5:18, 80:110] = True  # 5.9 mL, 2 mm in front of the left lung, on the last slice
    island[8:13, 5:18, 80:110] = True  # as large, as near, inside the scan
    hu[right | left | piece | island] = -850
    body = np.ones(hu.shape, bool)
    labels = postprocess((right | left | piece).astype(np.float32), spacing, hu=hu, body=body)
    assert (labels[piece] == LEFT_LUNG).all()
    labels = postprocess((right | left | island).astype(np.float32), spacing, hu=hu, body=body)
    assert not labels[island].any()
