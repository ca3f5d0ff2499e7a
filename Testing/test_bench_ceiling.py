"""The speed-ceiling arithmetic of bench/cpu_ceiling.py, on injected figures (no timing)."""

import pytest

from FusionLungSegLib.evaluation.ceiling import network_gflop_per_slice, speed_ceiling
from FusionLungSegLib.nets.registry import build_model

RUN = {
    "input": "/data/LUNG1.nii.gz",
    "input_size": 160,
    "precision": "int8",
    "pipeline_slices": 134,
    "pipeline_slices_skipped": 34,
    "pipeline_seconds": 4.0,
    "network_seconds_per_slice": 0.02,
    "pipeline_stages_seconds": {"read": 0.2, "body_mask_and_skip": 0.3, "slices": 3.0, "postprocess_and_qc": 0.5},
    "lungmask": {"pipeline_seconds": 60.0},
}


def test_ceiling_from_slices_run_flops_and_peak():
    c = speed_ceiling(RUN, gflop_per_slice=30.0, peak_gops={"int8": 2000.0, "bf16": 1000.0})
    assert c["slices_run"] == 100 and c["other_stages_seconds"] == 1.0
    assert c["measured_speedup"] == 15.0
    assert c["network_efficiency"] == 0.75  # 30 GFLOP / 0.02 s = 1500 GOP/s of 2000
    assert c["int8"]["network_at_peak_seconds"] == 1.5  # 100 slices x 30 GFLOP / 2000 GOP/s
    assert c["int8"]["speedup_bound_network_only"] == 40.0
    assert c["int8"]["speedup_bound_with_other_stages"] == 24.0  # 60 / (1.5 + 1.0)
    assert c["bf16"]["network_at_peak_seconds"] == 3.0 and c["bf16"]["speedup_bound_with_other_stages"] == 15.0


def test_ceiling_without_a_peak_for_the_runs_precision():
    c = speed_ceiling({**RUN, "pipeline_slices_skipped": None}, 30.0, {"fp32": 500.0})
    assert c["slices_run"] == 134 and "network_efficiency" not in c
    assert c["fp32"]["network_at_peak_seconds"] == pytest.approx(134 * 30 / 500, abs=1e-3)


def test_flops_grow_with_the_square_of_the_input():
    model = build_model("resunet18").eval()
    small, large = network_gflop_per_slice(model, 32), network_gflop_per_slice(model, 64)
    assert small > 0 and large == pytest.approx(4 * small, rel=0.01)
