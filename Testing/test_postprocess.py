"""3D post-processing on synthetic canonical masks: components, holes, airways, right/left split."""

from __future__ import annotations

import numpy as np

from FusionLungSegLib.postprocess import (
    LEFT_LUNG,
    RIGHT_LUNG,
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
