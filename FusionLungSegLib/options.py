"""The options of a segmentation, one contract for every front door (CLI, Python API, Slicer logic and
panel, batch script), light to import (no torch): :class:`SegmentOptions`."""

from __future__ import annotations

from dataclasses import dataclass

from .core.options import option
from .engines.hardware import ALL_PRECISIONS
from .engines.selection import BACKENDS

__all__ = ["SegmentOptions", "FAST_INPUT_SIZE"]


#: ``--fast``: the network input of the fast mode, in pixels
FAST_INPUT_SIZE = 160

_PRECISION_HELP = (
    "network arithmetic: auto = bf16 on CUDA; on the CPU bf16 where it has bf16 matrix units (amx_bf16, "
    "avx512_bf16), else fp32, or int8 in ONNX Runtime or OpenVINO (when installed, at a size the weights "
    "were trained at) where that runs faster on this machine, measured on the first batch and remembered; "
    "int8 = ONNX Runtime or OpenVINO on the CPU with a statically quantized graph (pip install "
    "'fusionlungseg[onnx]' or 'fusionlungseg[openvino]'); bf16 on CPUs without bf16 units works but is "
    "several times slower"
)


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment: the one set of options every front door takes (the CLI's flags are built from these
    fields, the Slicer logic and the batch script pass them on).  :meth:`segmenter` builds the segmenter.
    Hashable, so a front door can keep one loaded model per set of options."""

    weights: str | None = option(None, "weights file (default: the bundled model)", type=str)
    method: str = option(
        "network",
        "network: the weights (default); hu-threshold: the baseline that calls air below -320 HU inside "
        "the body lung candidates, with the same post-processing (no network)",
        choices=("network", "hu-threshold"),
    )
    input_size: int | None = option(
        None, "network input in pixels, multiple of 32 (default: the weights' own)", type=int
    )
    fast: bool = option(
        False,
        f"{FAST_INPUT_SIZE} px network input (about 2x faster than the bundled model's default size, "
        "a little less accurate)",
    )
    batch_size: int | None = option(
        None, "slices per forward pass (default: 32 on CUDA; on the CPU 4 at 160 px, 1 at 320 px)", type=int
    )
    skip_slices: bool = option(
        True,
        "run the network on every slice (default: skip slices far from any lung-sized air, e.g. pelvis, head)",
        flag="--no-skip",
        negate=True,
    )
    device: str = option("auto", "auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    precision: str = option("auto", _PRECISION_HELP, choices=ALL_PRECISIONS)
    backend: str = option(
        "auto",
        "engine for the network: auto = the fastest on this machine's first batch (measured once, "
        "remembered) of torch and the installed engines that run the precision on the CPU: ONNX Runtime "
        "(fp32, int8; pip install 'fusionlungseg[onnx]') and OpenVINO (fp32, bf16, int8; pip install "
        "'fusionlungseg[openvino]')",
        choices=BACKENDS,
    )

    def __post_init__(self):
        if self.fast and self.input_size:
            raise ValueError("give either --fast or --input-size, not both")
        if self.method == "hu-threshold" and self.weights:
            raise ValueError("--method hu-threshold uses no weights: leave out --weights")

    @property
    def network_input_size(self) -> int | None:
        """The input size asked for (``fast``: :data:`FAST_INPUT_SIZE`; None: the weights' own)."""
        return FAST_INPUT_SIZE if self.fast else self.input_size

    def segmenter(self, progress: bool = False):
        """The :class:`~FusionLungSegLib.segmenter.LungSegmenter` these options ask for (``method``
        hu-threshold: the :class:`~FusionLungSegLib.segmenter.HUThresholdSegmenter` baseline)."""
        from .segmenter import HUThresholdSegmenter, LungSegmenter

        if self.method == "hu-threshold":
            return HUThresholdSegmenter(skip_slices=self.skip_slices)
        return LungSegmenter(
            self.weights,
            device=self.device,
            batch_size=self.batch_size,
            input_size=self.network_input_size,
            progress=progress,
            skip_slices=self.skip_slices,
            precision=self.precision,
            backend=self.backend,
        )
