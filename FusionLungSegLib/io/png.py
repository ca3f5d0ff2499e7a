"""PNG overlays so a person can check a segmentation by eye."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.geometry import AxialReorientation

__all__ = ["overlay_png", "axial_strip_png", "LABEL_COLOURS_BGR"]

#: Overlay colours (OpenCV BGR): right lung orange-brown, left lung blue-ish.
LABEL_COLOURS_BGR = {1: (84, 161, 205), 2: (220, 150, 60)}


def _grey(hu: np.ndarray, window=(-1350.0, 150.0)) -> np.ndarray:
    lo, hi = window
    x = np.nan_to_num(hu.astype(np.float32), nan=lo)
    return (np.clip((x - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _panel(hu2d: np.ndarray, lab2d: np.ndarray, spacing_rc: tuple[float, float], height: int, alpha: float):
    import cv2

    grey = cv2.cvtColor(_grey(hu2d), cv2.COLOR_GRAY2BGR)
    colour = grey.copy()
    for label, bgr in LABEL_COLOURS_BGR.items():
        colour[lab2d == label] = bgr
    img = cv2.addWeighted(grey, 1 - alpha, colour, alpha, 0)
    # Outline each label so its edge is visible under the tint.
    for label, bgr in LABEL_COLOURS_BGR.items():
        m = (lab2d == label).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, bgr, 1)
    rows, cols = hu2d.shape
    phys_h, phys_w = rows * spacing_rc[0], cols * spacing_rc[1]
    width = max(1, int(round(height * phys_w / phys_h)))
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_NEAREST)


def overlay_png(image, labels, path: str | Path, height: int = 512, alpha: float = 0.45) -> Path:
    """Write an axial and a coronal view of ``image`` (CT, HU) with ``labels`` tinted.

    Both are ``SimpleITK.Image`` on the same grid; the views are taken in
    canonical patient orientation (patient's right on the image's left,
    anterior / superior at the top) through the centre of the lungs.
    """
    import cv2
    import SimpleITK as sitk

    reo = AxialReorientation.from_image(image)
    hu = reo.to_canonical(sitk.GetArrayViewFromImage(image))
    lab = reo.to_canonical(sitk.GetArrayViewFromImage(labels))
    sz, sy, sx = reo.spacing_zyx
    if lab.any():
        z = int(np.argmax((lab > 0).sum(axis=(1, 2))))
        y = int(round(np.nonzero(lab)[1].mean()))
    else:
        z, y = hu.shape[0] // 2, hu.shape[1] // 2
    axial = _panel(hu[z], lab[z], (sy, sx), height, alpha)
    panels = [("axial", axial)]
    if hu.shape[0] * sz >= 0.2 * hu.shape[2] * sx:  # a coronal view of a thin slab shows nothing
        coronal = _panel(hu[::-1, y, :], lab[::-1, y, :], (sz, sx), height, alpha)  # superior at the top
        panels.append(("coronal", coronal))
    gap = np.full((height, 8, 3), 255, np.uint8)
    canvas = np.concatenate([p for _, img in panels for p in (img, gap)][:-1], axis=1)
    for text, x0 in (("axial", 6), ("coronal", axial.shape[1] + 14))[: len(panels)]:
        cv2.putText(canvas, text, (x0, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(canvas, "R", (6, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(p), canvas):
        raise OSError(f"cannot write PNG {p}")
    return p


def axial_strip_png(
    image,
    labels=None,
    path: str | Path = "strip.png",
    every: int | None = None,
    columns: int = 8,
    tile: int = 192,
    alpha: float = 0.35,
    max_tiles: int = 48,
) -> Path:
    """Write a grid of axial slices, superior (neck) first, with the lungs tinted and outlined.

    ``every``: slice step (None = the smallest step that shows at most ``max_tiles``
    slices).  Each tile is captioned with its canonical slice index (0 = most
    inferior) and the lung volume on that slice in mL, so a whole volume can be
    checked at a glance.  ``image`` and ``labels`` are ``SimpleITK.Image`` on the same grid.
    """
    import cv2
    import SimpleITK as sitk

    reo = AxialReorientation.from_image(image)
    hu = reo.to_canonical(sitk.GetArrayViewFromImage(image))
    lab = reo.to_canonical(sitk.GetArrayViewFromImage(labels)) if labels is not None else None
    n = hu.shape[0]
    sz, sy, sx = reo.spacing_zyx
    step = int(every) if every else max(1, -(-n // max_tiles))
    order = list(range(n - 1, -1, -step))  # superior first
    voxel_ml = sz * sy * sx / 1000.0
    tiles = []
    for z in order:
        lab2d = lab[z] if lab is not None else np.zeros(hu.shape[1:], np.uint8)
        img = _panel(hu[z], lab2d, (sy, sx), tile, alpha)
        ml = float(np.count_nonzero(lab2d)) * voxel_ml
        text = f"z{z}" + (f" {ml:.0f} mL" if lab is not None else "")
        cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0))) for t in tiles]
    rows = []
    for r in range(0, len(tiles), columns):
        row = tiles[r : r + columns]
        row += [np.zeros_like(tiles[0])] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    canvas = np.concatenate(rows, axis=0)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(p), canvas):
        raise OSError(f"cannot write PNG {p}")
    return p
