"""precision auto|fp32|bf16: bf16 autocast around the forward pass, and bf16 vs fp32 parity on real CT.

On a CPU without bf16 matrix units bf16 is emulated and several times slower
than fp32, so the parity runs on a few lung slices only.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import DATA, SAMPLE_DICOM, require
from torch import nn

from FusionLungSegLib.engines import hardware
from FusionLungSegLib.nets import weights as W
from FusionLungSegLib.segmenter import LungSegmenter

#: C3N-00247 (99 slices of 3 mm) holds lung on slices 2-91; three of them, apex to base.
C3N = "dev/C3N-00247_chest_ct.nii.gz"
C3N_LUNG_SLICES = [25, 50, 75]


class DtypeProbe(nn.Module):
    """Records the dtype its convolution computes in; 'lung' where the input is dark."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)
        self.seen = []

    def forward(self, x):
        y = self.conv(x)
        self.seen.append(y.dtype)
        return (0.2 - y) * 50.0


def _segmenter(precision, model=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # explicit bf16 on a CPU without bf16 units warns that it is slow
        return LungSegmenter(model=model, device="cpu", progress=False, precision=precision, **kwargs)


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_sets_the_forward_pass_dtype_and_probabilities_stay_fp32(precision, dtype):
    probe = DtypeProbe()
    seg = _segmenter(precision, model=probe, input_size=32)
    assert seg.precision == seg.precision_requested == precision
    prob = seg.engine.probabilities(torch.rand(2, 1, 32, 32))
    assert probe.seen == [dtype]
    assert prob.dtype == torch.float32 and prob.shape == (2, 1, 32, 32)


def test_auto_follows_the_cpu(monkeypatch):
    for units, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(hardware, "cpu_info", lambda units=units: {"bf16_matrix_units": units})
        assert LungSegmenter(model=DtypeProbe(), device="cpu", input_size=32, progress=False).precision == expected


def test_explicit_bf16_without_units_warns(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: {"bf16_matrix_units": False, "name": "AVX2 CPU"})
    monkeypatch.setattr(hardware, "describe_cpu", lambda info=None: "AVX2 CPU")
    with pytest.warns(UserWarning, match="AVX2 CPU.*slower than fp32"):
        LungSegmenter(model=DtypeProbe(), device="cpu", input_size=32, progress=False, precision="bf16")


def test_segment_and_bench_report_the_precision(random_weights, tmp_path, capsys):
    from FusionLungSegLib.cli import main

    out = tmp_path / "lungs.nii.gz"
    args = [str(SAMPLE_DICOM), str(out), "--weights", str(random_weights), "--device", "cpu", "--quiet"]
    assert main(["segment", *args, "--png", "none", "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "fp32"
    bench = ["bench", "--device", "cpu", "--input-size", "64", "--slices", "2", "--weights", str(random_weights)]
    assert main([*bench, "--precision", "auto"]) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out)
    expected = "bf16" if hardware.cpu_info()["bf16_matrix_units"] else "fp32"
    assert result["precision"] == expected and result["backend"] == "torch"
    assert f"precision {expected}" in printed.err


# ---------------------------------------------------------------- parity with the bundled weights
bundled = pytest.mark.skipif(not W.BUNDLED_SHA256, reason="no trained weights are bundled")


@pytest.fixture(scope="module")
def fp32_and_bf16():
    return _segmenter("fp32"), _segmenter("bf16")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def _assert_parity(image, fp32_and_bf16, what):
    fp32, bf16 = (sitk.GetArrayFromImage(seg.segment(image)) for seg in fp32_and_bf16)
    assert (fp32 > 0).sum() > 1000, f"{what}: fp32 finds no lungs, so the parity says nothing"
    for name, a, b in (("lungs", fp32 > 0, bf16 > 0), ("right", fp32 == 1, bf16 == 1), ("left", fp32 == 2, bf16 == 2)):
        assert _dice(a, b) >= 0.995, f"{what}: bf16 vs fp32 Dice of the {name} {_dice(a, b):.4f} < 0.995"


@bundled
def test_bf16_matches_fp32_on_lung_slices_of_a_real_volume(fp32_and_bf16):
    from FusionLungSegLib.io import read_image

    image = read_image(require(DATA / C3N))
    arr = sitk.GetArrayViewFromImage(image)[C3N_LUNG_SLICES]
    part = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    part.SetSpacing(image.GetSpacing())
    part.SetDirection(image.GetDirection())
    part.SetOrigin(image.GetOrigin())
    _assert_parity(part, fp32_and_bf16, f"C3N-00247 slices {C3N_LUNG_SLICES}")


@bundled
def test_bf16_matches_fp32_on_the_bundled_sample(fp32_and_bf16):
    from FusionLungSegLib.io import read_image

    _assert_parity(read_image(SAMPLE_DICOM), fp32_and_bf16, "bundled sample")
