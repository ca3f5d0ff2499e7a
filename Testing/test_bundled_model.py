"""The bundled model on real CT: checksum, and Dice on held-out Kaggle slices (fast: two slices)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, SAMPLE_DICOM, require

from FusionLungSegLib.core.metrics import dice
from FusionLungSegLib.nets import weights as W

pytestmark = pytest.mark.skipif(not W.BUNDLED_SHA256, reason="no trained weights are bundled yet")


@pytest.fixture(scope="module")
def segmenter():
    from FusionLungSegLib.segmenter import LungSegmenter

    return LungSegmenter(device="cpu", progress=False)


def test_bundled_file_matches_its_checksum():
    assert W.sha256_of(W.bundled_weights_path()) == W.BUNDLED_SHA256


@pytest.mark.slow
def test_bundled_model_segments_held_out_real_slices(segmenter):
    from FusionLungSegLib.training.data import load_finding_lungs

    names = list(segmenter.meta["validation"])[:2]
    assert names, "the bundled file records its validation slices"
    slices = load_finding_lungs(require(DATA / "finding-lungs-2d.tar.gz"), names=names)
    for i in range(len(slices)):
        mask = segmenter.predict_canonical(slices.images[i : i + 1], slices.spacing_yx[i])[0]
        assert dice(mask, slices.masks[i]) >= 0.95, slices.names[i]


def test_bundled_model_finds_both_lungs_on_the_sample_ct(segmenter):
    import SimpleITK as sitk

    from FusionLungSegLib.io import read_image

    image = read_image(SAMPLE_DICOM)
    labels = sitk.GetArrayFromImage(segmenter.segment(image))
    area_mm2 = np.prod(image.GetSpacing()[:2])
    for label in (1, 2):
        per_slice_cm2 = (labels == label).sum(axis=(1, 2)) * area_mm2 / 100
        assert np.all(per_slice_cm2 > 20), (label, per_slice_cm2)
    # Right lung (label 1) is on the patient's right: smaller LPS x, i.e. lower column index here.
    cols = np.nonzero(labels)[2]
    assert np.nonzero(labels == 1)[2].mean() < cols.mean() < np.nonzero(labels == 2)[2].mean()


DEV_VOLUMES = [
    "dev/C3N-00247_chest_ct.nii.gz",
    "dev/LungPETCTDx_A0001_CT_5mm_kernelB.nii.gz",
    "dev/NSCLCRadiomics_LUNG1-001_CT.nii.gz",
    "dev/totalsegmentator_abdomen_dicom",
]


@pytest.mark.slow
@pytest.mark.parametrize("path", DEV_VOLUMES, ids=lambda p: p.split("/")[-1].split(".")[0])
def test_skipping_lung_free_slices_changes_nothing_on_every_dev_volume(segmenter, path):
    """Labels with and without skipping the network on slices far from lung-sized air differ by under 1 mL.

    Every second slice of each real dev volume, to keep the test short; a volume where nothing is skipped
    is identical by construction.  The network runs once on all slices; the skipped run is the same
    output with the skipped slices left empty, through the same post-processing.
    """
    import SimpleITK as sitk

    from FusionLungSegLib.core.body import body_mask, slices_that_may_hold_lung
    from FusionLungSegLib.core.geometry import AxialReorientation
    from FusionLungSegLib.core.postprocess import postprocess
    from FusionLungSegLib.io import read_image

    image = read_image(require(DATA / path))
    reo = AxialReorientation.from_image(image)
    hu = np.ascontiguousarray(reo.to_canonical(sitk.GetArrayFromImage(image))[::2])
    spacing = (2 * reo.spacing_zyx[0], *reo.spacing_zyx[1:])
    body = body_mask(hu, spacing)
    run = slices_that_may_hold_lung(hu, body, spacing)
    if run.all():
        return
    mask = segmenter.predict_canonical(hu, spacing[1:], body=body)
    full = postprocess(mask, spacing, body=body)
    mask[~run] = False
    skipped = postprocess(mask, spacing, body=body)
    differ_ml = np.count_nonzero(full != skipped) * np.prod(spacing) / 1000
    assert differ_ml < 1.0, f"{path}: labels differ over {differ_ml:.1f} mL with {np.sum(~run)} slices skipped"
