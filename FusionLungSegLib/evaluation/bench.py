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

from .compare import compare_backends

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
        options = dict(device=device, batch_size=batch_size, input_size=input_size, progress=False, precision=precision)
        seg, weights_used = _bench_segmenter(segmenter, weights, {**options, "backend": backend})
        net_s = _time_network(seg, network_slices, clock)
        result = {
            **_machine_figures(seg),
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
        }
        pipeline, pipe_s = _time_pipeline(seg, src, tmp, clock)
        result.update(pipeline, rss_mb_at_start=round(rss_start, 1))
        if compare_engines:
            result["backends"] = compare_backends(seg, clock=clock)
        if compare_lungmask:
            lm = time_lungmask(src, tmp / "lungmask.nii.gz", seg.device, clock=clock)
            lm_s, lm_slices = lm.pop("seconds"), lm.pop("slices")
            result["lungmask"] = {**lm, **pipeline_figures(lm_s, lm_slices)}
            result["speedup_vs_lungmask"] = round(lm_s / pipe_s, 2)
    return result


def _bench_segmenter(segmenter, weights: str | None, options: dict):
    """The segmenter to time and what its weights are: given, a file, the bundled ones, or random ones
    when none is bundled."""
    from ..nets.fusionlungnet import FusionLungNet
    from ..nets.weights import WeightsError
    from ..segmenter import LungSegmenter

    if segmenter is not None:
        return segmenter, "given segmenter"
    try:
        return LungSegmenter(weights, **options), weights or "bundled"
    except WeightsError:
        return LungSegmenter(model=FusionLungNet(), **options), "random (no bundled weights)"


def _time_network(seg, network_slices: int, clock: Clock) -> float:
    """Seconds per slice of the network alone: a warm-up batch (with backend auto it also picks the
    engine), then timed batches of random input."""
    x = torch.rand(seg.batch_size, 1, seg.input_size, seg.input_size)
    seg.engine.probabilities(x)
    n_batches = max(1, network_slices // seg.batch_size)
    _sync(seg.device)
    t0 = clock()
    for _ in range(n_batches):
        seg.engine.probabilities(x)
    _sync(seg.device)
    return (clock() - t0) / (n_batches * seg.batch_size)


def _machine_figures(seg) -> dict:
    from ..engines.hardware import cpu_info

    dev = seg.device
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
    }


def _time_pipeline(seg, src: Path, tmp: Path, clock: Clock) -> tuple[dict, float]:
    """File -> labels -> file, timed per stage, with the peak memory it took; and its seconds, unrounded."""
    from ..io import read_image, write_image

    dev = seg.device
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
    figures = {
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
        "rss_mb_before_pipeline": round(rss_before, 1),
        "peak_rss_mb": round(peak_pipeline, 1),
        "peak_rss_mb_above_input": round(peak_pipeline - input_mb, 1),
        "peak_rss_is_pipeline_only": peak_reset,
    }
    if dev.type == "cuda":
        figures["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return figures, pipe_s


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
