"""Network forward time per slice for every architecture, side by side in one process (issue 13).

Rounds alternate between the architectures, so a shared, noisy machine slows all of them alike; the
median of the rounds is reported.  PyTorch, fp32, CPU threads as given, random weights (the cost does not
depend on them).  Usage: python bench/arch_speed.py [--sizes 160 320] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from FusionLungSegLib.hardware import cpu_info
from FusionLungSegLib.model import ARCHITECTURES, build_model, count_parameters


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 320])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {name: build_model(key).eval() for key, name in ARCHITECTURES.items()}
    times: dict = {name: {s: [] for s in args.sizes} for name in models}
    with torch.inference_mode():
        for size in args.sizes:
            x = torch.randn(args.batch_size, 1, size, size)
            for model in models.values():
                model(x)  # warm-up
            for _ in range(args.rounds):
                for name, model in models.items():
                    t = time.perf_counter()
                    model(x)
                    times[name][size].append((time.perf_counter() - t) / args.batch_size)
    result = {
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "seconds_per_slice": {n: {s: round(statistics.median(v), 4) for s, v in t.items()} for n, t in times.items()},
        "parameters": {n: count_parameters(m) for n, m in models.items()},
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
