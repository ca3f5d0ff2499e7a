"""The HU-threshold baseline: the same pipeline with "air inside the body" in place of the network."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from conftest import SAMPLE_DICOM
from phantoms import chest

from FusionLungSegLib.cli import main
from FusionLungSegLib.core.metrics import dice
from FusionLungSegLib.core.postprocess import LEFT_LUNG, RIGHT_LUNG
from FusionLungSegLib.segmenter import HUThresholdSegmenter


def _image(p) -> sitk.Image:
    img = sitk.GetImageFromArray(p.hu)  # canonical [z, y, x] = LPS with the identity direction
    img.SetSpacing(tuple(float(s) for s in reversed(p.spacing_zyx)))
    return img


def test_threshold_finds_the_lungs_and_the_post_processing_drops_gas_cushion_and_trachea():
    p = chest(slices=30, cushion=True, abdomen_gas=True, trachea=True)
    image = _image(p)
    before = sitk.GetArrayFromImage(image).copy()
    result = HUThresholdSegmenter().run(image)
    labels = sitk.GetArrayFromImage(result.labels)
    assert dice(labels == RIGHT_LUNG, p.parts["lung_right"]) > 0.99
    assert dice(labels == LEFT_LUNG, p.parts["lung_left"]) > 0.99
    assert not labels[p.parts["gas"] | p.parts["cushion_air"]].any()
    assert any("removed" in flag for flag in result.qc["flags"])  # 67 mL of abdominal gas: said, not hidden
    assert np.array_equal(sitk.GetArrayFromImage(image), before)  # the input is not modified


def test_cli_segment_with_the_threshold_baseline(tmp_path, capsys):
    out = tmp_path / "lungs.nii.gz"
    assert main(["segment", str(SAMPLE_DICOM), str(out), "--method", "hu-threshold", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert report["right_lung_ml"] > 10 and report["left_lung_ml"] > 5  # the sample's two slices hold both lungs
    assert set(np.unique(labels)) == {0, 1, 2}


def test_cli_refuses_weights_with_the_threshold_baseline(tmp_path, capsys):
    code = main(
        ["segment", str(SAMPLE_DICOM), str(tmp_path / "o.nii.gz"), "--method", "hu-threshold", "--weights", "model.pt"]
    )
    assert code == 2 and "uses no weights" in capsys.readouterr().err
