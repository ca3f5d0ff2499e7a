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

from ..core.body import HU_WINDOW

__all__ = [
    "HU_WINDOW",
    "window_hu",
    "SliceFrame",
    "to_network",
    "from_network",
    "enhance_slice",
    "enhance_slices",
]

#: Default HU window (lower, upper) mapped to [0, 1].


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
    """How an (H, W) slice, or its crop box, sits in a size x size network frame.

    The crop box ``[y0, y0 + crop_h) x [x0, x0 + crop_w)`` may reach beyond the
    slice (that part is air); it is resized, keeping its physical aspect, to
    ``inner_h x inner_w`` and placed at ``(top, left)`` in the frame.
    """

    height: int
    width: int
    size: int
    inner_h: int
    inner_w: int
    top: int
    left: int
    y0: int = 0
    x0: int = 0
    crop_h: int = 0
    crop_w: int = 0

    @classmethod
    def make(
        cls,
        height: int,
        width: int,
        size: int,
        spacing_yx: tuple[float, float] | None = (1.0, 1.0),
        box: tuple[int, int, int, int] | None = None,
    ) -> SliceFrame:
        """``box`` = ``(y0, y1, x0, x1)`` in pixels (None: the whole slice); ``spacing_yx`` None = square pixels."""
        if height < 1 or width < 1:
            raise ValueError(f"empty slice {height}x{width}")
        if size < 32 or size % 32:
            raise ValueError(f"network input size must be a multiple of 32 and at least 32, got {size}")
        sy, sx = (float(s) for s in (spacing_yx if spacing_yx is not None else (1.0, 1.0)))
        if not (sy > 0 and sx > 0 and np.isfinite(sy) and np.isfinite(sx)):
            raise ValueError(f"pixel spacing must be positive and finite, got {spacing_yx}")
        y0, y1, x0, x1 = box if box is not None else (0, height, 0, width)
        crop_h, crop_w = int(y1 - y0), int(x1 - x0)
        if crop_h < 1 or crop_w < 1:
            raise ValueError(f"empty crop box {box}")
        phys_h, phys_w = crop_h * sy, crop_w * sx
        longest = max(phys_h, phys_w)
        inner_h = max(1, min(size, round(size * phys_h / longest)))
        inner_w = max(1, min(size, round(size * phys_w / longest)))
        top, left = (size - inner_h) // 2, (size - inner_w) // 2
        return cls(height, width, size, inner_h, inner_w, top, left, int(y0), int(x0), crop_h, crop_w)

    def overlap(self) -> tuple[slice, slice, slice, slice]:
        """(rows, cols) of the slice inside the box, and the same region in box coordinates."""
        ys, ye = max(0, self.y0), min(self.height, self.y0 + self.crop_h)
        xs, xe = max(0, self.x0), min(self.width, self.x0 + self.crop_w)
        ye, xe = max(ys, ye), max(xs, xe)
        return (
            slice(ys, ye),
            slice(xs, xe),
            slice(ys - self.y0, ye - self.y0),
            slice(xs - self.x0, xe - self.x0),
        )


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W); antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    shrink = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=shrink)


def _crop(x: torch.Tensor, frame: SliceFrame) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, crop_h, crop_w); the part of the box outside the slice is 0."""
    if (frame.y0, frame.x0, frame.crop_h, frame.crop_w) == (0, 0, frame.height, frame.width):
        return x
    rows, cols, box_rows, box_cols = frame.overlap()
    out = x.new_zeros((*x.shape[:2], frame.crop_h, frame.crop_w))
    out[:, :, box_rows, box_cols] = x[:, :, rows, cols]
    return out


def _place(x: torch.Tensor, frame: SliceFrame) -> torch.Tensor:
    """(N, C, crop) resized into the size x size frame, zero around it."""
    x = _resize(x, (frame.inner_h, frame.inner_w))
    if (frame.inner_h, frame.inner_w) == (frame.size, frame.size):
        return x
    out = x.new_zeros((x.shape[0], x.shape[1], frame.size, frame.size))
    out[:, :, frame.top : frame.top + frame.inner_h, frame.left : frame.left + frame.inner_w] = x
    return out


def to_network(
    hu: torch.Tensor | np.ndarray,
    size: int,
    spacing_yx: tuple[float, float] | None = (1.0, 1.0),
    window: tuple[float, float] = HU_WINDOW,
    box: tuple[int, int, int, int] | None = None,
) -> tuple[torch.Tensor, SliceFrame]:
    """HU slices (N, H, W) -> network input (N, 1, size, size) float32 in [0, 1].

    ``box`` (y0, y1, x0, x1), the same for all N slices, is cropped first (see
    :func:`body.crop_box`).  Padding takes the value 0 (air at the window's lower bound).
    """
    t = torch.as_tensor(hu)
    if t.ndim != 3:
        raise ValueError(f"expected slices shaped (N, H, W), got {tuple(t.shape)}")
    frame = SliceFrame.make(t.shape[1], t.shape[2], size, spacing_yx, box)
    return _place(_crop(window_hu(t, window)[:, None], frame), frame), frame


def mask_to_network(mask: torch.Tensor | np.ndarray, frame: SliceFrame) -> torch.Tensor:
    """Binary masks (N, H, W) -> (N, 1, size, size) float in [0, 1], placed like the image."""
    m = torch.as_tensor(mask).to(torch.float32)[:, None]
    return _place(_crop(m, frame), frame)


def from_network(prob: torch.Tensor, frame: SliceFrame) -> torch.Tensor:
    """Network-frame maps (N, 1, size, size) -> (N, H, W) on the original pixel grid (0 outside the box)."""
    inner = prob[:, :, frame.top : frame.top + frame.inner_h, frame.left : frame.left + frame.inner_w]
    crop = _resize(inner.float(), (frame.crop_h, frame.crop_w))[:, 0]
    if (frame.y0, frame.x0, frame.crop_h, frame.crop_w) == (0, 0, frame.height, frame.width):
        return crop
    rows, cols, box_rows, box_cols = frame.overlap()
    out = crop.new_zeros((crop.shape[0], frame.height, frame.width))
    out[:, rows, cols] = crop[:, box_rows, box_cols]
    return out


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


def enhance_slices(hu: np.ndarray) -> np.ndarray:
    """:func:`enhance_slice` on every slice of (Z, H, W) HU; returns a new float32 array."""
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected slices (Z, H, W), got shape {hu.shape}")
    return np.stack([enhance_slice(s) for s in hu]) if len(hu) else hu.astype(np.float32)
