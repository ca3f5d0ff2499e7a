"""Network forward time per slice for every architecture, side by side in one process (issue 13).

Rounds alternate between the architectures, so a shared, noisy machine slows all of them alike; the
median of the rounds is reported.  PyTorch, fp32 (and bf16 autocast with ``--precision fp32 bf16``), CPU
threads as given, random weights (the cost does not depend on them); FusionLungNet without its refinement
module is timed too, and the enhancement stage (``train --enhance``) per 512x512 slice.
Usage: python bench/arch_speed.py [--sizes 160 320] [--precision fp32 bf16] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from FusionLungSegLib.engines.hardware import cpu_info
from FusionLungSegLib.nets.preprocess import enhance_slice
from FusionLungSegLib.nets.registry import ARCHITECTURES, build_model, count_parameters


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 320])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {name: build_model(key).eval() for key, name in ARCHITECTURES.items()}
    models["FusionLungNet without refinement"] = build_model("fusionlungnet", refinement=False).eval()
    runs = [(p, s) for p in args.precision for s in args.sizes]
    times: dict = {name: {f"{p} {s}": [] for p, s in runs} for name in models}
    with torch.inference_mode():
        for precision, size in runs:
            x = torch.randn(args.batch_size, 1, size, size)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                for model in models.values():
                    model(x)  # warm-up
                for _ in range(args.rounds):
                    for name, model in models.items():
                        t = time.perf_counter()
                        model(x)
                        times[name][f"{precision} {size}"].append((time.perf_counter() - t) / args.batch_size)
    rng = np.random.default_rng(0)
    ct = rng.normal(-700, 300, (512, 512)).astype(np.float32)
    enhance = []
    for _ in range(5):
        t = time.perf_counter()
        enhance_slice(ct)
        enhance.append(time.perf_counter() - t)
    result = {
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "seconds_per_slice": {n: {s: round(statistics.median(v), 4) for s, v in t.items()} for n, t in times.items()},
        "enhancement_stage_seconds_per_512px_slice": round(statistics.median(enhance), 4),
        "parameters": {n: count_parameters(m) for n, m in models.items()},
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
