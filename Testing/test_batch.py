"""The headless batch script, run as a user would (plain Python; a loop over the library, no Slicer needed)."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, SAMPLE_DICOM, make_phantom

SCRIPT = REPO / "Resources" / "Scripts" / "FusionLungSegBatch.py"


def _run(args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_batch_over_files_and_dicom_folder_with_one_bad_case(tmp_path, random_weights):
    scans = tmp_path / "scans"
    scans.mkdir()
    img, _ = make_phantom(np.diag([1.0, 1.0, -1.0]))
    sitk.WriteImage(img, str(scans / "phantom.nrrd"))
    (scans / "broken.nii.gz").write_bytes(b"not a scan")
    shutil.copytree(SAMPLE_DICOM, scans / "sample_dicom")
    out = tmp_path / "out"
    r = _run(
        [
            "--input",
            str(scans),
            "--output",
            str(out),
            "--device",
            "cpu",
            "--weights",
            str(random_weights),
            "--input-size",
            "64",
            "--precision",
            "fp32",
            "--nifti",
        ],
        tmp_path,
    )
    assert r.returncode == 1, r.stdout + r.stderr  # one case failed
    rows = {row["case"]: row for row in csv.DictReader(open(out / "report.csv"))}
    assert set(rows) == {"phantom", "broken", "sample_dicom"}
    assert rows["broken"]["status"] == "failed" and "cannot read image" in rows["broken"]["error"]
    for ok in ("phantom", "sample_dicom"):
        assert rows[ok]["status"] == "ok", rows[ok]
        assert float(rows[ok]["seconds"]) >= 0 and rows[ok]["right_lung_ml"] != ""
        assert rows[ok]["qc_ok"] in ("yes", "no")
        assert (out / f"{ok}.seg.nrrd").is_file() and (out / f"{ok}.nii.gz").is_file()
    assert rows["sample_dicom"]["qc_ok"] == "no" and rows["sample_dicom"]["qc_flags"]  # two slices: never ok
    labels = sitk.ReadImage(str(out / "phantom.nii.gz"))
    assert labels.GetSize() == img.GetSize() and np.allclose(labels.GetDirection(), img.GetDirection())
    assert np.allclose(labels.GetOrigin(), img.GetOrigin(), atol=1e-4)
    # Same labels as the library gives on the file itself, and the same segmentation in the .seg.nrrd.
    from FusionLungSegLib.segmenter import LungSegmenter

    direct = LungSegmenter(weights=random_weights, device="cpu", input_size=64, progress=False).segment(img)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(direct))
    slicerio = pytest.importorskip("slicerio")
    segmentation = slicerio.read_segmentation(str(out / "phantom.seg.nrrd"))
    assert [s["name"] for s in segmentation["segments"]] == ["right lung", "left lung"]
    assert not list(out.glob(".tmp-*"))


def test_batch_with_missing_input_exits_non_zero(tmp_path):
    r = _run(["--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")], tmp_path)
    assert r.returncode != 0
    assert "input not found" in r.stderr + r.stdout
