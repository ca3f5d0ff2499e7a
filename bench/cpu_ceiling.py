"""How fast FusionLungNet could run on this CPU at best, against the measured runs (issue 12).

Measures the rate (GOP/s) this CPU's best convolution kernels reach in each precision on convolutions of
the network's own shapes (fp32: PyTorch channels-last and ONNX Runtime, the faster; bf16: PyTorch autocast;
int8: ONNX Runtime QLinearConv, uint8 activations, int8 weights), counts the network's operations per slice,
and for each ``bench --compare-lungmask`` JSON given computes the time the network's arithmetic needs on the
slices that ran with every operation at that rate, and the largest ratio to lungmask that allows.
Usage: python bench/cpu_ceiling.py [--threads 2] [--json OUT] RUN.json [RUN.json ...]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date

import numpy as np
import torch

from FusionLungSegLib.engines.hardware import cpu_info
from FusionLungSegLib.evaluation.ceiling import network_gflop_per_slice, speed_ceiling
from FusionLungSegLib.nets.registry import build_model

# (batch, in channels, out channels, kernel, side): convolutions of FusionLungNet at 160 px, batch 4
SHAPES = [(4, 64, 64, 3, 40), (4, 256, 256, 3, 40), (4, 512, 512, 3, 20), (4, 512, 2048, 1, 10), (4, 64, 64, 3, 160)]


def _best(run, repeats: int = 5) -> float:
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def _flop(b, cin, cout, k, side) -> float:
    return 2.0 * b * cin * cout * k * k * side * side


def torch_rates(dtype: torch.dtype | None) -> list[float]:
    rates = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        for b, cin, cout, k, side in SHAPES:
            conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False).to(memory_format=torch.channels_last)
            x = torch.randn(b, cin, side, side).contiguous(memory_format=torch.channels_last)
            rates.append(_flop(b, cin, cout, k, side) / _best(lambda conv=conv, x=x: conv(x)) / 1e9)
    return rates


def ort_rates(threads: int, quantized: bool) -> list[float]:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    rates = []
    for b, cin, cout, k, side in SHAPES:
        pads = [k // 2] * 4
        if quantized:
            inits = [
                numpy_helper.from_array(rng.integers(-127, 127, (cout, cin, k, k)).astype(np.int8), "w"),
                numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
                numpy_helper.from_array(np.array(128, np.uint8), "xz"),
                numpy_helper.from_array(np.full(cout, 0.01, np.float32), "ws"),
                numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
                numpy_helper.from_array(np.array(0.5, np.float32), "ys"),
                numpy_helper.from_array(np.array(128, np.uint8), "yz"),
            ]
            node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=pads)
            x = rng.integers(0, 255, (b, cin, side, side)).astype(np.uint8)
            elem = TensorProto.UINT8
        else:
            inits = [numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) * 0.05).astype(np.float32), "w")]
            node = helper.make_node("Conv", ["x", "w"], ["y"], pads=pads)
            x = rng.standard_normal((b, cin, side, side)).astype(np.float32)
            elem = TensorProto.FLOAT
        graph = helper.make_graph(
            [node],
            "conv",
            [helper.make_tensor_value_info("x", elem, list(x.shape))],
            [helper.make_tensor_value_info("y", elem, None)],
            inits,
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        rates.append(_flop(b, cin, cout, k, side) / _best(lambda sess=sess, x=x: sess.run(None, {"x": x})) / 1e9)
    return rates


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", help="JSON files of fusionlungseg bench --compare-lungmask")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rates = {"torch fp32": torch_rates(None), "torch bf16": torch_rates(torch.bfloat16)}
    try:
        rates["onnxruntime fp32"] = ort_rates(args.threads, quantized=False)
        rates["onnxruntime int8"] = ort_rates(args.threads, quantized=True)
    except ImportError:
        print("onnxruntime or onnx not installed: no int8 peak (pip install -e '.[onnx]')")
    peak = {
        "fp32": max(max(rates["torch fp32"]), max(rates.get("onnxruntime fp32", [0]))),
        "bf16": max(rates["torch bf16"]),
    }
    if "onnxruntime int8" in rates:
        peak["int8"] = max(rates["onnxruntime int8"])
    model = build_model("fusionlungnet").eval()
    runs = [json.load(open(path)) for path in args.runs]
    gflop = {s: network_gflop_per_slice(model, s) for s in sorted({r["input_size"] for r in runs})}
    result = {
        "date": date.today().isoformat(),
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "threads": args.threads,
        "conv_shapes": [dict(zip(("batch", "in", "out", "kernel", "side"), s)) for s in SHAPES],
        "conv_gops": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        "peak_gops": {k: round(v, 1) for k, v in peak.items()},
        "gflop_per_slice": {str(s): round(g, 2) for s, g in gflop.items()},
        "runs": [speed_ceiling(r, gflop[r["input_size"]], peak) for r in runs],
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
