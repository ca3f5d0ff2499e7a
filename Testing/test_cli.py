"""The command line on the bundled sample CT and on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_DICOM

from FusionLungSegLib.cli import main
from FusionLungSegLib.io import read_image


def test_help_explains_units_and_formats(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = capsys.readouterr().out
    for word in ("Hounsfield", "DICOM", "NRRD", "1 = right lung", "mL"):
        assert word in text


def test_segment_sample_dicom_writes_labels_on_the_input_grid_and_a_png(random_weights, tmp_path, capsys):
    out = tmp_path / "out" / "lungs.nii.gz"
    code = main(
        ["segment", str(SAMPLE_DICOM), str(out), "--weights", str(random_weights), "--device", "cpu", "--quiet"]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["png"].endswith("lungs.png") and (tmp_path / "out" / "lungs.png").stat().st_size > 1000
    assert set(report["qc"]) == {"ok", "flags", "notes", "measures"} and isinstance(report["qc"]["ok"], bool)
    ct, lab = read_image(SAMPLE_DICOM), sitk.ReadImage(str(out))
    assert lab.GetSize() == ct.GetSize() == (512, 512, 2)
    assert np.allclose(lab.GetOrigin(), ct.GetOrigin()) and np.allclose(lab.GetSpacing(), ct.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(lab))) <= {0, 1, 2}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["segment", "/no/such/ct.nii.gz", "x.nii.gz"], "input not found"),
        (["evaluate"], "PRED and REF"),
    ],
)
def test_bad_input_gives_a_specific_error(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_unreadable_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"this is not an image")
    assert main(["segment", str(bad), str(tmp_path / "o.nii.gz")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_evaluate_two_label_maps(tmp_path, capsys):
    ref = np.zeros((4, 20, 20), np.uint8)
    ref[:, 2:10, 2:8] = 1
    ref[:, 2:10, 12:18] = 2
    pred = ref.copy()
    pred[:, 9, :] = 0
    for name, arr in (("p.nii.gz", pred), ("r.nii.gz", ref)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(tmp_path / name))
    out = tmp_path / "m.json"
    assert main(["evaluate", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    row = result["cases"][0]
    assert row["recall"] == pytest.approx(84 / 96) and row["precision"] == 1.0
    assert row["dice_right"] == pytest.approx(2 * 42 / (42 + 48))
    assert row["ref_volume_ml"] == pytest.approx(384 * 2 / 1000)
    assert "mean" in capsys.readouterr().out


def test_bench_prints_and_writes_figures(random_weights, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--device", "cpu", "--input-size", "64", "--slices", "3", "--weights", str(random_weights)]
    assert main([*args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("network_seconds_per_slice", "pipeline_seconds_per_300_slices", "peak_rss_mb", "torch", "threads"):
        assert key in result, key
    assert result["pipeline_slices"] == 3 and result["network_seconds_per_slice"] > 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == result
    assert printed.err.startswith(f"CPU: {result['cpu']['name']}")


def test_bench_side_by_side_with_lungmask_on_a_real_file(random_weights, tmp_path, capsys):
    pytest.importorskip("lungmask", reason="lungmask is not installed (pip install lungmask)")
    import SimpleITK as sitk
    from conftest import SAMPLE_DICOM

    ct = tmp_path / "sample.nrrd"  # two real 512x512 CT slices
    sitk.WriteImage(sitk.ReadImage(sorted(str(p) for p in SAMPLE_DICOM.glob("*.dcm"))), str(ct))
    args = ["bench", "--device", "cpu", "--input-size", "64", "--input", str(ct), "--weights", str(random_weights)]
    assert main([*args, "--compare-lungmask", "--threads", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    # The report's shape only: the arithmetic is tested on a fake clock in test_bench.py, and no
    # assertion here may depend on how fast this machine runs either pipeline.
    assert result["input"] == str(ct) and result["pipeline_slices"] == 2 and result["threads"] == 2
    lm = result["lungmask"]
    assert set(lm) >= {"version", "weights", "batch_size", "pipeline_seconds", "pipeline_seconds_per_slice"}
    assert lm["pipeline_seconds"] >= 0 and isinstance(result["speedup_vs_lungmask"], float)
    stages = {"read", "checks_and_reorient", "body_mask_and_skip", "slices", "postprocess_and_qc", "write"}
    assert set(result["pipeline_stages_seconds"]) == stages
    assert result["input_volume_mb"] == pytest.approx(2 * 512 * 512 * 2 / 2**20, rel=0.01)


def test_evaluate_model_on_validation_slices(random_weights, tmp_path, capsys):
    from conftest import DATA, require

    data = require(DATA / "finding-lungs-2d.tar.gz")
    out = tmp_path / "val.json"
    args = ["evaluate", "--slices", "validation", "--data", str(data), "--weights", str(random_weights)]
    assert main([*args, "--device", "cpu", "--postprocess", "--limit", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["case"] for r in result["cases"]] == ["ID_0000_Z_0142.tif", "ID_0007_Z_0211.tif", "ID_0019_Z_0088.tif"]
    assert set(result["summary"]) >= {"iou", "f1", "precision", "recall", "accuracy", "mcc"}
    assert "mean ± sd" in capsys.readouterr().out


def test_segment_flags_a_two_slice_scan_and_still_exits_0(tmp_path, capsys):
    # The bundled sample is two slices through the lungs: cut off at both ends, which QC must say.
    out = tmp_path / "lungs.nii.gz"
    assert (
        main(["segment", str(SAMPLE_DICOM), str(out), "--device", "cpu", "--quiet", "--json", str(tmp_path / "r.json")])
        == 0
    )
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert report["qc"]["ok"] is False
    assert any("cut off" in flag for flag in report["qc"]["flags"])
    assert "warning: check this result" in captured.err


def test_inspect_prints_ml_per_slice_range_and_writes_a_strip(tmp_path, capsys):
    ct = np.full((12, 40, 40), -1000, np.int16)
    labels = np.zeros(ct.shape, np.uint8)
    labels[2:6, 10:20, 5:15] = 1
    labels[4:10, 10:20, 25:35] = 2
    paths = []
    for name, arr in (("ct.nrrd", ct), ("lab.nrrd", labels)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(tmp_path / name))
        paths.append(str(tmp_path / name))
    assert main(["inspect", *paths, "--ranges", "3", "--every", "2"]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines()[1:4]]
    assert [r[0] for r in rows] == ["0", "4", "8"]
    right, left = sum(float(r[3]) for r in rows), sum(float(r[4]) for r in rows)
    assert right == pytest.approx(4 * 100 * 2 / 1000) and left == pytest.approx(6 * 100 * 2 / 1000)
    assert (tmp_path / "lab_strip.png").stat().st_size > 500


def test_evaluate_counts_lung_on_slices_where_the_reference_has_none():
    from FusionLungSegLib.evaluation.evaluate import evaluate_label_images

    ref = np.zeros((6, 20, 20), np.uint8)
    ref[1:4, 5:15, 2:8] = 1
    ref[1:4, 5:15, 12:18] = 2
    pred = ref.copy()
    pred[5, 5:10, 12:16] = 2  # 20 voxels of "lung" on a slice the reference leaves empty
    images = []
    for arr in (pred, ref):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 2.5))
        images.append(img)
    row = evaluate_label_images(*images)
    assert row["ml_on_ref_free_slices"] == pytest.approx(20 * 2.5 / 1000)
    assert row["ref_free_slices"] == 3
    assert row["dice_right"] == 1.0 and row["hd95_right_mm"] == 0.0 and row["hd95_left_mm"] > 0
