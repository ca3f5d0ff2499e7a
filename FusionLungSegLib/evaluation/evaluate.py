"""Evaluation: a model on 2D slices (paper Table 2) and label maps against references (3D)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.metrics import TABLE2_KEYS, dice, hd95, table2_metrics, volume_ml

__all__ = [
    "evaluate_slices",
    "evaluate_label_images",
    "lung_ml_by_slice_range",
    "summarise",
    "format_table",
    "PAPER_TABLE2",
]

#: FusionLungNet on LungSegDB (paper, Table 2), percentages; U-Net baseline IoU 95.02.
PAPER_TABLE2 = {"iou": 98.04, "f1": 99.02, "precision": 98.65, "recall": 99.41, "accuracy": 99.73, "mcc": 98.67}


def evaluate_slices(segmenter, slices, postprocess: bool = False) -> list[dict]:
    """Run ``segmenter``'s network on each 2D slice of a :class:`data.SliceSet`; Table 2 rows.

    ``postprocess`` applies the pipeline's component cleaning and hole filling
    to each slice (as a one-slice volume); without it the raw network output is
    scored, as in the paper.
    """
    from ..core.body import ASSUMED_PIXEL_MM
    from ..core.postprocess import clean_lung_mask

    rows = []
    for i in range(len(slices)):
        hu = slices.images[i : i + 1]
        mask = segmenter.predict_canonical(hu, slices.spacing_yx[i])
        if postprocess:
            mask = clean_lung_mask(mask, (1.0, *(slices.spacing_yx[i] or (ASSUMED_PIXEL_MM,) * 2)))
        mask = mask[0]
        rows.append({"case": slices.names[i], **table2_metrics(mask, slices.masks[i])})
    return rows


def evaluate_label_images(pred, ref) -> dict:
    """Compare two label ``SimpleITK.Image`` on the same grid.

    Lungs = any non-zero label.  Returns Table 2 metrics on the whole lung,
    3D Dice and HD95 (mm) for lungs and for labels 1 (right) and 2 (left),
    and volumes in mL.
    """
    import SimpleITK as sitk

    if pred.GetSize() != ref.GetSize():
        raise ValueError(f"prediction size {pred.GetSize()} differs from reference size {ref.GetSize()}")
    if not np.allclose(pred.GetSpacing(), ref.GetSpacing(), atol=1e-3) or not np.allclose(
        pred.GetOrigin(), ref.GetOrigin(), atol=1e-2
    ):
        raise ValueError("prediction and reference are not on the same grid (spacing or origin differ); resample first")
    p = sitk.GetArrayViewFromImage(pred)
    r = sitk.GetArrayViewFromImage(ref)
    spacing = tuple(reversed(pred.GetSpacing()))[-p.ndim :]
    row = table2_metrics(p > 0, r > 0)
    row["dice_3d"] = row["f1"]
    row["hd95_mm"] = hd95(p > 0, r > 0, spacing)
    row["volume_ml"] = volume_ml(p > 0, spacing)
    row["ref_volume_ml"] = volume_ml(r > 0, spacing)
    if p.ndim == 3:  # lung called on axial slices where the reference has none (neck, abdomen)
        from ..core.geometry import AxialReorientation

        reo = AxialReorientation.from_image(ref)
        p_can, r_can = reo.to_canonical(p), reo.to_canonical(r)
        free = ~(r_can > 0).any(axis=(1, 2))
        row["ml_on_ref_free_slices"] = volume_ml(p_can[free] > 0, reo.spacing_zyx)
        row["ref_free_slices"] = int(free.sum())
    if (r == 1).any() or (r == 2).any():  # reference has right/left labels
        for label, side in ((1, "right"), (2, "left")):
            row[f"dice_{side}"] = dice(p == label, r == label)
            row[f"hd95_{side}_mm"] = hd95(p == label, r == label, spacing)
            row[f"volume_{side}_ml"] = volume_ml(p == label, spacing)
            row[f"ref_volume_{side}_ml"] = volume_ml(r == label, spacing)
    return row


def lung_ml_by_slice_range(labels, ranges: int | list[tuple[int, int]] = 10) -> list[dict]:
    """Lung volume (mL, right and left) per range of canonical axial slices of a label ``SimpleITK.Image``.

    ``ranges``: a number of equal ranges, or a list of inclusive ``(first, last)``
    canonical slice numbers (0 = most inferior).
    """
    import SimpleITK as sitk

    from ..core.geometry import AxialReorientation

    reo = AxialReorientation.from_image(labels)
    lab = reo.to_canonical(sitk.GetArrayViewFromImage(labels))
    n = lab.shape[0]
    if isinstance(ranges, int):
        edges = np.linspace(0, n, max(1, min(ranges, n)) + 1).round().astype(int)
        ranges = [(int(a), int(b) - 1) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    voxel_ml = float(np.prod(reo.spacing_zyx)) / 1000.0
    rows = []
    for first, last in ranges:
        part = lab[max(0, first) : min(n, last + 1)]
        right, left = int(np.count_nonzero(part == 1)), int(np.count_nonzero(part == 2))
        rows.append(
            {
                "slices": [int(first), int(last)],
                "right_ml": round(right * voxel_ml, 1),
                "left_ml": round(left * voxel_ml, 1),
                "slices_with_lung": int(np.count_nonzero((part > 0).any(axis=(1, 2)))),
            }
        )
    return rows


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of every numeric key over ``rows``."""
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))] if rows else []
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows if isinstance(r.get(k), (int, float))], float)
        finite = vals[np.isfinite(vals)]
        out[k] = {
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            "n": int(vals.size),
        }
    return out


def format_table(rows: list[dict], keys=TABLE2_KEYS, percent: bool = True) -> str:
    """Plain-text table: one row per case, then mean ± sd; each column as wide as its widest entry."""
    scale = 100.0 if percent else 1.0
    summary = summarise(rows)
    cells = [[str(r.get("case", "")) for r in rows]]
    foot = ["mean ± sd"]
    for k in keys:
        cells.append([_fmt(r.get(k), scale, k) for r in rows])
        stats = summary.get(k)
        foot.append(f"{_fmt(stats['mean'], scale, k)} ± {_fmt(stats['sd'], scale, k)}" if stats else "")
    heads = ["case", *keys]
    widths = [max(len(h), len(f), *(len(c) for c in col)) for h, f, col in zip(heads, foot, cells)]

    def line(values) -> str:
        first, rest = values[0].ljust(widths[0]), values[1:]
        return first + "".join("  " + v.rjust(w) for v, w in zip(rest, widths[1:]))

    head = line(heads)
    rule = "-" * len(head)
    return "\n".join([head, rule, *(line(list(row)) for row in zip(*cells)), rule, line(foot)])


def _fmt(v, scale, key) -> str:
    if v is None:
        return "-"
    if key in TABLE2_KEYS or key.startswith("dice"):
        return f"{v * scale:.2f}"
    return f"{v:.2f}"


def match_files(pred: Path, ref: Path) -> list[tuple[str, Path, Path]]:
    """Pairs (case, prediction, reference): two files, or two folders matched by file name."""
    if pred.is_file() and ref.is_file():
        return [(pred.name, pred, ref)]
    if pred.is_dir() and ref.is_dir():
        refs = {f.name: f for f in ref.iterdir() if f.is_file()}
        pairs = [(f.name, f, refs[f.name]) for f in sorted(pred.iterdir()) if f.name in refs]
        if not pairs:
            raise FileNotFoundError(f"no file names in common between {pred} and {ref}")
        return pairs
    raise FileNotFoundError(f"give two files or two folders (got {pred} and {ref})")
