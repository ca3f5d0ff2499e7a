"""Hybrid loss of FusionLungNet: 0.3 focal + 0.4 SSIM + 0.3 IoU, with deep supervision.

All losses take logits (N, 1, H, W) and binary targets of the same shape
(float 0/1) and return a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FocalLoss", "SSIMLoss", "IoULoss", "HybridLoss", "BCELoss", "DeepSupervisionLoss"]


class FocalLoss(nn.Module):
    """Binary focal loss (Lin et al.): mean of -alpha_t (1 - p_t)^gamma log p_t."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_t = torch.exp(-bce)
        loss = (1.0 - p_t) ** self.gamma * bce
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1.0 - self.alpha) * (1.0 - target))
        return loss.mean()


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


class SSIMLoss(nn.Module):
    """1 - mean SSIM between sigmoid(logits) and the target (Gaussian window)."""

    def __init__(self, window: int = 11, sigma: float = 1.5, c1: float = 0.01**2, c2: float = 0.03**2):
        super().__init__()
        self.window, self.sigma, self.c1, self.c2 = window, sigma, c1, c2

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(logits.float())
        y = target.float()
        w = _gaussian_window(self.window, self.sigma, x.device, x.dtype)
        pad = self.window // 2

        def blur(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(F.pad(t, (pad,) * 4, mode="replicate"), w)

        mx, my = blur(x), blur(y)
        vx = blur(x * x) - mx * mx
        vy = blur(y * y) - my * my
        cov = blur(x * y) - mx * my
        ssim = ((2 * mx * my + self.c1) * (2 * cov + self.c2)) / ((mx * mx + my * my + self.c1) * (vx + vy + self.c2))
        return 1.0 - ssim.mean()


class IoULoss(nn.Module):
    """1 - soft IoU per image, averaged over the batch."""

    def __init__(self, eps: float = 1.0):
        super().__init__()
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits.float()).flatten(1)
        t = target.float().flatten(1)
        inter = (p * t).sum(1)
        union = p.sum(1) + t.sum(1) - inter
        return (1.0 - (inter + self.eps) / (union + self.eps)).mean()


class HybridLoss(nn.Module):
    """``w_focal * focal + w_ssim * SSIM + w_iou * IoU`` (paper: 0.3, 0.4, 0.3)."""

    def __init__(self, w_focal: float = 0.3, w_ssim: float = 0.4, w_iou: float = 0.3):
        super().__init__()
        self.w_focal, self.w_ssim, self.w_iou = w_focal, w_ssim, w_iou
        self.focal, self.ssim, self.iou = FocalLoss(), SSIMLoss(), IoULoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (
            self.w_focal * self.focal(logits, target)
            + self.w_ssim * self.ssim(logits, target)
            + self.w_iou * self.iou(logits, target)
        )


class BCELoss(nn.Module):
    """Binary cross-entropy on logits (the ablation of the hybrid loss)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class DeepSupervisionLoss(nn.Module):
    """Sum of a per-output loss over the refined map and every side output.

    ``deep_supervision=False`` (the ablation) scores the first output (the refined map) only.
    """

    def __init__(
        self, loss: nn.Module | None = None, weights: Sequence[float] | None = None, deep_supervision: bool = True
    ):
        super().__init__()
        self.loss = loss if loss is not None else HybridLoss()
        self.weights = list(weights) if weights is not None else None
        self.deep_supervision = deep_supervision

    def forward(self, outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if not self.deep_supervision:
            outputs = outputs[:1]
        weights = self.weights or [1.0] * len(outputs)
        if len(weights) != len(outputs):
            raise ValueError(f"{len(weights)} weights for {len(outputs)} outputs")
        return sum(w * self.loss(o, target) for w, o in zip(weights, outputs))
