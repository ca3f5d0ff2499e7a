"""How fast the network could run on this CPU at best: operations per slice and the bounds they set
(``bench/cpu_ceiling.py``)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["network_gflop_per_slice", "speed_ceiling"]


def network_gflop_per_slice(model: torch.nn.Module, input_size: int) -> float:
    """Floating-point operations of one forward pass on one (1, 1, S, S) slice, in GFLOP (2 per multiply-add,
    as ``torch.utils.flop_counter`` counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 1, input_size, input_size))
    return counter.get_total_flops() / 1e9


def speed_ceiling(run: dict, gflop_per_slice: float, peak_gops: dict[str, float]) -> dict:
    """How fast a ``bench --compare-lungmask`` run could have been on its CPU, for each precision.

    ``run`` is the bench JSON; ``peak_gops`` the rate (GOP/s) the CPU's best convolution kernels reach per
    precision.  "network at peak" is the time the network's arithmetic needs on the slices that ran, every
    operation at that rate: no real network is faster.  Adding the run's measured other stages (read, body
    mask, post-processing, write) gives the best whole-pipeline time with those stages as they are.
    Ratios are lungmask's seconds over ours; "efficiency" is the run's network rate over the peak of the
    precision it ran in.
    """
    slices_run = run["pipeline_slices"] - (run.get("pipeline_slices_skipped") or 0)
    other = sum(v for k, v in run["pipeline_stages_seconds"].items() if k != "slices")
    lungmask = run["lungmask"]["pipeline_seconds"]
    out = {
        "input": Path(run["input"]).name,
        "input_size": run["input_size"],
        "precision": run["precision"],
        "slices_run": slices_run,
        "gflop_per_slice": round(gflop_per_slice, 2),
        "other_stages_seconds": round(other, 3),
        "lungmask_seconds": lungmask,
        "measured_seconds": run["pipeline_seconds"],
        "measured_speedup": round(lungmask / run["pipeline_seconds"], 2),
    }
    ran_at = peak_gops.get(run["precision"])
    if ran_at:
        out["network_efficiency"] = round(gflop_per_slice / run["network_seconds_per_slice"] / ran_at, 3)
    for precision, gops in peak_gops.items():
        network = slices_run * gflop_per_slice / gops
        out[precision] = {
            "peak_gops": round(gops, 1),
            "network_at_peak_seconds": round(network, 3),
            "speedup_bound_network_only": round(lungmask / network, 2),
            "speedup_bound_with_other_stages": round(lungmask / (network + other), 2),
        }
    return out
