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

from FusionLungSegLib.engines import factory
from FusionLungSegLib.engines import onnx as OB
from FusionLungSegLib.engines import selection as SEL
from FusionLungSegLib.nets import weights as W
from FusionLungSegLib.resources import cache_dir
from FusionLungSegLib.segmenter import LungSegmenter

needs_ort = pytest.mark.skipif(not SEL.available(), reason="onnxruntime/onnx not installed (pip install '.[onnx]')")


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


@pytest.fixture(autouse=True)
def without_openvino(monkeypatch):
    """ONNX Runtime alone, as without the openvino extra (test_openvino_backend.py covers both)."""
    monkeypatch.setattr(SEL, "openvino_available", lambda: False)


def test_resolve_backend_rules(monkeypatch):
    monkeypatch.delenv("FUSIONLUNGSEG_BACKEND", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(SEL, "available", lambda: True)
    assert SEL.resolve_backend("auto", cpu, "fp32") == "auto"
    assert SEL.resolve_backend("onnxruntime", cpu, "fp32") == "onnxruntime"
    assert SEL.resolve_backend("torch", cpu, "fp32") == "torch"
    assert SEL.resolve_backend(None, cuda, "bf16") == "torch"  # auto: ONNX Runtime runs CPU fp32 only
    assert SEL.resolve_backend("auto", cpu, "bf16") == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        SEL.resolve_backend("onnxruntime", cuda, "fp32")
    with pytest.raises(ValueError, match="fp32 and int8 only"):
        SEL.resolve_backend("onnxruntime", cpu, "bf16")
    # int8 runs in ONNX Runtime on the CPU only, whatever the variable says
    assert SEL.resolve_backend("auto", cpu, "int8") == "onnxruntime"
    with pytest.raises(ValueError, match="ONNX Runtime or OpenVINO only"):
        SEL.resolve_backend("torch", cpu, "int8")
    with pytest.raises(ValueError, match="CPU only"):
        SEL.resolve_backend("auto", cuda, "int8")
    with pytest.raises(ValueError, match="auto, torch, onnxruntime, openvino"):
        SEL.resolve_backend("tensorrt", cpu, "fp32")
    monkeypatch.setenv("FUSIONLUNGSEG_BACKEND", "torch")
    assert SEL.resolve_backend("auto", cpu, "fp32") == "torch"
    assert SEL.resolve_backend("onnxruntime", cpu, "fp32") == "onnxruntime"  # explicit wins over the variable
    monkeypatch.delenv("FUSIONLUNGSEG_BACKEND")
    monkeypatch.setattr(SEL, "available", lambda: False)
    assert SEL.resolve_backend("auto", cpu, "fp32") == "torch"
    with pytest.raises(ValueError, match="pip install"):
        SEL.resolve_backend("onnxruntime", cpu, "fp32")
    with pytest.raises(ValueError, match="precision int8 needs onnxruntime"):
        SEL.resolve_backend("auto", cpu, "int8")
    monkeypatch.setenv("FUSIONLUNGSEG_BACKEND", "torch")
    monkeypatch.setattr(SEL, "available", lambda: True)
    assert SEL.resolve_backend("auto", cpu, "int8") == "onnxruntime"  # asked for by name: the variable yields


def test_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSIONLUNGSEG_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FUSIONLUNGSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fusionlungseg"


def test_weights_key(random_weights, monkeypatch):
    assert OB.weights_key(None, None, None)() == W.BUNDLED_SHA256
    calls = []
    real = W.sha256_of
    monkeypatch.setattr(W, "sha256_of", lambda path: calls.append(path) or real(path))
    shared = OB.weights_key(random_weights, None, None)  # what the engines of one segmenter share
    assert shared() == shared() == real(random_weights) and len(calls) == 1  # the file is hashed once
    monkeypatch.undo()
    assert OB.weights_key(random_weights, None, None)() == W.sha256_of(random_weights)
    assert OB.weights_key(random_weights, "ABC", None)() == "abc"
    a, b = OB.weights_key(None, None, SmallNet())(), OB.weights_key(None, None, SmallNet())()
    assert a == b and len(a) == 64
    other = SmallNet()
    with torch.no_grad():
        other.out.bias += 1
    assert OB.weights_key(None, None, other)() != a


@needs_ort
def test_onnxruntime_matches_torch_and_the_graph_is_cached_by_weights(engine_cache):
    torch_seg = LungSegmenter(
        model=SmallNet(), device="cpu", precision="fp32", input_size=64, progress=False, backend="torch"
    )
    ort_seg = LungSegmenter(
        model=SmallNet(), device="cpu", precision="fp32", input_size=64, progress=False, backend="onnxruntime"
    )
    assert ort_seg.backend == "onnxruntime" and torch_seg.backend == "torch"
    for size in (64, 96):  # one graph, any multiple of 32
        x = torch.rand(3, 1, size, size)
        np.testing.assert_allclose(ort_seg.engine.probabilities(x), torch_seg.engine.probabilities(x), atol=1e-5)
    graphs = list(engine_cache.glob("*.onnx"))
    assert len(graphs) == 1 and OB.state_sha256(ort_seg.model) in graphs[0].name
    mtime = graphs[0].stat().st_mtime_ns
    again = LungSegmenter(
        model=SmallNet(), device="cpu", precision="fp32", input_size=64, progress=False, backend="onnxruntime"
    )
    again.engine.probabilities(torch.rand(1, 1, 64, 64))
    assert [p.stat().st_mtime_ns for p in engine_cache.glob("*.onnx")] == [mtime]  # reused, not exported again
    assert not list(engine_cache.glob(".tmp-*"))


@needs_ort
def test_int8_graph_is_quantized_from_real_ct_once_and_close_to_fp32(engine_cache, monkeypatch):
    built = []
    real_quantize = OB.quantize_graph
    monkeypatch.setattr(OB, "quantize_graph", lambda *a: built.append(a[2]) or real_quantize(*a))
    fp32 = LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", input_size=64, progress=False)
    int8 = LungSegmenter(model=SmallNet(), device="cpu", precision="int8", input_size=64, progress=False)
    assert (int8.precision, int8.backend, type(int8.engine).__name__) == ("int8", "onnxruntime", "OnnxRuntimeEngine")
    x = int8.calibration_inputs()
    assert x.shape == (2, 1, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0  # the sample's 2 slices
    p32, p8 = fp32.engine.probabilities(x), int8.engine.probabilities(x)
    assert float((p32 - p8).abs().max()) < 0.1 and float(((p32 > 0.5) != (p8 > 0.5)).float().mean()) < 0.01
    assert len(built) == 1 and torch.equal(built[0], x)  # calibrated on the sample as the segmenter prepares it
    names = sorted(g.name for g in engine_cache.glob("*.onnx"))
    assert len(names) == 2 and names[0] == names[1][: -len(".onnx")] + f"-int8-q{OB.INT8_FORMAT}-64px.onnx"
    again = LungSegmenter(model=SmallNet(), device="cpu", precision="int8", input_size=64, progress=False)
    again.engine.probabilities(x)
    assert len(built) == 1 and not list(engine_cache.glob(".tmp-*"))  # cached: not quantized again


@needs_ort
def test_a_run_that_builds_the_graph_says_so_in_its_progress(engine_cache):
    from conftest import make_phantom

    image, _ = make_phantom(np.eye(3))
    messages = []
    for _ in range(2):
        seg = LungSegmenter(model=SmallNet(), device="cpu", precision="int8", input_size=64, progress=False)
        seg.run(image, progress=lambda fraction, message: messages.append(message))
    preparing = [m for m in messages if m.startswith("preparing ONNX Runtime (int8")]
    slices = [m for m in messages if m.startswith("slice ")]
    assert len(preparing) == 1 and messages.index(preparing[0]) < messages.index(slices[0]), messages  # first run


def test_int8_is_refused_where_it_cannot_run(monkeypatch):
    with pytest.raises(ValueError, match="ONNX Runtime or OpenVINO only"):
        LungSegmenter(model=SmallNet(), device="cpu", precision="int8", backend="torch", progress=False)
    monkeypatch.setattr(SEL, "available", lambda: False)
    with pytest.raises(ValueError, match=r"pip install 'fusionlungseg\[onnx\]'"):
        LungSegmenter(model=SmallNet(), device="cpu", precision="int8", progress=False)


def test_auto_times_int8_only_for_trained_sizes_on_the_cpu(monkeypatch):
    monkeypatch.setattr(SEL, "available", lambda: True)
    monkeypatch.delenv("FUSIONLUNGSEG_BACKEND", raising=False)
    cpu = torch.device("cpu")
    for meta, backend, expected in [
        ({"input_size": 224, "min_input_size": 160}, "auto", True),
        ({"input_size": 224, "min_input_size": 160}, "onnxruntime", True),
        ({"input_size": 224, "min_input_size": 160}, "torch", False),  # pinned
        ({"input_size": 160}, "auto", False),  # 192 px is outside what the weights were trained at
        ({}, "auto", False),  # a network given in memory: int8 only when asked for
    ]:
        assert factory.int8_may_pay(meta, cpu, 192, backend) is expected, (meta, backend)
    monkeypatch.setenv("FUSIONLUNGSEG_BACKEND", "torch")
    assert factory.int8_may_pay({"input_size": 224}, cpu, 224, "auto") is False
    monkeypatch.delenv("FUSIONLUNGSEG_BACKEND")
    assert factory.int8_may_pay({"input_size": 224}, torch.device("cuda"), 224, "auto") is False


@needs_ort
@pytest.mark.parametrize("torch_s, int8_s, expected", [(0.3, 0.1, "int8"), (0.1, 0.3, "fp32")])
def test_auto_precision_takes_int8_when_it_is_faster(engine_cache, monkeypatch, torch_s, int8_s, expected):
    monkeypatch.setattr(factory, "int8_may_pay", lambda *args: True)
    monkeypatch.setattr(factory, "resolve_precision", lambda *a, **k: "fp32")  # as on a CPU without bf16 units
    seg = LungSegmenter(model=SmallNet(), device="cpu", precision="auto", input_size=64, batch_size=2, progress=False)
    auto, clock = seg.engine, FakeClock()
    torch_engine, engine = auto.candidates
    assert seg.backend == "auto" and (torch_engine.precision, engine.precision) == ("fp32", "int8")
    auto.clock = clock
    real_torch, real_ort = torch_engine.logits, engine.logits

    def timed(fn, seconds):
        def run(x):
            clock.now += seconds * x.shape[0]
            return fn(x)

        return run

    torch_engine.logits, engine.logits = timed(real_torch, torch_s), timed(real_ort, int8_s)
    seg.engine.probabilities(torch.rand(2, 1, 64, 64))
    assert seg.precision == expected and seg.backend == ("onnxruntime" if expected == "int8" else "torch")
    (key,) = json.loads((engine_cache / "backend-verdicts.json").read_text())
    assert "torch fp32 vs onnxruntime int8" in key  # not mistaken for the fp32-against-fp32 verdict


@needs_ort
def test_auto_runs_torch_when_the_onnx_graph_cannot_be_built(engine_cache, monkeypatch):
    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(OB, "quantize_graph", broken)
    monkeypatch.setattr(factory, "int8_may_pay", lambda *args: True)
    seg = LungSegmenter(model=SmallNet(), device="cpu", precision="auto", input_size=64, progress=False)
    ref = LungSegmenter(model=SmallNet(), device="cpu", precision=seg.precision, backend="torch", progress=False)
    x = torch.rand(2, 1, 64, 64)
    with pytest.warns(UserWarning, match="ONNX Runtime could not be prepared.*disk full.*running in torch"):
        out = seg.engine.probabilities(x)
    assert seg.backend == "torch" and seg.engine.chosen.runtime == "torch" and seg.precision in ("fp32", "bf16")
    torch.testing.assert_close(out, ref.engine.probabilities(x))
    with pytest.raises(OSError, match="disk full"):  # asked for by name: the error is the user's to see
        LungSegmenter(
            model=SmallNet(), device="cpu", precision="int8", input_size=64, progress=False
        ).engine.probabilities(x)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@needs_ort
@pytest.mark.parametrize("torch_s, ort_s, expected", [(0.3, 0.2, "onnxruntime"), (0.2, 0.3, "torch")])
def test_auto_keeps_the_faster_engine_and_remembers(engine_cache, torch_s, ort_s, expected):
    seg = LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", input_size=64, batch_size=2, progress=False)
    assert seg.backend == "auto"
    auto, clock = seg.engine, FakeClock()
    torch_engine, engine = auto.candidates
    auto.clock = clock
    calls = []
    real_torch, real_ort = torch_engine.logits, engine.logits

    def timed(name, fn, seconds):
        def run(x):
            calls.append(name)
            clock.now += seconds * x.shape[0]
            return fn(x)

        return run

    torch_engine.logits = timed("torch", real_torch, torch_s)
    engine.logits = timed("onnxruntime", real_ort, ort_s)
    seg.engine.probabilities(torch.rand(2, 1, 64, 64))
    assert seg.backend == expected
    assert auto.measured == pytest.approx({"torch": torch_s, "onnxruntime": ort_s})
    verdicts = json.loads((engine_cache / "backend-verdicts.json").read_text())
    (entry,) = verdicts.values()
    assert entry["backend"] == expected
    # A new segmenter on this machine takes the stored verdict without measuring again.
    later = LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", input_size=64, batch_size=2, progress=False)
    calls.clear()
    later.engine.probabilities(torch.rand(2, 1, 64, 64))
    assert later.backend == expected and later.engine.measured is None


@needs_ort
def test_bench_compares_engines_side_by_side(engine_cache, tmp_path):
    from FusionLungSegLib.evaluation import bench

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
        "onnxruntime_int8_seconds_per_slice",
        "onnxruntime_int8_speedup",
        "int8_max_probability_difference",
        "int8_decisions_differing",
    }
    assert result["max_probability_difference"] < 1e-5
    assert result["int8_decisions_differing"] < 0.01 and result["onnxruntime_int8_seconds_per_slice"] > 0
    with pytest.raises(RuntimeError, match="fp32"):
        bench.compare_backends(
            LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", progress=False, backend="torch")
        )


# ---------------------------------------------------------------- masks with the bundled weights
def bundled_segmenters(tmp_path_factory, configs):
    """For a module fixture to ``yield from``: bundled-model segmenters, one per (precision, backend),
    whose graphs go to a throw-away cache folder for the module's tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FUSIONLUNGSEG_CACHE", str(tmp_path_factory.mktemp("engine-cache")))
    try:
        yield tuple(LungSegmenter(device="cpu", progress=False, precision=p, backend=b) for p, b in configs)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def torch_and_onnx(tmp_path_factory):
    if not (SEL.available() and W.BUNDLED_SHA256):
        pytest.skip("needs onnxruntime and onnx, and the bundled weights")
    yield from bundled_segmenters(
        tmp_path_factory, (("fp32", "torch"), ("fp32", "onnxruntime"), ("int8", "onnxruntime"))
    )


def _dice(a, b):
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def _assert_same_masks(image, segs, what):
    reference, *others = (seg.run(image) for seg in segs)
    a = sitk.GetArrayFromImage(reference.labels)
    assert (a > 0).sum() > 1000, f"{what}: no lungs found"
    for seg, other in zip(segs[1:], others):
        b = sitk.GetArrayFromImage(other.labels)
        for label in (1, 2):
            assert _dice(a == label, b == label) >= 0.995, f"{what}, {seg.precision} {seg.backend}: label {label}"
        assert other.qc["ok"] == reference.qc["ok"], f"{what}, {seg.precision} {seg.backend}: QC verdict"


@pytest.mark.slow
def test_onnxruntime_masks_match_torch_on_the_sample(torch_and_onnx):
    """fp32 in ONNX Runtime and its int8 copy against fp32 torch (the int8 graph is calibrated on this sample)."""
    from FusionLungSegLib.io import read_image

    _assert_same_masks(read_image(SAMPLE_DICOM), torch_and_onnx, "bundled sample")


def c3n_lung_slices():
    """Ten lung slices (30-70, every fourth) of the real dev volume C3N-00247, as an image with its spacing."""
    from FusionLungSegLib.io import read_image

    image = read_image(require(DATA / "dev" / "C3N-00247_chest_ct.nii.gz"))
    part = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)[30:70:4]))
    part.SetSpacing(image.GetSpacing())
    return part


@pytest.mark.slow
def test_onnxruntime_masks_match_torch_on_a_real_volume(torch_and_onnx):
    _assert_same_masks(c3n_lung_slices(), torch_and_onnx, "C3N-00247 slices 30-70")
