"""3D post-processing on synthetic canonical masks: components, holes, airways, right/left split."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from FusionLungSegLib.postprocess import (
    LEFT_LUNG,
    RIGHT_LUNG,
    _fill_holes_axial,
    body_mask,
    clean_lung_mask,
    postprocess,
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


def _chest_ct(shape=(30, 140, 160)):
    """Canonical HU volume: body (40 HU) holding the two lungs (-850), air outside (-1000),
    and an air pocket inside a thin shell behind the patient (like a cushion or head holder)."""
    right, left = _lungs(shape)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    hu = np.full(shape, -1000, np.int16)
    body = ((x - 80) / 79) ** 2 + ((y - 62) / 57) ** 2 < 1
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    inner = ndimage.binary_erosion(body, structure=in_plane, iterations=2)
    assert not ((right | left) & ~inner).any()  # the lungs lie well inside the body
    hu[body] = 40
    hu[right | left] = -850
    hu[(y >= 122) & (y <= 134) & (x > 38) & (x < 122)] = 300  # the shell, not touching the body
    pocket = (y >= 124) & (y < 133) & (x > 40) & (x < 120)
    hu[pocket] = -900
    return hu, right, left, pocket


def test_body_mask_holds_the_lungs_and_not_the_air_outside():
    hu, right, left, pocket = _chest_ct()
    body = body_mask(hu)
    assert body[right | left].mean() > 0.99
    assert body[pocket].mean() < 0.05


def test_air_outside_the_body_is_dropped_even_when_large():
    hu, right, left, pocket = _chest_ct()
    mask = right | left | pocket  # what a 2D network may call lung
    assert pocket.sum() > 0.05 * right.sum()  # large enough to pass the size rule
    assert clean_lung_mask(mask, SPACING)[pocket].all()  # without the body it stays
    labels = postprocess(mask.astype(np.float32), SPACING, hu=hu)
    assert not labels[pocket].any()
    assert np.array_equal(labels == RIGHT_LUNG, right) and np.array_equal(labels == LEFT_LUNG, left)


def test_fast_hole_filling_matches_scipy_slice_by_slice():
    rng = np.random.default_rng(1)
    mask = ndimage.binary_opening(rng.random((12, 50, 70)) > 0.45)
    mask[:, 0, :] |= rng.random((12, 70)) > 0.5  # touching the border
    expected = np.stack([ndimage.binary_fill_holes(m) for m in mask])
    assert np.array_equal(_fill_holes_axial(mask), expected)
