"""Benchmark: seconds per slice for the network alone and for the whole file-to-file pipeline.

The volume is a synthetic 512x512 chest phantom in HU (body, two lungs and
noise), so the figures do not depend on data being present, or any CT file
(``input_path``).  Peak memory is the process's peak resident set size during
the pipeline (reset before it where Linux allows), and peak CUDA memory on a GPU.
With ``compare_lungmask`` the same file also goes through lungmask's
``LMInferer`` (its U-Net with random weights: R231 cannot be downloaded here,
and the speed does not depend on the weights) in the same run, and the ratio is
reported.

Every duration is read from one clock, ``time.perf_counter`` unless the caller
passes another (tests pass a fake one, so the report's arithmetic is checked
without depending on the machine's speed).  Derived figures (per slice, per
300 slices, the ratio to lungmask) are computed from the unrounded durations.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["synthetic_ct", "run_bench", "time_lungmask", "pipeline_figures", "compare_backends", "summary"]

Clock = Callable[[], float]


def synthetic_ct(slices: int = 300, size: int = 512, seed: int = 0):
    """A ``SimpleITK.Image`` chest phantom, int16 HU, 0.7 x 0.7 x 1.0 mm voxels."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    body = ((yy - 0.5) / 0.38) ** 2 + ((xx - 0.5) / 0.45) ** 2 < 1
    vol = np.empty((slices, size, size), np.int16)
    for z in range(slices):
        t = z / max(1, slices - 1)
        r = 0.1 + 0.15 * np.sin(np.pi * t)
        lung = (((yy - 0.48) / (1.6 * r)) ** 2 + ((xx - 0.32) / r) ** 2 < 1) | (
            ((yy - 0.48) / (1.6 * r)) ** 2 + ((xx - 0.68) / r) ** 2 < 1
        )
        sl = np.where(body, 40, -1000).astype(np.float32)
        sl[lung] = -850
        sl += rng.normal(0, 20, sl.shape).astype(np.float32)
        vol[z] = sl.astype(np.int16)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.7, 0.7, 1.0))
    return img


def _peak_rss_mb() -> float:
    """Peak resident memory in MiB since the last :func:`_reset_peak_rss` (Linux VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB; never reset


def _reset_peak_rss() -> bool:
    """Start a new peak-memory window (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_lungmask(
    src: Path, dst: Path, device: torch.device, batch_size: int = 20, clock: Clock = time.perf_counter
) -> dict:
    """lungmask's whole pipeline file to file (read -> LMInferer.apply -> write), random R231-shaped U-Net.

    The dict holds the unrounded duration under ``seconds``; :func:`run_bench` rounds it for the report.
    """
    import lungmask
    import SimpleITK as sitk
    from lungmask import LMInferer
    from lungmask.resunet import UNet

    logging.getLogger("lungmask").setLevel(logging.WARNING)  # its INFO lines go to stdout, where our JSON goes
    net = UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
    weights = dst.with_name("lungmask_unet_random.pth")
    torch.save(net.state_dict(), weights)
    inferer = LMInferer(
        modelpath=str(weights), force_cpu=device.type != "cuda", batch_size=batch_size, tqdm_disable=True
    )
    _sync(device)
    peak_ok = _reset_peak_rss()
    t0 = clock()
    image = sitk.ReadImage(str(src))
    out = sitk.GetImageFromArray(inferer.apply(image))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(dst), True)
    _sync(device)
    seconds = clock() - t0
    return {
        "version": getattr(lungmask, "__version__", None) or _dist_version("lungmask"),
        "weights": "random U-Net (R231 architecture)",
        "batch_size": batch_size,
        "slices": image.GetSize()[2],
        "seconds": seconds,
        "peak_rss_mb": round(_peak_rss_mb(), 1) if peak_ok else None,
    }


def pipeline_figures(seconds: float, slices: int) -> dict:
    """Report keys for a file-to-file run of ``slices`` slices that took ``seconds`` (unrounded)."""
    return {
        "pipeline_seconds": round(seconds, 3),
        "pipeline_seconds_per_slice": round(seconds / slices, 4),
    }


