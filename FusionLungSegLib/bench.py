"""Benchmark: seconds per slice for the network alone and for the whole file-to-file pipeline.

The volume is a synthetic 512x512 chest phantom in HU (body, two lungs, vessels
and noise), so the figures do not depend on data being present.  Peak memory
is the process's maximum resident set size (and peak CUDA memory on a GPU).
"""

from __future__ import annotations

import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["synthetic_ct", "run_bench"]


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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def run_bench(
    device: str = "auto",
    input_size: int = 320,
    batch_size: int | None = None,
    slices: int = 300,
    weights: str | None = None,
    network_slices: int = 16,
) -> dict:
    """Time the network alone (``network_slices`` slices) and the full pipeline on ``slices`` slices."""
    import SimpleITK as sitk

    from .inference import LungSegmenter
    from .io import read_image, write_image
    from .model import FusionLungNet
    from .weights import WeightsError

    try:
        seg = LungSegmenter(weights, device=device, batch_size=batch_size, input_size=input_size, progress=False)
        weights_used = weights or "bundled"
    except WeightsError:
        seg = LungSegmenter(
            model=FusionLungNet(), device=device, batch_size=batch_size, input_size=input_size, progress=False
        )
        weights_used = "random (no bundled weights)"
    dev = seg.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # Network alone: warm-up batch, then timed batches of network-size input.
    x = torch.rand(seg.batch_size, 1, seg.input_size, seg.input_size)
    seg._forward_with_retry(x)
    n_batches = max(1, network_slices // seg.batch_size)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _ in range(n_batches):
            seg._forward_with_retry(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    net_s = (time.perf_counter() - t0) / (n_batches * seg.batch_size)

    image = synthetic_ct(slices)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "ct.nii.gz", Path(tmp) / "lungs.nii.gz"
        sitk.WriteImage(image, str(src))
        del image
        rss_before = _peak_rss_mb()
        t0 = time.perf_counter()
        labels = seg.segment(read_image(src))
        write_image(labels, dst)
        pipe_s = time.perf_counter() - t0
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "weights": weights_used,
        "input_size": seg.input_size,
        "batch_size": seg.batch_size,
        "network_seconds_per_slice": round(net_s, 4),
        "network_slices_per_second": round(1.0 / net_s, 2),
        "pipeline_slices": slices,
        "pipeline_seconds": round(pipe_s, 2),
        "pipeline_seconds_per_slice": round(pipe_s / slices, 4),
        "pipeline_seconds_per_300_slices": round(pipe_s / slices * 300, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_rss_mb_before_pipeline": round(rss_before, 1),
    }
    if dev.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return result
