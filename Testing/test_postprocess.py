"""3D post-processing on synthetic canonical masks: components, holes, airways, right/left split."""

from __future__ import annotations

import numpy as np
from phantoms import chest
from scipy import ndimage

from FusionLungSegLib.core.masks import fill_holes_axial
from FusionLungSegLib.core.postprocess import (
    LEFT_LUNG,
    RIGHT_LUNG,
    clean_lung_mask,
    postprocess,
    postprocess_with_report,
    remove_central_airways,
    split_right_left,
)

SPACING = (2.0, 1.0, 1.0)


def _lungs(shape=(30, 120, 160), touching=False):
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    gap = 0 if touching else 12
    right = ((x - (80 - 30 - gap / 2)) / 30) ** 2 + ((y - 60) / 45) ** 2 + ((z - 15) / 14) ** 2 < 1
    left = ((x - (80 + 30 + gap / 2)) / 30) ** 2 + ((y - 60) / 45) ** 2 + ((z - 15) / 14) ** 2 < 1
    return right, left


def test_two_separate_lungs_split_by_patient_side():
    right, left = _lungs()
    labels = postprocess((right | left).astype(np.float32), SPACING)
    assert np.array_equal(labels == RIGHT_LUNG, right)  # low x is the patient's right
    assert np.array_equal(labels == LEFT_LUNG, left)


def test_touching_lungs_are_cut_near_the_midline():
    right, left = _lungs(touching=True)
    labels = split_right_left(right | left)
    assert np.mean(labels[right] == RIGHT_LUNG) > 0.97
    assert np.mean(labels[left] == LEFT_LUNG) > 0.97


def test_small_islands_go_and_vessel_holes_are_filled():
    right, left = _lungs()
    mask = right | left
    mask[15, 60, 50] = False  # a vessel inside the right lung
    mask[2, 5:8, 5:8] = True  # a 9-voxel island outside
    cleaned = clean_lung_mask(mask, SPACING)
    assert cleaned[15, 60, 50] and not cleaned[2, 6, 6]


