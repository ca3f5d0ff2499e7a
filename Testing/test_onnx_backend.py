"""The optional ONNX Runtime engine: when it is used, the cached graph, the measured 'auto' verdict,
and its masks against torch's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import DATA, SAMPLE_DICOM, require
from torch import nn

from FusionLungSegLib import onnx_backend as OB
from FusionLungSegLib import weights as W
from FusionLungSegLib.inference import LungSegmenter

needs_ort = pytest.mark.skipif(not OB.available(), reason="onnxruntime/onnx not installed (pip install '.[onnx]')")


class SmallNet(nn.Module):
    """A few convolutions, a stride and an upsampling, returning (refined, side) like FusionLungNet."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.down = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        y = torch.relu(self.mid(torch.relu(self.down(x))))
        y = nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        refined = self.out(y) + (0.2 - x) * 20
        return refined, refined * 0.5


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONLUNGSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FUSIONLUNGSEG_BACKEND", raising=False)
    return tmp_path / "cache"


def test_resolve_backend_rules(monkeypatch):
    monkeypatch.delenv("FUSIONLUNGSEG_BACKEND", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(OB, "available", lambda: True)
    assert OB.resolve_backend("auto", cpu, "fp32") == "auto"
    assert OB.resolve_backend("onnxruntime", cpu, "fp32") == "onnxruntime"
    assert OB.resolve_backend("torch", cpu, "fp32") == "torch"
    assert OB.resolve_backend(None, cuda, "bf16") == "torch"  # auto: ONNX Runtime runs CPU fp32 only
    assert OB.resolve_backend("auto", cpu, "bf16") == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        OB.resolve_backend("onnxruntime", cuda, "fp32")
    with pytest.raises(ValueError, match="fp32 only"):
        OB.resolve_backend("onnxruntime", cpu, "bf16")
    with pytest.raises(ValueError, match="auto, torch, onnxruntime"):
        OB.resolve_backend("openvino", cpu, "fp32")
    monkeypatch.setenv("FUSIONLUNGSEG_BACKEND", "torch")
    assert OB.resolve_backend("auto", cpu, "fp32") == "torch"
    assert OB.resolve_backend("onnxruntime", cpu, "fp32") == "onnxruntime"  # explicit wins over the variable
    monkeypatch.delenv("FUSIONLUNGSEG_BACKEND")
    monkeypatch.setattr(OB, "available", lambda: False)
    assert OB.resolve_backend("auto", cpu, "fp32") == "torch"
    with pytest.raises(ValueError, match="pip install"):
        OB.resolve_backend("onnxruntime", cpu, "fp32")


def test_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSIONLUNGSEG_CACHE", str(tmp_path / "a"))
    assert OB.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FUSIONLUNGSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert OB.cache_dir() == tmp_path / "xdg" / "fusionlungseg"


def test_weights_key(random_weights):
    assert OB.weights_key(None, None, None)() == W.BUNDLED_SHA256
    assert OB.weights_key(random_weights, None, None)() == W.sha256_of(random_weights)
    assert OB.weights_key(random_weights, "ABC", None)() == "abc"
    a, b = OB.weights_key(None, None, SmallNet())(), OB.weights_key(None, None, SmallNet())()
    assert a == b and len(a) == 64
    other = SmallNet()
    with torch.no_grad():
        other.out.bias += 1
    assert OB.weights_key(None, None, other)() != a


@needs_ort
def test_onnxruntime_matches_torch_and_the_graph_is_cached_by_weights(cache):
    torch_seg = LungSegmenter(
        model=SmallNet(), device="cpu", precision="fp32", input_size=64, progress=False, backend="torch"
    )
    ort_seg = LungSegmenter(
        model=SmallNet(), device="cpu", precision="fp32", input_size=64, progress=False, backend="onnxruntime"
    )
    assert ort_seg.backend == "onnxruntime" and torch_seg._onnx is None
    for size in (64, 96):  # one graph, any multiple of 32
        x = torch.rand(3, 1, size, size)
        np.testing.assert_allclose(ort_seg._forward(x), torch_seg._forward(x), atol=1e-5)
    graphs = list(cache.glob("*.onnx"))
    assert len(graphs) == 1 and OB.state_sha256(ort_seg.model) in graphs[0].name
    mtime = graphs[0].stat().st_mtime_ns
    again = LungSegmenter(
        model=SmallNet(), device="cpu", precision="fp32", input_size=64, progress=False, backend="onnxruntime"
    )
    again._forward(torch.rand(1, 1, 64, 64))
    assert [p.stat().st_mtime_ns for p in cache.glob("*.onnx")] == [mtime]  # reused, not exported again
    assert not list(cache.glob(".tmp-*"))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@needs_ort
@pytest.mark.parametrize("torch_s, ort_s, expected", [(0.3, 0.2, "onnxruntime"), (0.2, 0.3, "torch")])
def test_auto_keeps_the_faster_engine_and_remembers(cache, torch_s, ort_s, expected):
    seg = LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", input_size=64, batch_size=2, progress=False)
    assert seg.backend == "auto"
    engine, clock = seg._onnx, FakeClock()
    engine.clock = clock
    calls = []
    real_torch, real_ort = seg._torch_logits, engine.logits

    def timed(name, fn, seconds):
        def run(x):
            calls.append(name)
            clock.now += seconds * x.shape[0]
            return fn(x)

        return run

    seg._torch_logits = timed("torch", real_torch, torch_s)
    engine.logits = timed("onnxruntime", real_ort, ort_s)
    seg._forward(torch.rand(2, 1, 64, 64))
    assert seg.backend == expected
    assert engine.measured == pytest.approx({"torch": torch_s, "onnxruntime": ort_s})
    verdicts = json.loads((cache / "backend-verdicts.json").read_text())
    (entry,) = verdicts.values()
    assert entry["backend"] == expected
    # A new segmenter on this machine takes the stored verdict without measuring again.
    later = LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", input_size=64, batch_size=2, progress=False)
    calls.clear()
    later._forward(torch.rand(2, 1, 64, 64))
    assert later.backend == expected and later._onnx.measured is None


@needs_ort
def test_bench_compares_engines_side_by_side(cache, tmp_path):
    from FusionLungSegLib import bench

    seg = LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", input_size=64, batch_size=2, progress=False)
    result = bench.compare_backends(seg, repeats=2)
    assert set(result) == {
        "input_size",
        "batch_size",
        "repeats",
        "torch_seconds_per_slice",
        "onnxruntime_seconds_per_slice",
        "onnxruntime_speedup",
        "max_probability_difference",
    }
    assert result["max_probability_difference"] < 1e-5
    with pytest.raises(RuntimeError, match="fp32"):
        bench.compare_backends(
            LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", progress=False, backend="torch")
        )


# ---------------------------------------------------------------- masks with the bundled weights
@pytest.fixture(scope="module")
def torch_and_onnx(tmp_path_factory):
    if not (OB.available() and W.BUNDLED_SHA256):
        pytest.skip("needs onnxruntime and onnx, and the bundled weights")
    mp = pytest.MonkeyPatch()
    mp.setenv("FUSIONLUNGSEG_CACHE", str(tmp_path_factory.mktemp("onnx-cache")))
    try:
        yield tuple(
            LungSegmenter(device="cpu", progress=False, precision="fp32", backend=b) for b in ("torch", "onnxruntime")
        )
    finally:
        mp.undo()


def _dice(a, b):
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def _assert_same_masks(image, segs, what):
    a, b = (sitk.GetArrayFromImage(seg.segment(image)) for seg in segs)
    assert (a > 0).sum() > 1000, f"{what}: no lungs found"
    for label in (1, 2):
        assert _dice(a == label, b == label) >= 0.995, f"{what}: label {label}"


def test_onnxruntime_masks_match_torch_on_the_sample(torch_and_onnx):
    from FusionLungSegLib.io import read_image

    _assert_same_masks(read_image(SAMPLE_DICOM), torch_and_onnx, "bundled sample")


def test_onnxruntime_masks_match_torch_on_a_real_volume(torch_and_onnx):
    from FusionLungSegLib.io import read_image

    image = read_image(require(DATA / "dev" / "C3N-00247_chest_ct.nii.gz"))
    part = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)[30:70:4]))
    part.SetSpacing(image.GetSpacing())
    _assert_same_masks(part, torch_and_onnx, "C3N-00247 slices 30-70")
