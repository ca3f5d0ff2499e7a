"""FusionLungNet (or any network of :mod:`FusionLungSegLib.nets`) run by PyTorch, on the CPU or CUDA."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from .hardware import resolve_precision

__all__ = ["TorchEngine"]


class TorchEngine:
    """Network input (N, 1, S, S) in [0, 1] -> probabilities (N, 1, S, S), in torch.

    ``precision`` "fp32" or "bf16" (bf16 autocast around the forward pass; probabilities stay fp32);
    ``requested``: the precision as asked ("auto", ...), re-resolved if CUDA runs out of memory and the
    engine moves to the CPU.  On CUDA an out-of-memory batch is split in halves (``max_batch`` remembers
    the size that fitted), and at one slice the engine continues on the CPU.
    """

    runtime = "torch"

    def __init__(self, model: nn.Module, device: torch.device, precision: str, requested: str | None = None):
        # channels-last lets oneDNN/cuDNN pick their fastest convolutions (about 10 % on CPU).
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.device = device
        self.precision = precision
        self.requested = requested or precision
        #: the largest batch that fitted after an out-of-memory retry (None: no limit seen)
        self.max_batch: int | None = None
        #: progress messages of a long preparation (none in torch; the interface of every engine)
        self.notify: Callable[[str], None] | None = None

    def label(self) -> str:
        return f"torch {self.precision}"

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) input -> (N, 1, S, S) refined logits on the engine's device."""
        cuda = self.device.type == "cuda"
        if cuda and x.device.type == "cpu":
            x = x.pin_memory()  # page-locked, so the copy below runs asynchronously (CUDA tensors cannot be pinned)
        x = x.to(self.device, non_blocking=cuda).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, S, S) input -> (N, 1, S, S) fp32 probabilities; out-of-memory handled as the class says."""
        try:
            return torch.sigmoid(self.logits(x).float())
        except torch.OutOfMemoryError:
            if self.device.type != "cuda":
                raise
            torch.cuda.empty_cache()
            if x.shape[0] > 1:
                self.max_batch = max(1, x.shape[0] // 2)
                warnings.warn(f"CUDA out of memory: retrying with batch size {self.max_batch}", stacklevel=2)
                parts = [self.probabilities(part) for part in x.split(self.max_batch)]
                return torch.cat([part.to(parts[-1].device) for part in parts])  # a later part may run on the CPU
            warnings.warn("CUDA out of memory at batch size 1: continuing on the CPU", stacklevel=2)
            self.to_cpu()
            return torch.sigmoid(self.logits(x).float())

    def to_cpu(self) -> None:
        """Move the network to the CPU, with the precision the request gives there."""
        self.device = torch.device("cpu")
        self.model = self.model.cpu()
        self.precision = resolve_precision(self.requested, self.device)

    def release(self) -> None:
        """Nothing to free: the network is the segmenter's."""