def compare_backends(seg, repeats: int = 3, clock: Clock = time.perf_counter) -> dict:
    """The network alone in torch (fp32), ONNX Runtime fp32 and its int8 graph, and, where openvino is
    installed, OpenVINO in fp32, bf16 (CPUs with bf16 units) and int8, side by side: ``repeats`` rounds,
    each timing the same batch in each engine (after one warm-up each).

    The batch is real chest CT: the bundled sample's slices as the segmenter prepares them, repeated to
    ``seg``'s batch size.  ``seg`` must have the ONNX Runtime fp32 engine (backend auto or onnxruntime:
    CPU, precision fp32, onnxruntime installed).  Reports the median seconds per slice of each engine,
    their speed-ups over torch, the largest difference from torch's probabilities and, for int8, the
    fraction of pixels whose lung decision (p > 0.5) differs from torch's (OpenVINO: ``openvino[_P]_*`` keys).
    """
    from ..engines.hardware import cpu_info
    from ..engines.onnx import OnnxRuntimeEngine
    from ..engines.openvino import OpenVinoEngine
    from ..engines.selection import openvino_available
    from ..engines.torch_engine import TorchEngine

    candidates = getattr(seg.engine, "candidates", [seg.engine])
    engine = next((e for e in candidates if e.runtime == "onnxruntime"), None)
    if engine is None or engine.precision != "fp32":
        raise RuntimeError(
            "comparing backends needs ONNX Runtime on the CPU in fp32: --device cpu --precision fp32 and "
            "pip install 'fusionlungseg[onnx]'"
        )
    sample = seg.calibration_inputs()  # read once: the batch below and, if not cached yet, the int8 ranges
    int8 = OnnxRuntimeEngine(
        seg.model, engine._sha_source, seg.input_size, precision="int8", calibration=lambda: sample
    )
    x = sample.repeat(-(-seg.batch_size // len(sample)), 1, 1, 1)[: seg.batch_size].contiguous()
    torch_fp32 = TorchEngine(seg.model, seg.device, "fp32")
    engines = {"torch": torch_fp32.logits, "onnxruntime": engine.logits, "onnxruntime_int8": int8.logits}
    if openvino_available():
        precisions = ["fp32"] + (["bf16"] if cpu_info().get("bf16_matrix_units") else []) + ["int8"]
        for p in precisions:
            ov = OpenVinoEngine(seg.model, engine._sha_source, seg.input_size, precision=p, calibration=lambda: sample)
            engines["openvino" if p == "fp32" else f"openvino_{p}"] = ov.logits
    with torch.inference_mode():
        probs = {name: torch.sigmoid(run(x).float()) for name, run in engines.items()}  # also the warm-up
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(repeats):
            for name, run in engines.items():
                t0 = clock()
                run(x)
                times[name].append(clock() - t0)
    per_slice = {name: float(np.median(t)) / seg.batch_size for name, t in times.items()}
    ref = probs["torch"]

    def against_torch(name: str) -> dict:
        return {
            "seconds_per_slice": round(per_slice[name], 4),
            "speedup": round(per_slice["torch"] / per_slice[name], 2),
            "max_probability_difference": round(float((ref - probs[name]).abs().max()), 4),
            "decisions_differing": round(float(((ref > 0.5) != (probs[name] > 0.5)).float().mean()), 5),
        }

    ort_int8 = against_torch("onnxruntime_int8")
    openvino = {f"{n}_{k}": v for n in engines if n.startswith("openvino") for k, v in against_torch(n).items()}
    return {
        "input_size": seg.input_size,
        "batch_size": seg.batch_size,
        "repeats": repeats,
        "torch_seconds_per_slice": round(per_slice["torch"], 4),
        "onnxruntime_seconds_per_slice": round(per_slice["onnxruntime"], 4),
        "onnxruntime_speedup": round(per_slice["torch"] / per_slice["onnxruntime"], 2),
        "max_probability_difference": float((ref - probs["onnxruntime"]).abs().max()),
        "onnxruntime_int8_seconds_per_slice": ort_int8["seconds_per_slice"],
        "onnxruntime_int8_speedup": ort_int8["speedup"],
        "int8_max_probability_difference": ort_int8["max_probability_difference"],
        "int8_decisions_differing": ort_int8["decisions_differing"],
        **openvino,
    }


def _skipped(seg) -> int | None:
    """Slices the last run did not send through the network (lung-free by HU and body), if known."""
    result = getattr(seg, "last_result", None)
    qc = getattr(result, "qc", None) or {}
    return qc.get("measures", {}).get("slices_skipped")


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def run_bench(
    device: str = "auto",
    input_size: int | None = None,
    batch_size: int | None = None,
    slices: int = 300,
    weights: str | None = None,
    network_slices: int = 16,
    input_path: str | Path | None = None,
    compare_lungmask: bool = False,
    threads: int | None = None,
    precision: str = "auto",
    backend: str = "auto",
    compare_engines: bool = False,
    *,
    segmenter=None,
    clock: Clock = time.perf_counter,
) -> dict:
    """Time the network alone (``network_slices`` slices) and the full pipeline.

    The pipeline runs on ``input_path`` (any CT file or DICOM folder) or on a
    synthetic ``slices``-slice 512x512 phantom.  Returns a JSON-able dict; with
    ``compare_engines`` also the network alone in torch and ONNX Runtime side by
    side (:func:`compare_backends`).
    ``segmenter``: an already built :class:`LungSegmenter` (then ``weights``,
    ``device``, ``input_size``, ``batch_size``, ``precision`` and ``backend`` are its own); ``clock``: the
    clock every duration is read from.
    """
    import SimpleITK as sitk

    from ..engines.hardware import cpu_info
    from ..io import read_image, write_image
    from ..nets.fusionlungnet import FusionLungNet
    from ..nets.weights import WeightsError
    from ..segmenter import LungSegmenter

    if threads:
        torch.set_num_threads(int(threads))
    if compare_lungmask:
        try:
            import lungmask  # noqa: F401
        except ImportError:
            raise RuntimeError("--compare-lungmask needs lungmask: pip install lungmask") from None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if input_path is None:
            src = tmp / "ct.nii.gz"
            sitk.WriteImage(synthetic_ct(slices), str(src))
            source = f"synthetic 512x512x{slices} phantom"
        else:
            src = Path(input_path)
            source = str(src)
        rss_start = _peak_rss_mb()
        options = dict(
            device=device,
            batch_size=batch_size,
            input_size=input_size,
            progress=False,
            precision=precision,
            backend=backend,
        )
        try:
            if segmenter is not None:
                seg, weights_used = segmenter, "given segmenter"
            else:
                seg = LungSegmenter(weights, **options)
                weights_used = weights or "bundled"
        except WeightsError:
            seg = LungSegmenter(model=FusionLungNet(), **options)
            weights_used = "random (no bundled weights)"
        dev = seg.device
        # Network alone: warm-up batch (with backend auto it also picks the engine), then timed batches.
        x = torch.rand(seg.batch_size, 1, seg.input_size, seg.input_size)
        seg.engine.probabilities(x)
        n_batches = max(1, network_slices // seg.batch_size)
        _sync(dev)
        t0 = clock()
        for _ in range(n_batches):
            seg.engine.probabilities(x)
        _sync(dev)
        net_s = (clock() - t0) / (n_batches * seg.batch_size)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        peak_reset = _reset_peak_rss()
        rss_before = _peak_rss_mb()
        t0 = clock()
        image = read_image(src)
        t_read = clock() - t0
        labels = seg.segment(image)
        t_write = clock()
        write_image(labels, tmp / "lungs.nii.gz")
        _sync(dev)
        t_end = clock()
        t_write, pipe_s = t_end - t_write, t_end - t0
        n = image.GetSize()[2]
        input_mb = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent() / 2**20
        peak_pipeline = _peak_rss_mb()
        del image, labels
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cpu": cpu_info(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(dev),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "weights": weights_used,
            "input": source,
            "input_size": seg.input_size,
            "batch_size": seg.batch_size,
            "precision": seg.precision,
            "backend": seg.backend,
            # backend auto: seconds per slice of each engine when the warm-up batch measured them
            "backend_measured": getattr(seg.engine, "measured", None),
            "network_seconds_per_slice": round(net_s, 4),
            "network_slices_per_second": round(1.0 / net_s, 2),
            "pipeline_slices": n,
            "pipeline_slices_skipped": _skipped(seg),
            **pipeline_figures(pipe_s, n),
            "pipeline_seconds_per_300_slices": round(pipe_s / n * 300, 1),
            "pipeline_stages_seconds": {
                "read": round(t_read, 3),
                **{k: round(v, 3) for k, v in seg.last_timings.items()},
                "write": round(t_write, 3),
            },
            "input_volume_mb": round(input_mb, 1),
            "rss_mb_at_start": round(rss_start, 1),
            "rss_mb_before_pipeline": round(rss_before, 1),
            "peak_rss_mb": round(peak_pipeline, 1),
            "peak_rss_mb_above_input": round(peak_pipeline - input_mb, 1),
            "peak_rss_is_pipeline_only": peak_reset,
        }
        if dev.type == "cuda":
            result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        if compare_engines:
            result["backends"] = compare_backends(seg, clock=clock)
        if compare_lungmask:
            lm = time_lungmask(src, tmp / "lungmask.nii.gz", dev, clock=clock)
            lm_s, lm_slices = lm.pop("seconds"), lm.pop("slices")
            result["lungmask"] = {**lm, **pipeline_figures(lm_s, lm_slices)}
            result["speedup_vs_lungmask"] = round(lm_s / pipe_s, 2)
    return result


def summary(result: dict) -> str:
    """A few human-readable lines for a :func:`run_bench` result: the CPU, the settings, the figures."""
    from ..engines.hardware import describe_cpu

    settings = [
        f"device {result['device']}" + (f" ({result['gpu']})" if result.get("gpu") else ""),
        *(f"{key} {result[key]}" for key in ("precision", "backend") if key in result),
        f"{result['threads']} threads",
        f"{result['input_size']} px",
        f"batch {result['batch_size']}",
    ]
    lines = [
        f"CPU: {describe_cpu(result['cpu'])}",
        "settings: " + ", ".join(settings),
        f"network: {result['network_seconds_per_slice']} s/slice ({result['network_slices_per_second']} slices/s)",
        f"pipeline: {result['pipeline_seconds']} s for {result['pipeline_slices']} slices "
        f"({result['pipeline_seconds_per_slice']} s/slice), peak {result['peak_rss_mb_above_input']} MB above input",
    ]
    if "backends" in result:
        be = result["backends"]
        lines.append(
            f"network, side by side: torch {be['torch_seconds_per_slice']} s/slice, onnxruntime "
            f"{be['onnxruntime_seconds_per_slice']} s/slice ({be['onnxruntime_speedup']}x), int8 "
            f"{be['onnxruntime_int8_seconds_per_slice']} s/slice ({be['onnxruntime_int8_speedup']}x; "
            f"{be['int8_decisions_differing']:.2%} of pixels decided otherwise)"
        )
        for name in ("openvino", "openvino_bf16", "openvino_int8"):
            if f"{name}_seconds_per_slice" in be:
                lines.append(
                    f"  {name.replace('_', ' ')}: {be[f'{name}_seconds_per_slice']} s/slice ({be[f'{name}_speedup']}x; "
                    f"{be[f'{name}_decisions_differing']:.2%} of pixels decided otherwise)"
                )
    if "lungmask" in result:
        lm = result["lungmask"]
        lines.append(
            f"lungmask: {lm['pipeline_seconds']} s ({lm['pipeline_seconds_per_slice']} s/slice); "
            f"ours is {result['speedup_vs_lungmask']}x faster"
        )
    return "\n".join(lines)


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
