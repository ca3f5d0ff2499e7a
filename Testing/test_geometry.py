"""Reorientation and whole-pipeline geometry, checked in physical (LPS) coordinates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_phantom, rotation

from FusionLungSegLib.core.geometry import AxialReorientation, voxel_centres_lps
from FusionLungSegLib.segmenter import LungSegmenter

PERMS = [np.eye(3)[:, list(p)] for p in itertools.permutations(range(3))]


def _directions():
    rng = np.random.default_rng(7)
    cases = {"identity": np.eye(3), "flip_z": np.diag([1, 1, -1.0]), "flip_xy": np.diag([-1, -1, 1.0])}
    cases["sagittal"] = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)  # slices along x
    cases["coronal"] = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)  # slices along y
    for n in range(3):
        p = PERMS[rng.integers(len(PERMS))] @ np.diag(rng.choice([-1.0, 1.0], 3))
        cases[f"random_perm_flip_{n}"] = p
    cases["oblique_20deg"] = rotation([1, 0.5, 0.2], 20)
    cases["oblique_sagittal_15deg"] = rotation([0, 1, 1], 15) @ cases["sagittal"]
    return cases


DIRECTIONS = _directions()


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_canonical_axes_point_to_patient_axes(name):
    d = DIRECTIONS[name]
    img, _ = make_phantom(d, size=(6, 5, 4))
    reo = AxialReorientation.from_image(img)
    arr = sitk.GetArrayFromImage(img)
    can = reo.to_canonical(arr)
    # Round trip is exact.
    np.testing.assert_array_equal(reo.from_canonical(can), arr)
    # Moving one step along each canonical axis moves (mostly) along +S, +P, +L in LPS.
    kji = np.stack(np.meshgrid(*(np.arange(n) for n in arr.shape), indexing="ij"), -1)
    can_kji = reo.to_canonical(kji)  # canonical array of original indices
    base = voxel_centres_lps(img, can_kji[0, 0, 0][None])[0]
    for c, patient_axis in ((0, 2), (1, 1), (2, 0)):
        step = [0, 0, 0]
        step[c] = 1
        moved = voxel_centres_lps(img, can_kji[tuple(step)][None])[0] - base
        assert moved[patient_axis] > 0.5 * np.linalg.norm(moved), (name, c, moved)
    assert sorted(reo.spacing_zyx) == sorted(img.GetSpacing())


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_labels_land_on_the_phantom_lungs_in_physical_space(name, threshold_net):
    img, lung_fn = make_phantom(DIRECTIONS[name])
    before = sitk.GetArrayFromImage(img).copy()
    seg = LungSegmenter(model=threshold_net, device="cpu", input_size=64, progress=False)
    out = seg.segment(img)
    # Same grid as the input.
    assert out.GetSize() == img.GetSize()
    assert np.allclose(out.GetSpacing(), img.GetSpacing())
    assert np.allclose(out.GetOrigin(), img.GetOrigin())
    assert np.allclose(out.GetDirection(), img.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), before)  # input untouched
    labels = sitk.GetArrayFromImage(out)
    kji = np.argwhere(np.ones(labels.shape, bool))
    truth = lung_fn(voxel_centres_lps(out, kji)).reshape(labels.shape)
    sure = truth >= 0
    agreement = np.mean(labels[sure] == truth[sure])
    assert agreement > 0.995, f"{name}: only {agreement:.4f} of voxels agree"
    # Right lung (label 1) has the more negative LPS x (patient's right).
    for label, sign in ((1, -1), (2, 1)):
        centroid = voxel_centres_lps(out, np.argwhere(labels == label)).mean(0)
        assert np.sign(centroid[0]) == sign, (name, label, centroid)


def test_sitk_resample_agrees_for_a_flipped_copy(threshold_net):
    """The same anatomy stored with a flipped z axis gives the same labels after resampling."""
    img, _ = make_phantom(np.eye(3))
    flipped = sitk.Flip(img, [False, False, True])  # ITK keeps physical positions, flips storage
    seg = LungSegmenter(model=threshold_net, device="cpu", input_size=64, progress=False)
    a = seg.segment(img)
    b = sitk.Resample(seg.segment(flipped), a, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
