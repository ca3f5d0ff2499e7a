"""Training-curve picture (PNG) drawn with OpenCV, so no plotting library is needed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["plot_training_curves"]

_COLOURS = [(200, 90, 30), (40, 140, 230), (60, 170, 60), (160, 60, 170), (30, 30, 200)]  # BGR


def _panel(title: str, epochs: list[int], series: dict[str, list[float]], log_y: bool, size=(300, 420)):
    import cv2

    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 58, 12, 26, 34
    cv2.putText(img, title, (left, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    values = [
        v for vals in series.values() for v in vals if v is not None and math.isfinite(v) and (v > 0 or not log_y)
    ]
    if not values or not epochs:
        return img
    tf = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    lo, hi = tf(min(values)), tf(max(values))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    e0, e1 = min(epochs), max(epochs)
    span = max(1, e1 - e0)

    def xy(e, v):
        x = left + (e - e0) / span * (w - left - right)
        y = top + (hi - tf(v)) / (hi - lo) * (h - top - bottom)
        return int(round(x)), int(round(y))

    cv2.rectangle(img, (left, top), (w - right, h - bottom), (180, 180, 180), 1)
    for k in range(5):  # y ticks
        t = lo + (hi - lo) * k / 4
        y = int(round(top + (hi - t) / (hi - lo) * (h - top - bottom)))
        label = f"{10**t:.0e}" if log_y else f"{t:.4g}"
        cv2.putText(img, label, (2, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
    for e in sorted(set(epochs))[:: max(1, len(set(epochs)) // 8)]:  # x ticks
        x, _ = xy(e, 10**lo if log_y else lo)
        cv2.putText(img, str(e), (x - 4, h - bottom + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (80, 80, 80), 1)
    cv2.putText(img, "epoch", (w // 2 - 16, h - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    for k, (name, vals) in enumerate(series.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        pts = [xy(e, v) for e, v in zip(epochs, vals) if v is not None and math.isfinite(v) and (v > 0 or not log_y)]
        for a, b in zip(pts, pts[1:]):
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)
        cv2.putText(img, name, (left + 6, top + 16 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return img


def _iou_label(key: str) -> str:
    """Legend of a validation IoU column: ``val_iou_224`` -> "224 px", ``val_iou_fov`` -> "cut fields of view"."""
    suffix = key.replace("val_iou_", "")
    if suffix == "fov":
        return "cut fields of view"
    return suffix + " px" if key != "val_iou" else key


def plot_training_curves(history: list[dict], path: str | Path) -> Path:
    """Write a PNG of training loss, validation IoU (each validated size) and learning rate per epoch.

    ``history`` is the list of per-epoch rows that training logs (``epoch``,
    ``train_loss``, ``val_iou`` / ``val_iou_<size>``, ``lr``).
    """
    import cv2

    epochs = [int(r["epoch"]) for r in history]
    iou_keys = sorted({k for r in history for k in r if k.startswith("val_iou_")}) or ["val_iou"]
    panels = [
        _panel("training loss", epochs, {"loss": [r.get("train_loss") for r in history]}, log_y=False),
        _panel(
            "validation IoU (Kaggle slices)",
            epochs,
            {_iou_label(k): [r.get(k) for r in history] for k in iou_keys},
            log_y=False,
        ),
        _panel("learning rate", epochs, {"lr": [r.get("lr") for r in history]}, log_y=True),
    ]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(p), np.concatenate(panels, axis=1)):
        raise OSError(f"cannot write PNG {p}")
    return p
