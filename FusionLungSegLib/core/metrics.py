"""Segmentation metrics: the paper's Table 2 set on 2D masks, and 3D Dice, HD95 (mm), volume (mL).

Masks are boolean (or 0/1) numpy arrays of equal shape.  Ratios are returned
in [0, 1]; callers multiply by 100 for the paper's percentages.  When both
masks are empty, overlap scores are 1 (a perfect match); when exactly one is
empty they are 0.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "confusion",
    "iou",
    "dice",
    "precision",
    "recall",
    "accuracy",
    "mcc",
    "table2_metrics",
    "volume_ml",
    "hd95",
    "hd95_pooled",
    "TABLE2_KEYS",
]

TABLE2_KEYS = ("iou", "f1", "precision", "recall", "accuracy", "mcc")


def _pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(pred).astype(bool), np.asarray(ref).astype(bool)
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    return p, r


def confusion(pred, ref) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) voxel counts."""
    p, r = _pair(pred, ref)
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p & ~r))
    fn = int(np.count_nonzero(~p & r))
    return tp, fp, fn, p.size - tp - fp - fn


def _ratio(num: int, den: int, empty: float = 1.0) -> float:
    return empty if den == 0 else num / den


def iou(pred, ref) -> float:
    tp, fp, fn, _ = confusion(pred, ref)
    return _ratio(tp, tp + fp + fn)


def dice(pred, ref) -> float:
    """Dice = F1 on voxels."""
    tp, fp, fn, _ = confusion(pred, ref)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def precision(pred, ref) -> float:
    tp, fp, fn, _ = confusion(pred, ref)
    return _ratio(tp, tp + fp, empty=1.0 if fn == 0 else 0.0)


def recall(pred, ref) -> float:
    tp, fp, fn, _ = confusion(pred, ref)
    return _ratio(tp, tp + fn, empty=1.0 if fp == 0 else 0.0)


def accuracy(pred, ref) -> float:
    tp, fp, fn, tn = confusion(pred, ref)
    return _ratio(tp + tn, tp + fp + fn + tn)


def mcc(pred, ref) -> float:
    """Matthews correlation coefficient in [-1, 1]; 1 when prediction equals reference."""
    tp, fp, fn, tn = confusion(pred, ref)
    if fp == 0 and fn == 0:
        return 1.0
    den = math.sqrt(float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn))
    return 0.0 if den == 0 else (tp * tn - fp * fn) / den


def table2_metrics(pred, ref) -> dict[str, float]:
    """IoU, F1, precision, recall, accuracy and MCC (the paper's Table 2)."""
    return {
        "iou": iou(pred, ref),
        "f1": dice(pred, ref),
        "precision": precision(pred, ref),
        "recall": recall(pred, ref),
        "accuracy": accuracy(pred, ref),
        "mcc": mcc(pred, ref),
    }


def volume_ml(mask, spacing) -> float:
    """Volume of a mask in millilitres; ``spacing`` in mm per array axis."""
    m = np.asarray(mask).astype(bool)
    if len(spacing) != m.ndim:
        raise ValueError(f"{len(spacing)} spacing values for a {m.ndim}D mask")
    return float(np.count_nonzero(m) * float(np.prod(spacing)) / 1000.0)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boolean map of mask voxels with at least one face neighbour outside the mask."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded.copy()
    for axis in range(mask.ndim):
        for shift in (1, -1):
            inner &= np.roll(padded, shift, axis=axis)
    return (padded & ~inner)[tuple(slice(1, -1) for _ in range(mask.ndim))]


def _surface_distances(pred, ref, spacing) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances (mm) from each surface voxel of ``pred`` to ``ref``'s surface and back; None when a mask is empty."""
    from scipy import ndimage

    p, r = _pair(pred, ref)
    if len(spacing) != p.ndim:
        raise ValueError(f"{len(spacing)} spacing values for a {p.ndim}D mask")
    if not p.any() or not r.any():
        return None
    sp, sr = _surface(p), _surface(r)
    to_r = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    return to_r, to_p


def hd95(pred, ref, spacing) -> float:
    """95 % Hausdorff distance between mask surfaces, in mm: the larger of the two directed 95th
    percentiles (pred to ref, ref to pred), as MONAI's ``compute_hausdorff_distance(percentile=95)`` and
    the surface-distance package report it, so figures compare with published ones.

    ``spacing`` is the voxel size in mm per array axis.  Returns 0 when both masks are empty and ``inf``
    when exactly one is.
    """
    d = _surface_distances(pred, ref, spacing)
    if d is None:
        return 0.0 if not (np.any(pred) or np.any(ref)) else math.inf
    return float(max(np.percentile(d[0], 95), np.percentile(d[1], 95)))


def hd95_pooled(pred, ref, spacing) -> float:
    """95th percentile of both directions' surface distances pooled together, in mm (this project's HD95
    before version 0.4; smaller than :func:`hd95` when one direction holds the far outliers)."""
    d = _surface_distances(pred, ref, spacing)
    if d is None:
        return 0.0 if not (np.any(pred) or np.any(ref)) else math.inf
    return float(np.percentile(np.concatenate(d), 95))
