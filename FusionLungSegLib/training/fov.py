"""Training slices seen through cut fields of view: zoomed (targeted) reconstructions, Slicer's Crop Volume
ROIs, halves, depth cuts and cut rectangles, so the network learns lungs that the image border cuts."""

from __future__ import annotations

import numpy as np

from .data import SliceSet

__all__ = ["FOV_CUTS", "fov_cut_variants", "fov_kinds"]


#: Kinds of cut field of view that :func:`fov_cut_variants` draws from, with equal odds.
FOV_CUTS = ("zoom", "half", "depth", "lung_roi", "rectangle")


def fov_kinds(text: str) -> tuple[str, ...]:
    """The kinds of cut named in ``text`` (comma-separated, repeats kept as weights); ValueError for unknown ones."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(FOV_CUTS))
    if unknown or not kinds:
        raise ValueError(
            f"--fov-kinds: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FOV_CUTS)}"
        )
    return kinds


def _fov_rectangle(kind: str, mask: np.ndarray, body: np.ndarray, pixel_mm: float, rng) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of one cut field of view of a slice, in pixels of that slice."""
    h, w = mask.shape
    where = mask if mask.any() else body
    if not where.any():
        where = np.ones_like(mask)
    ys, xs = np.nonzero(where)
    by, bx = np.nonzero(body) if body.any() else (ys, xs)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    if kind == "zoom":  # a targeted reconstruction around the heart: 180-260 mm square
        side = rng.uniform(180.0, 260.0) / pixel_mm
        cy += (rng.uniform(-0.15, 0.05) * (ys.max() - ys.min())) + rng.normal(0, 10.0 / pixel_mm)
        cx += rng.normal(0, 15.0 / pixel_mm)
        y0, x0 = cy - side / 2, cx - side / 2
        return int(y0), int(y0 + side), int(x0), int(x0 + side)
    if kind == "half":  # one side of the patient, cut near the midline
        cut = int(cx + rng.uniform(-0.12, 0.12) * (xs.max() - xs.min()))
        return (0, h, 0, cut) if rng.random() < 0.5 else (0, h, cut, w)
    if kind == "depth":  # the anterior or posterior 50-75 % of the body
        depth = by.max() - by.min()
        keep = rng.uniform(0.5, 0.75) * depth
        return (0, int(by.min() + keep), 0, w) if rng.random() < 0.5 else (int(by.max() - keep), h, 0, w)
    if kind == "lung_roi":  # Slicer's Crop Volume around one lung and the mediastinum
        margin = rng.uniform(5.0, 20.0) / pixel_mm
        medial = rng.uniform(20.0, 60.0) / pixel_mm
        y0, y1 = ys.min() - margin, ys.max() + margin
        if rng.random() < 0.5:  # the lung at low x (the patient's right)
            return int(y0), int(y1), int(xs.min() - margin), int(cx + medial)
        return int(y0), int(y1), int(cx - medial), int(xs.max() + margin)
    # rectangle: each side cut into the body with even odds, by up to a quarter of its extent
    ext_y, ext_x = by.max() - by.min(), bx.max() - bx.min()
    cuts = [rng.uniform(0, 0.25) if rng.random() < 0.5 else -0.1 for _ in range(4)]
    return (
        int(by.min() + cuts[0] * ext_y),
        int(by.max() + 1 - cuts[1] * ext_y),
        int(bx.min() + cuts[2] * ext_x),
        int(bx.max() + 1 - cuts[3] * ext_x),
    )


def fov_cut_variants(
    slices: SliceSet, per_slice: int = 2, seed: int = 0, kinds: tuple[str, ...] = FOV_CUTS
) -> SliceSet:
    """Copies of every slice as seen through a cut field of view (zoomed reconstructions, Crop Volume ROIs,
    halves, cut rectangles; see :data:`FOV_CUTS`), for training; each copy's kind drawn from ``kinds`` with
    equal odds (a kind named twice, twice as often).

    Each copy keeps the slice's size: outside the field the image is air (-1000 HU, what the network's
    frame pads with) and the mask empty; its crop box is drawn around the body *in view*, as inference
    does on a cut volume.  A field reaching past the slice is clipped to it (a zoom there is the slice
    itself, cut where the slice ends).  Deterministic for a ``seed``.
    """
    from ..core.body import ASSUMED_PIXEL_MM, body_mask, crop_box

    rng = np.random.default_rng(seed)
    images, masks, cases, names, spacings, boxes = [], [], [], [], [], []
    for i in range(len(slices)):
        sp = slices.spacing_yx[i]
        spacing3 = None if sp is None else (1.0, *sp)
        pixel = float(min(sp)) if sp is not None else ASSUMED_PIXEL_MM
        hu, mask = slices.images[i], slices.masks[i]
        body = body_mask(hu[None], spacing3)[0]
        h, w = hu.shape
        for k in range(per_slice):
            kind = kinds[int(rng.integers(len(kinds)))]
            y0, y1, x0, x1 = _fov_rectangle(kind, mask, body, pixel, rng)
            y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
            if y1 - y0 < 32 or x1 - x0 < 32:
                y0, y1, x0, x1 = 0, h, 0, w
            view = hu[y0:y1, x0:x1]
            box = crop_box(body_mask(view[None], spacing3)[0], sp)
            image = np.full_like(hu, -1000)
            image[y0:y1, x0:x1] = view
            cut = np.zeros_like(mask)
            cut[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
            images.append(image)
            masks.append(cut)
            cases.append(slices.cases[i])
            names.append(f"{slices.names[i]}#fov{k}-{kind}")
            spacings.append(sp)
            boxes.append(None if box is None else (box[0] + y0, box[1] + y0, box[2] + x0, box[3] + x0))
    if not images:
        return SliceSet(np.zeros((0, 1, 1), np.int16), np.zeros((0, 1, 1), bool), [], [])
    return SliceSet(np.stack(images), np.stack(masks), cases, names, spacings, boxes)
