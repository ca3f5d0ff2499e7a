"""The optional OpenVINO engine: the rules that pick it, its masks against torch's, and 'auto' among three engines."""

from __future__ import annotations

import json

import pytest
import torch
from test_onnx_backend import FakeClock, SmallNet, _assert_same_masks, bundled_segmenters, c3n_lung_slices

from FusionLungSegLib.engines import hardware
from FusionLungSegLib.engines import onnx as OB
from FusionLungSegLib.engines import selection as SEL
from FusionLungSegLib.nets import weights as W
from FusionLungSegLib.segmenter import LungSegmenter

needs_ov = pytest.mark.skipif(
    not SEL.openvino_available(), reason="openvino, onnx and onnxruntime not all installed (pip install '.[openvino]')"
)


def test_resolve_backend_with_openvino(monkeypatch):
    monkeypatch.delenv("FUSIONLUNGSEG_BACKEND", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(SEL, "available", lambda: True)
    monkeypatch.setattr(SEL, "openvino_available", lambda: True)
    monkeypatch.setattr(hardware, "cpu_info", lambda: {"bf16_matrix_units": False})
    assert SEL.engines_for(cpu, "bf16") == []  # no bf16 units: OpenVINO bf16 is no candidate
    with pytest.raises(ValueError, match="bf16 only on CPUs with bf16 units"):
        SEL.resolve_backend("openvino", cpu, "bf16")
    monkeypatch.setattr(hardware, "cpu_info", lambda: {"bf16_matrix_units": True})
    assert SEL.engines_for(cpu, "fp32") == ["onnxruntime", "openvino"]
    assert SEL.engines_for(cpu, "bf16") == ["openvino"] and SEL.engines_for(cuda, "fp32") == []
    assert SEL.resolve_backend("openvino", cpu, "bf16") == "openvino"
    assert SEL.resolve_backend("auto", cpu, "bf16") == "auto"  # torch bf16 against OpenVINO bf16
    assert SEL.resolve_backend("auto", cpu, "int8") == "auto"  # ONNX Runtime against OpenVINO
    assert SEL.resolve_backend("onnxruntime", cpu, "int8") == "onnxruntime"
    assert SEL.resolve_backend("auto", cuda, "bf16") == "torch"
    with pytest.raises(ValueError, match="backend openvino: it runs on the CPU only"):
        SEL.resolve_backend("openvino", cuda, "fp32")
    monkeypatch.setenv("FUSIONLUNGSEG_BACKEND", "openvino")
    assert SEL.resolve_backend("auto", cpu, "int8") == "openvino"  # the variable pins the engine
    monkeypatch.setenv("FUSIONLUNGSEG_BACKEND", "torch")
    assert SEL.resolve_backend("auto", cpu, "int8") == "auto"  # int8 asked for by name: the torch pin yields
    monkeypatch.delenv("FUSIONLUNGSEG_BACKEND")
    monkeypatch.setattr(SEL, "openvino_available", lambda: False)
    assert (
        SEL.resolve_backend("auto", cpu, "bf16") == "torch"
        and SEL.resolve_backend("auto", cpu, "int8") == "onnxruntime"
    )
    with pytest.raises(
        ValueError, match=r"pip install 'fusionlungseg\[openvino\]'.*pip_install\('onnx onnxruntime openvino'\)"
    ):
        SEL.resolve_backend("openvino", cpu, "fp32")
    with pytest.raises(ValueError, match=r"backend openvino: .*fusionlungseg\[openvino\]"):
        LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", backend="openvino", progress=False)


@needs_ov
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("bf16", 0.1), ("int8", 0.1)])
def test_openvino_runs_the_cached_graphs_close_to_torch(engine_cache, monkeypatch, precision, tolerance):
    if precision == "bf16" and not hardware.cpu_info()["bf16_matrix_units"]:
        pytest.skip("OpenVINO bf16 needs a CPU with bf16 units (amx_bf16, avx512_bf16); this one has none")
    built = []
    real_quantize = OB.quantize_graph
    monkeypatch.setattr(OB, "quantize_graph", lambda *a: built.append(a[1]) or real_quantize(*a))
    ref = LungSegmenter(
        model=SmallNet(), device="cpu", precision="fp32", input_size=64, backend="torch", progress=False
    )
    ov = LungSegmenter(
        model=SmallNet(), device="cpu", precision=precision, input_size=64, backend="openvino", progress=False
    )
    assert (ov.backend, ov.precision, type(ov.engine).__name__) == ("openvino", precision, "OpenVinoEngine")
    x = ov.calibration_inputs()
    p_ref, p_ov = ref.engine.probabilities(x), ov.engine.probabilities(x)
    assert p_ov.shape == p_ref.shape and float((p_ref - p_ov).abs().max()) < tolerance
    assert float(((p_ref > 0.5) != (p_ov > 0.5)).float().mean()) < 0.01
    # ONNX Runtime finds the graph OpenVINO ran: one export (and one int8 copy), whichever engine came first
    ort = LungSegmenter(
        model=SmallNet(),
        device="cpu",
        precision="fp32" if precision == "bf16" else precision,
        input_size=64,
        backend="onnxruntime",
        progress=False,
    )
    ort.engine.probabilities(x)
    assert len(list(engine_cache.glob("*.onnx"))) == (2 if precision == "int8" else 1) and len(built) == (
        precision == "int8"
    )
    compiled = list((engine_cache / "openvino").glob("*")) if (engine_cache / "openvino").is_dir() else []
    assert bool(compiled) == (precision != "fp32")  # OpenVINO keeps compiled int8 and bf16 graphs, not fp32


