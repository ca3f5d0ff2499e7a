"""Slice preprocessing shared by training and inference.

Images are CT in Hounsfield units.  A batch of slices (N, H, W) is windowed to
[0, 1], resized so that its larger *physical* side fills ``size`` pixels (the
aspect ratio in millimetres is kept) and padded to ``size`` x ``size``.
:class:`SliceFrame` remembers the resize and padding so that network output can
be mapped back onto the original pixel grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "HU_WINDOW",
    "window_hu",
    "SliceFrame",
    "to_network",
    "from_network",
    "enhance_slice",
]

#: Default HU window (lower, upper) mapped to [0, 1].
HU_WINDOW: tuple[float, float] = (-1000.0, 400.0)


def window_hu(hu: torch.Tensor, window: tuple[float, float] = HU_WINDOW) -> torch.Tensor:
    """Clip HU to ``window`` and scale linearly to [0, 1] (float32).  NaN becomes 0."""
    lo, hi = window
    if not hi > lo:
        raise ValueError(f"HU window upper bound must exceed lower bound, got {window}")
    x = hu.to(torch.float32)
    x = torch.nan_to_num(x, nan=lo, posinf=hi, neginf=lo)
    return ((x.clamp(lo, hi) - lo) / (hi - lo)).contiguous()


@dataclass(frozen=True)
class SliceFrame:
    """How an (H, W) slice with pixel spacing (sy, sx) mm sits in a size x size network frame."""

    height: int
    width: int
    size: int
    inner_h: int
    inner_w: int
    top: int
    left: int

    @classmethod
    def make(cls, height: int, width: int, size: int, spacing_yx: tuple[float, float] = (1.0, 1.0)) -> SliceFrame:
        if height < 1 or width < 1:
            raise ValueError(f"empty slice {height}x{width}")
        if size < 32 or size % 32:
            raise ValueError(f"network input size must be a multiple of 32 and at least 32, got {size}")
        sy, sx = (float(s) for s in spacing_yx)
        if not (sy > 0 and sx > 0 and np.isfinite(sy) and np.isfinite(sx)):
            raise ValueError(f"pixel spacing must be positive and finite, got {spacing_yx}")
        phys_h, phys_w = height * sy, width * sx
        longest = max(phys_h, phys_w)
        inner_h = max(1, min(size, round(size * phys_h / longest)))
        inner_w = max(1, min(size, round(size * phys_w / longest)))
        return cls(height, width, size, inner_h, inner_w, (size - inner_h) // 2, (size - inner_w) // 2)


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W); antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    shrink = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=shrink)


def to_network(
    hu: torch.Tensor | np.ndarray,
    size: int,
    spacing_yx: tuple[float, float] = (1.0, 1.0),
    window: tuple[float, float] = HU_WINDOW,
) -> tuple[torch.Tensor, SliceFrame]:
    """HU slices (N, H, W) -> network input (N, 1, size, size) float32 in [0, 1].

    Padding takes the value 0 (air at the window's lower bound).
    """
    t = torch.as_tensor(hu)
    if t.ndim != 3:
        raise ValueError(f"expected slices shaped (N, H, W), got {tuple(t.shape)}")
    frame = SliceFrame.make(t.shape[1], t.shape[2], size, spacing_yx)
    x = _resize(window_hu(t, window)[:, None], (frame.inner_h, frame.inner_w))
    if (frame.inner_h, frame.inner_w) != (size, size):
        out = x.new_zeros((x.shape[0], 1, size, size))
        out[:, :, frame.top : frame.top + frame.inner_h, frame.left : frame.left + frame.inner_w] = x
        x = out
    return x, frame


def mask_to_network(mask: torch.Tensor | np.ndarray, frame: SliceFrame) -> torch.Tensor:
    """Binary masks (N, H, W) -> (N, 1, size, size) float in [0, 1], placed like the image."""
    m = torch.as_tensor(mask).to(torch.float32)[:, None]
    m = _resize(m, (frame.inner_h, frame.inner_w))
    out = m.new_zeros((m.shape[0], 1, frame.size, frame.size))
    out[:, :, frame.top : frame.top + frame.inner_h, frame.left : frame.left + frame.inner_w] = m
    return out


def from_network(prob: torch.Tensor, frame: SliceFrame) -> torch.Tensor:
    """Network-frame maps (N, 1, size, size) -> (N, H, W) on the original pixel grid."""
    inner = prob[:, :, frame.top : frame.top + frame.inner_h, frame.left : frame.left + frame.inner_w]
    return _resize(inner.float(), (frame.height, frame.width))[:, 0]


def enhance_slice(hu: np.ndarray, median: int = 3, block: int = 51, air_hu: float = -1000.0) -> np.ndarray:
    """The paper's optional enhancement on one HU slice (H, W); returns a new float32 slice.

    1. median filter (``median`` px) against noise;
    2. dynamic local thresholding (mean over ``block`` px windows) to find the body;
    3. artifact removal: everything outside the largest body component (table,
       cables, field-of-view padding) is set to ``air_hu``; holes inside the body
       (the lungs) are kept.
    """
    import cv2

    if hu.ndim != 2:
        raise ValueError(f"expected one slice (H, W), got shape {hu.shape}")
    x = np.nan_to_num(hu.astype(np.float32), nan=air_hu)
    x = cv2.medianBlur(x, median) if median in (3, 5) else x
    u8 = (np.clip((x + 1000.0) / 1400.0, 0, 1) * 255).astype(np.uint8)
    local = cv2.adaptiveThreshold(u8, 1, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block | 1, -2)
    body = ((u8 > 64) | ((local > 0) & (u8 > 32))).astype(np.uint8)  # soft tissue above about -650 HU
    n, labels, stats, _ = cv2.connectedComponentsWithStats(body, connectivity=4)
    if n <= 1:
        return x
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    keep = (labels == largest).astype(np.uint8)
    # Fill holes: flood the background from the border, everything not reached is inside.
    flood = keep.copy()
    pad = np.zeros((keep.shape[0] + 2, keep.shape[1] + 2), np.uint8)
    cv2.floodFill(flood, pad, (0, 0), 1) if keep[0, 0] == 0 else None
    inside = keep | (flood == 0)
    out = x.copy()
    out[inside == 0] = air_hu
    return out