def test_trachea_is_removed_and_lateral_apices_are_kept():
    right, left = _lungs()
    mask = right | left
    z, y, x = np.mgrid[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    trachea = ((x - 80) ** 2 + (y - 40) ** 2 < 8**2) & (z >= 20)
    apex = ((x - 30) ** 2 + (y - 60) ** 2 < 6**2) & (z == 29)
    out = remove_central_airways(mask | trachea | apex, SPACING)
    assert not out[trachea & ~mask].any()
    assert out[apex].all() and np.array_equal(out[mask], mask[mask])


def test_empty_mask_stays_empty():
    assert not postprocess(np.zeros((3, 10, 10), np.float32), SPACING).any()


def _network_mask(p, *parts: str) -> np.ndarray:
    """What a 2D network might call lung on a phantom: the lungs plus the named parts."""
    mask = p.parts["lung_right"] | p.parts["lung_left"]
    for name in parts:
        mask = mask | p.parts[name]
    return mask.astype(np.float32)


def _assert_lungs_exact(labels, p):
    assert np.array_equal(labels == RIGHT_LUNG, p.parts["lung_right"])
    assert np.array_equal(labels == LEFT_LUNG, p.parts["lung_left"])


def test_cushion_air_under_the_patient_is_not_lung():
    # Real failure: the air inside a positioning cushion under the neck was labelled left lung (1.9 L).
    p = chest(cushion=True)
    prob = _network_mask(p, "cushion_air")
    assert p.parts["cushion_air"].sum() > p.parts["lung_left"].sum()  # bigger than a lung: size cannot decide
    labels, report = postprocess_with_report(prob, p.spacing_zyx, hu=p.hu)
    _assert_lungs_exact(labels, p)
    assert report.removed_ml("outside the body") > 0.9 * p.parts["cushion_air"].sum() * np.prod(p.spacing_zyx) / 1e3


def test_stomach_and_colon_gas_under_the_lungs_are_not_lung():
    # Real failure: stomach and colon gas below the diaphragm were labelled left lung.
    p = chest(abdomen_gas=True)
    labels, report = postprocess_with_report(_network_mask(p, "gas"), p.spacing_zyx, hu=p.hu)
    _assert_lungs_exact(labels, p)
    assert report.removed("below the diaphragm")


def test_trachea_above_the_lungs_is_not_lung():
    # Real failure: the trachea at the thoracic inlet was labelled right lung.
    p = chest(trachea=True)
    trachea = (p.hu == -1000) & p.parts["body"]
    labels = postprocess(_network_mask(p) + trachea, p.spacing_zyx, hu=p.hu)
    assert not labels[trachea].any()
    _assert_lungs_exact(labels, p)


def test_no_component_is_kept_for_being_the_largest():
    p = chest(cushion=True)
    only_air = p.parts["cushion_air"].astype(np.float32)  # nothing but cushion air: the largest, and not lung
    assert not postprocess(only_air, p.spacing_zyx, hu=p.hu).any()


def test_lung_bases_at_the_top_of_an_abdominal_scan_win_over_bigger_bowel_gas():
    # An abdomen-and-pelvis scan whose last slices cut through the lung bases: the bases are the lungs
    # even where bowel gas that no lung covers is larger.
    p = chest(slices=30, abdomen_gas=True)
    top = slice(20, 30)  # lungs on 7-24: keep the bases (20-24) and the abdomen below
    hu = p.hu[:25].copy()
    gas = p.parts["gas"][:25].copy()
    gas[:, :, : gas.shape[2] // 2] = False  # one pocket under the left lung ...
    big = np.zeros_like(gas)
    big[0:6, 60:110, 110:150] = True  # ... and a big one far below, away from both lungs
    hu[big] = -990
    lungs = (p.parts["lung_right"] | p.parts["lung_left"])[:25]
    lungs[: top.start] = False
    hu[(p.parts["lung_right"] | p.parts["lung_left"])[:25] & ~lungs] = 40  # the scan's lungs are the bases alone
    prob = (lungs | gas | big).astype(np.float32)
    assert big.sum() > lungs.sum()
    labels = postprocess(prob, p.spacing_zyx, hu=hu)
    assert np.array_equal(labels > 0, lungs)


def test_fast_hole_filling_matches_scipy_slice_by_slice():
    rng = np.random.default_rng(1)
    mask = ndimage.binary_opening(rng.random((12, 50, 70)) > 0.45)
    mask[:, 0, :] |= rng.random((12, 70)) > 0.5  # touching the border
    expected = np.stack([ndimage.binary_fill_holes(m) for m in mask])
    assert np.array_equal(fill_holes_axial(mask), expected)


def test_a_lung_whose_apex_is_much_lower_is_still_a_lung():
    # After an upper lobectomy one apex may lie 5 cm below the other: both are still the lungs.
    p = chest(slices=30)
    left = p.parts["lung_left"].copy()
    top = int(np.flatnonzero(left.any(axis=(1, 2)))[-1])
    left[top - 9 :] = False  # 10 slices of 5 mm lower than the right apex
    p.hu[p.parts["lung_left"] & ~left] = 40  # no lung there (tissue, as after a lobectomy)
    p.parts["lung_left"] = left
    prob = (p.parts["lung_right"] | left).astype(np.float32)
    labels = postprocess(prob, p.spacing_zyx, hu=p.hu)
    _assert_lungs_exact(labels, p)


def test_thin_aerated_crescent_the_network_missed_is_grown_into_but_not_stomach_gas():
    # A 2D network at ~2 mm per pixel misses the thin costophrenic crescents; they are air touching the lung.
    p = chest(abdomen_gas=True)
    lungs = p.parts["lung_right"] | p.parts["lung_left"]
    first = int(np.flatnonzero(lungs.any(axis=(1, 2)))[0])
    network = lungs.copy()
    network[first] = False  # the lowest lung slice missed (5 mm) ...
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    network &= ndimage.binary_erosion(lungs, structure=in_plane, iterations=2)  # ... and a 4 mm rim
    labels, report = postprocess_with_report((network | p.parts["gas"]).astype(np.float32), p.spacing_zyx, hu=p.hu)
    found = labels > 0
    assert found[lungs].mean() > 0.99  # the crescent slices and the rim are back
    assert not found[p.parts["gas"]].any() and report.removed("below the diaphragm")
    assert not (found & ~lungs).any()


def test_growth_stops_at_tissue_and_outside_the_body():
    from FusionLungSegLib.core.body import body_mask
    from FusionLungSegLib.core.postprocess import grow_into_aerated_lung

    p = chest(cushion=True)
    lungs = p.parts["lung_right"] | p.parts["lung_left"]
    body = body_mask(p.hu, p.spacing_zyx)
    seed = lungs & ~ndimage.binary_erosion(lungs, iterations=1)  # only the lungs' surface
    grown = grow_into_aerated_lung(seed, p.hu, body, p.spacing_zyx, distance_mm=200.0)
    assert not grown[p.parts["cushion_air"]].any() and not (grown & ~lungs).any()
    assert grown[lungs].mean() > 0.99


def _right_apex_cut_off(tumour_slices: int):
    """A chest whose right apex (its two highest slices) a tumour of ``tumour_slices`` slices cuts off
    from the rest of the right lung; returns the phantom, the apex and the top slice."""
    p = chest(slices=30)
    right = p.parts["lung_right"]
    top = int(np.flatnonzero(right.any(axis=(1, 2)))[-1])
    apex = right.copy()
    apex[: top - 1] = False
    tumour = right.copy()
    tumour[: top - 1 - tumour_slices] = False
    tumour &= ~apex
    p.hu[tumour] = 40
    p.parts["lung_right"] = right & ~tumour
    return p, apex, top


def test_an_apex_cut_off_by_a_tumour_stays_lung_but_air_beside_it_does_not():
    # Real failure (LUNG1-001): a tumour in the right upper lobe and slices the network missed cut the right
    # apex (30 mL, 15 mm above the rest of the lung) off its lung; it was removed as "far from the lungs".
    p, apex, top = _right_apex_cut_off(tumour_slices=3)  # 15 mm of tumour between the apex and the rest
    size_mm = 256 * 1.95
    y, x = (np.mgrid[:256, :256] + 0.5) * 1.95
    beside = np.zeros(p.hu.shape, bool)  # an air pocket above the left lung but lateral to its footprint
    beside[top - 1 : top + 1] = (y - size_mm * 0.45) ** 2 + (x - (size_mm / 2 + 0.85 * 170)) ** 2 < 8**2
    p.hu[beside] = -900
    labels, report = postprocess_with_report(_network_mask(p) + beside, p.spacing_zyx, hu=p.hu)
    _assert_lungs_exact(labels, p)
    assert (labels[apex] == RIGHT_LUNG).all()
    assert not labels[beside].any() and report.removed("far from the lungs")


def test_the_upper_half_of_a_scan_keeps_a_lung_whose_apex_a_tumour_cut_off():
    # Real failure (the upper half of LUNG1-001): the right apex, cut off by a tumour, is the only right-side
    # candidate near the scan's top, and the rest of the right lung (950 mL) starts lower than the left
    # lung's apex window; the apex was taken for the right lung and the lung itself removed as "far from
    # the lungs".
    p, apex, _ = _right_apex_cut_off(tumour_slices=5)  # 25 mm: the rest of the lung starts 35 mm below the top
    labels, report = postprocess_with_report(_network_mask(p), p.spacing_zyx, hu=p.hu)
    _assert_lungs_exact(labels, p)
    assert not report.removed("far from the lungs")


def test_label3d_uses_two_bytes_when_the_labels_fit_and_four_when_not():
    from scipy import ndimage

    from FusionLungSegLib.core.masks import CONN6, label3d, per_label

    rng = np.random.default_rng(0)
    mask = rng.random((6, 40, 40)) > 0.6
    labels, n = label3d(mask)
    ref, n_ref = ndimage.label(mask, structure=CONN6)
    assert labels.dtype == np.uint16 and n == n_ref
    np.testing.assert_array_equal(labels, ref)
    np.testing.assert_array_equal(per_label(labels, n), np.bincount(ref.ravel(), minlength=n + 1)[1:])
    many = np.zeros((1, 600, 600), bool)
    many[0, ::2, ::2] = True  # 90 000 isolated voxels: more labels than uint16 holds
    labels, n = label3d(many)
    assert n == 90000 and labels.dtype == np.int32 and labels.max() == 90000


def _two_lungs_and_a_trachea():
    """Two lung blocks (-850 HU) in soft tissue, the trachea's lumen (-1000) between them, and aerated tissue
    (-600) from the right lung to the lumen; ``body`` fills the image."""
    hu = np.full((20, 100, 160), 40, np.int16)
    right, left, lumen, gap = (np.zeros(hu.shape, bool) for _ in range(4))
    right[2:18, 20:80, 20:70] = True
    left[2:18, 20:80, 90:140] = True
    z, y, x = np.mgrid[:20, :100, :160]
    lumen[(z >= 10) & ((y - 50) ** 2 + (x - 80) ** 2 < 6**2)] = True
    gap[10:20, 46:55, 70:75] = True
    hu[right | left] = -850
    hu[gap] = -600
    hu[lumen] = -1000
    return hu, right, left, lumen, np.ones(hu.shape, bool)


def test_lungs_do_not_grow_into_the_airway_the_rules_removed():
    # Real failure (LUNG1-001): the trachea the network found was removed as airway, then the right lung grew
    # into its air next to it, joined to it, and the lumen was labelled right lung.
    hu, right, left, lumen, body = _two_lungs_and_a_trachea()
    labels = postprocess((right | left | lumen).astype(np.float32), SPACING, hu=hu, body=body)
    assert not labels[lumen].any()
    assert (labels[right] == RIGHT_LUNG).all() and (labels[left] == LEFT_LUNG).all()


def test_the_lungs_edge_takes_the_partly_aerated_pixels_around_it():
    # Lung contours (radiotherapy's, LUNG1-001's) run through the pixels that are partly lung: one pixel ring
    # at -300 HU around a lung is lung, the ring beyond it (-100 HU) and soft tissue are not.
    hu, right, left, lumen, body = _two_lungs_and_a_trachea()
    hu[lumen] = 40
    partly = np.zeros(right.shape, bool)
    for z in range(2, 18):
        ring = ndimage.binary_dilation(right[z]) & ~right[z]
        partly[z] = ring
        hu[z][ring] = -300
        hu[z][ndimage.binary_dilation(right[z], iterations=2) & ~ring & ~right[z]] = -100
    labels = postprocess((right | left).astype(np.float32), SPACING, hu=hu, body=body)
    assert (labels[partly] == RIGHT_LUNG).all()
    assert np.count_nonzero(labels == RIGHT_LUNG) == np.count_nonzero(right | partly)
    assert np.count_nonzero(labels == LEFT_LUNG) == np.count_nonzero(left)
    bare = postprocess((right | left).astype(np.float32), SPACING, hu=hu, body=body, rim_hu=None)
    assert np.count_nonzero(bare == RIGHT_LUNG) == np.count_nonzero(right)
    assert np.array_equal(labels[bare > 0], bare[bare > 0])  # the rim comes after the sides, never changes them


def test_the_rim_between_two_lungs_close_together_does_not_join_their_sides():
    # Real failure (LungPETCTDx, a ROI around one lung): the rim grown before the sides were decided closed the
    # 2-pixel gap between the lung and the other lung's part in view, and the part took the lung's side.
    spacing = (3.0, 1.0, 1.0)
    hu = np.full((30, 120, 100), 40, np.int16)
    lung, part, gap = (np.zeros(hu.shape, bool) for _ in range(3))
    lung[2:28, 20:100, 5:80] = True
    part[8:26, 30:70, 82:100] = True  # the other lung's part at the image's edge
    gap[8:26, 30:70, 80:82] = True
    hu[lung | part] = -850
    hu[gap] = -300
    labels = postprocess((lung | part).astype(np.float32), spacing, hu=hu, body=np.ones(hu.shape, bool))
    assert (labels[lung] == RIGHT_LUNG).all() and (labels[part] == LEFT_LUNG).all()
    assert (labels[gap] > 0).all()