@needs_ov
@pytest.mark.parametrize("fastest", ["torch", "onnxruntime", "openvino"])
def test_auto_times_all_three_engines_and_remembers(engine_cache, fastest):
    seg = LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", input_size=64, batch_size=2, progress=False)
    auto, clock = seg.engine, FakeClock()
    assert seg.backend == "auto" and [e.runtime for e in auto.candidates] == ["torch", "onnxruntime", "openvino"]
    auto.clock = clock
    seconds = {"torch": 0.3, "onnxruntime": 0.3, "openvino": 0.3, fastest: 0.1}

    def timed(name, fn):
        def run(x):
            clock.now += seconds[name] * x.shape[0]
            return fn(x)

        return run

    for engine in auto.candidates:
        engine.logits = timed(engine.runtime, engine.logits)
    seg.engine.probabilities(torch.rand(2, 1, 64, 64))
    assert seg.backend == fastest and auto.chosen.runtime == fastest
    assert auto.measured == pytest.approx(seconds)
    graphs = [e for e in auto.candidates if e.runtime != "torch"]
    assert all((e._session is None) == (e.runtime != fastest) for e in graphs)  # the others freed
    (key,) = json.loads((engine_cache / "backend-verdicts.json").read_text())
    assert "torch fp32 vs onnxruntime fp32 vs openvino fp32" in key and "openvino 20" in key
    later = LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", input_size=64, batch_size=2, progress=False)
    later.engine.probabilities(torch.rand(2, 1, 64, 64))
    assert later.backend == fastest and later.engine.measured is None  # the stored verdict


@needs_ov
def test_int8_by_name_chooses_between_the_two_int8_engines_without_torch(engine_cache):
    seg = LungSegmenter(model=SmallNet(), device="cpu", precision="int8", input_size=64, batch_size=2, progress=False)
    candidates = seg.engine.candidates
    assert seg.backend == "auto" and [(e.runtime, e.precision) for e in candidates] == [
        ("onnxruntime", "int8"),
        ("openvino", "int8"),
    ]  # torch cannot run int8: no candidate
    out = seg.engine.probabilities(torch.rand(2, 1, 64, 64))
    assert seg.backend in ("onnxruntime", "openvino") and seg.precision == "int8" and out.shape == (2, 1, 64, 64)
    assert set(seg.engine.measured) == {"onnxruntime", "openvino"}


@needs_ov
def test_bench_compares_openvino_beside_the_others(engine_cache):
    from FusionLungSegLib.evaluation import bench

    seg = LungSegmenter(model=SmallNet(), device="cpu", precision="fp32", input_size=64, batch_size=2, progress=False)
    result = bench.compare_backends(seg, repeats=1)
    names = ["openvino", "openvino_int8"] + (["openvino_bf16"] if hardware.cpu_info()["bf16_matrix_units"] else [])
    for name in names:
        assert result[f"{name}_seconds_per_slice"] > 0 and result[f"{name}_decisions_differing"] < 0.01, name
    assert result["openvino_max_probability_difference"] < 1e-4
    text = bench.summary({**_SUMMARY, "backends": result})
    assert "openvino int8:" in text


_SUMMARY = {
    "cpu": {"name": "test CPU", "cores": 2, "isa": "avx2", "bf16_flags": [], "bf16_matrix_units": False},
    "device": "cpu",
    "precision": "fp32",
    "backend": "auto",
    "threads": 2,
    "input_size": 64,
    "batch_size": 2,
    "network_seconds_per_slice": 0.1,
    "network_slices_per_second": 10.0,
    "pipeline_seconds": 1.0,
    "pipeline_slices": 10,
    "pipeline_seconds_per_slice": 0.1,
    "peak_rss_mb_above_input": 100.0,
}


# ---------------------------------------------------------------- masks with the bundled weights
@pytest.fixture(scope="module")
def torch_and_openvino(tmp_path_factory):
    if not (SEL.openvino_available() and W.BUNDLED_SHA256):
        pytest.skip("needs openvino, onnx and onnxruntime, and the bundled weights")
    configs = (("fp32", "torch"), ("fp32", "openvino"), ("bf16", "openvino"), ("int8", "openvino"))
    bf16_units = hardware.cpu_info()["bf16_matrix_units"]  # OpenVINO bf16 needs them
    yield from bundled_segmenters(tmp_path_factory, [(p, b) for p, b in configs if p != "bf16" or bf16_units])


@pytest.mark.slow
def test_openvino_masks_match_torch_on_the_sample(torch_and_openvino):
    """OpenVINO in fp32, bf16 and int8 against fp32 torch: Dice >= 0.995 per lung, same QC verdict."""
    from conftest import SAMPLE_DICOM

    from FusionLungSegLib.io import read_image

    _assert_same_masks(read_image(SAMPLE_DICOM), torch_and_openvino, "bundled sample")


@pytest.mark.slow
def test_openvino_masks_match_torch_on_a_real_volume(torch_and_openvino):
    _assert_same_masks(c3n_lung_slices(), torch_and_openvino, "C3N-00247 slices 30-70")
