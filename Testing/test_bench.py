"""The bench's arithmetic and report, on a fake clock: no assertion depends on the machine's speed."""

from __future__ import annotations

import sys
import types

import pytest
from conftest import ThresholdNet

from FusionLungSegLib.evaluation import bench
from FusionLungSegLib.segmenter import LungSegmenter


class FakeClock:
    """Time moves only when the test says so."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TimedSegmenter(LungSegmenter):
    """A real segmenter (threshold network) whose batches and volumes take fixed fake times."""

    def __init__(self, clock: FakeClock, batch_seconds: float, segment_stages: dict[str, float]):
        super().__init__(model=ThresholdNet(), device="cpu", input_size=64, batch_size=2, progress=False)
        self.clock, self.batch_seconds, self.segment_stages = clock, batch_seconds, segment_stages
        self._in_segment = False
        engine = self.engine
        run = engine.probabilities

        def timed(x):
            if not self._in_segment:  # batches inside segment() are part of its fixed stage times
                self.clock.advance(self.batch_seconds)
            return run(x)

        engine.probabilities = timed

    def segment(self, image, progress=None, cancel=None):
        self._in_segment = True
        try:
            labels = super().segment(image, progress, cancel)
        finally:
            self._in_segment = False
        self.clock.advance(sum(self.segment_stages.values()))
        self.last_timings = dict(self.segment_stages)
        return labels


STAGES = {"checks_and_reorient": 0.25, "slices": 10.0, "postprocess": 1.75}


def _run(clock, monkeypatch=None, **kwargs):
    seg = TimedSegmenter(clock, batch_seconds=0.5, segment_stages=STAGES)
    return bench.run_bench(slices=3, network_slices=8, segmenter=seg, clock=clock, **kwargs)


def test_figures_are_computed_from_the_clock():
    result = _run(FakeClock())
    # Network alone: 8 slices in 4 timed batches of 2, 0.5 s each (the warm-up batch is not timed).
    assert result["batch_size"] == 2 and result["input_size"] == 64
    assert result["network_seconds_per_slice"] == 0.25
    assert result["network_slices_per_second"] == 4.0
    # Pipeline: the fake clock does not move while reading or writing, so it is the segmenter's 12 s.
    assert result["pipeline_slices"] == 3
    assert result["pipeline_seconds"] == 12.0
    assert result["pipeline_seconds_per_slice"] == 4.0
    assert result["pipeline_seconds_per_300_slices"] == 1200.0
    assert result["pipeline_stages_seconds"] == {"read": 0.0, **STAGES, "write": 0.0}
    assert "speedup_vs_lungmask" not in result and "lungmask" not in result


def test_ratio_to_lungmask_uses_unrounded_times(monkeypatch):
    """The ratio must not be a ratio of rounded figures (issue 12: 20.43 vs 19.25 on a fast machine)."""
    clock = FakeClock()

    def fake_lungmask(src, dst, device, batch_size=20, clock=clock):
        clock.advance(0.123456)
        return {"version": "x", "weights": "random", "batch_size": batch_size, "slices": 3, "seconds": 0.123456}

    monkeypatch.setitem(sys.modules, "lungmask", types.ModuleType("lungmask"))
    monkeypatch.setattr(bench, "time_lungmask", fake_lungmask)
    seg = TimedSegmenter(clock, batch_seconds=0.5, segment_stages={"slices": 0.006172})
    result = bench.run_bench(slices=3, network_slices=2, segmenter=seg, clock=clock, compare_lungmask=True)
    assert result["pipeline_seconds"] == 0.006
    assert result["lungmask"]["pipeline_seconds"] == 0.123
    assert result["lungmask"]["pipeline_seconds_per_slice"] == 0.0412
    assert result["speedup_vs_lungmask"] == round(0.123456 / 0.006172, 2) == 20.0  # rounded figures: 20.5
    assert "seconds" not in result["lungmask"] and "slices" not in result["lungmask"]


def test_pipeline_figures_rounding():
    assert bench.pipeline_figures(12.34567, 3) == {"pipeline_seconds": 12.346, "pipeline_seconds_per_slice": 4.1152}


def test_report_names_the_machine_and_the_settings():
    result = _run(FakeClock())
    for key in ("date", "machine", "cpu_count", "torch", "threads", "device", "weights", "input"):
        assert key in result, key
    assert result["weights"] == "given segmenter" and result["device"] == "cpu"
    assert result["input"] == "synthetic 512x512x3 phantom"
    assert result["input_volume_mb"] == pytest.approx(3 * 512 * 512 * 2 / 2**20, abs=0.1)


def test_report_names_the_cpu_and_its_bf16_units():
    from FusionLungSegLib.engines.hardware import cpu_info

    result = _run(FakeClock())
    assert result["cpu"] == cpu_info()
    text = bench.summary(result)
    assert text.startswith(f"CPU: {cpu_info()['name']}")
    assert "bf16 matrix units" in text and f"{result['threads']} threads" in text
    assert "network: 0.25 s/slice (4.0 slices/s)" in text and "12.0 s for 3 slices" in text
