"""Cut fields of view of a CT volume, made the way scanners and 3D Slicer make them.

A crop of a volume whose lungs are known is a new test case with a known answer:
the full volume's labels inside the crop.  :func:`crop_suite` draws a fixed set of
crops from a volume and its (full-volume) lung labels: a cardiac reconstruction
(a square field around the heart resampled to a 512 x 512 matrix), a Crop Volume
ROI around each lung with the mediastinum, each half of the patient, the anterior
and posterior 60 % of the body, and the upper and lower half of the slices.

Every crop is a ``SimpleITK.Image`` in the same physical space as the input (same
direction; origin and spacing of the sub-grid), so labels compare in physical
coordinates: :func:`resample_like` puts any label map on a crop's grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.geometry import AxialReorientation

__all__ = ["CropSpec", "CROP_NAMES", "crop_suite", "crop_image", "resample_like", "compare_sides"]

#: The crops of :func:`crop_suite`, in order.
CROP_NAMES = (
    "cardiac_220mm",
    "roi_right_lung",
    "roi_left_lung",
    "right_half",
    "left_half",
    "anterior_60",
    "posterior_60",
    "upper_half",
    "lower_half",
)


@dataclass(frozen=True)
class CropSpec:
    """A canonical index box ``[z0, z1) x [y0, y1) x [x0, x1)`` and, optionally, an in-plane matrix to
    resample it to (a targeted reconstruction: same field, smaller pixels)."""

    name: str
    box: tuple[int, int, int, int, int, int]
    matrix: int | None = None


def _index_region(reo: AxialReorientation, shape_kji, box) -> tuple[list[int], list[int]]:
    """ITK index and size (i, j, k) of a canonical box."""
    index, size = [0, 0, 0], [0, 0, 0]
    for c in range(3):
        lo, hi = box[2 * c], box[2 * c + 1]
        axis = reo.axes[c]  # numpy axis of the original [k, j, i] array
        n = shape_kji[axis]
        if reo.flip[c]:
            lo, hi = n - hi, n - lo
        index[2 - axis], size[2 - axis] = int(lo), int(hi - lo)
    return index, size


def crop_image(image, spec: CropSpec, interpolator=None):
    """The crop ``spec`` of a 3D ``SimpleITK.Image`` (a sub-grid; with ``spec.matrix``, resampled in-plane to
    ``matrix`` x ``matrix`` pixels covering the same field, linear for CT, nearest for labels)."""
    import SimpleITK as sitk

    reo = AxialReorientation.from_image(image)
    shape_kji = tuple(reversed(image.GetSize()))
    index, size = _index_region(reo, shape_kji, spec.box)
    roi = sitk.RegionOfInterest(image, size, index)
    if not spec.matrix:
        return roi
    in_plane = [2 - reo.axes[c] for c in (1, 2)]  # ITK dims of canonical y and x
    new_size, new_spacing = list(roi.GetSize()), list(roi.GetSpacing())
    for d in in_plane:
        field = new_size[d] * new_spacing[d]
        new_size[d], new_spacing[d] = spec.matrix, field / spec.matrix
    # Same field: the corner of the first voxel stays where it was.
    shift = np.zeros(3)
    for d in in_plane:
        shift[d] = (new_spacing[d] - roi.GetSpacing()[d]) / 2
    direction = np.asarray(roi.GetDirection()).reshape(3, 3)
    origin = np.asarray(roi.GetOrigin()) + direction @ shift
    ref = sitk.Image(new_size, roi.GetPixelID())
    ref.SetSpacing(new_spacing)
    ref.SetOrigin(tuple(origin))
    ref.SetDirection(roi.GetDirection())
    if interpolator is None:  # a label map keeps its values
        labels = roi.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8) or roi.GetNumberOfComponentsPerPixel() > 1
        interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    if interpolator == sitk.sitkNearestNeighbor:
        return sitk.Resample(roi, ref, sitk.Transform(), interpolator, 0)
    out = sitk.Resample(roi, ref, sitk.Transform(), interpolator, -1024.0, sitk.sitkFloat32)
    return sitk.Cast(sitk.Round(out), roi.GetPixelID())


def resample_like(labels, reference):
    """``labels`` (a label image in the same physical space) on ``reference``'s grid, nearest neighbour, 0 outside."""
    import SimpleITK as sitk

    return sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def crop_suite(image, labels, names=CROP_NAMES) -> list[CropSpec]:
    """The crops of ``image`` named in ``names``, placed from its full-volume lung ``labels`` (1 right, 2 left).

    The patient's midline is taken halfway between the two lungs' inner edges; the heart's field is
    220 mm square, centred between the lungs and a tenth of their depth in front of their centre,
    over the lower two thirds of the lungs.  Raises ValueError when a lung is missing.
    """
    import SimpleITK as sitk

    reo = AxialReorientation.from_image(image)
    lab = reo.to_canonical(sitk.GetArrayViewFromImage(labels))
    nz, ny, nx = lab.shape
    sz, sy, sx = reo.spacing_zyx
    sides = {}
    for side in (1, 2):
        zz, yy, xx = np.nonzero(lab == side)
        if zz.size == 0:
            raise ValueError(f"the labels hold no {'right' if side == 1 else 'left'} lung: cannot place the crops")
        sides[side] = (zz, yy, xx)
    lung = lab > 0
    zs, ys, xs = (np.flatnonzero(lung.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    r_inner = np.percentile(sides[1][2], 99)  # the right lung's medial edge (high x)
    l_inner = np.percentile(sides[2][2], 1)
    midline = int(round((r_inner + l_inner) / 2))
    body_y = (ys[0], ys[-1] + 1)
    depth = body_y[1] - body_y[0]
    pad_z, pad_y, pad_x = (max(1, int(round(10.0 / s))) for s in (sz, sy, sx))

    def clip(z0, z1, y0, y1, x0, x1):
        return (max(0, z0), min(nz, z1), max(0, y0), min(ny, y1), max(0, x0), min(nx, x1))

    lung_z = (zs[0], zs[-1] + 1)
    specs = {}
    half_x, half_y = int(round(110.0 / sx)), int(round(110.0 / sy))
    cy = int(round((ys[0] + ys[-1]) / 2 - 0.1 * depth))
    z_lo = lung_z[0] - pad_z
    z_hi = lung_z[0] + int(round(2 / 3 * (lung_z[1] - lung_z[0])))
    specs["cardiac_220mm"] = CropSpec(
        "cardiac_220mm", clip(z_lo, z_hi, cy - half_y, cy + half_y, midline - half_x, midline + half_x), 512
    )
    mediastinum = int(round(25.0 / sx))

    def lung_roi(side: int) -> tuple[int, int, int, int, int, int]:
        """Slicer's Crop Volume ROI around one lung, 10 mm beyond it and 25 mm past the midline."""
        zz, _, xx = sides[side]
        x0, x1 = (
            (xx.min() - pad_x, midline + mediastinum) if side == 1 else (midline - mediastinum, xx.max() + 1 + pad_x)
        )
        return clip(zz.min() - pad_z, zz.max() + 1 + pad_z, ys[0] - pad_y, ys[-1] + 1 + pad_y, x0, x1)

    specs["roi_right_lung"] = CropSpec("roi_right_lung", lung_roi(1))
    specs["roi_left_lung"] = CropSpec("roi_left_lung", lung_roi(2))
    specs["right_half"] = CropSpec("right_half", (0, nz, 0, ny, 0, midline))
    specs["left_half"] = CropSpec("left_half", (0, nz, 0, ny, midline, nx))
    # 60 % of the body's depth: the lungs' extent stands in for the body (ribs to sternum and spine).
    specs["anterior_60"] = CropSpec("anterior_60", (0, nz, 0, body_y[0] + int(round(0.6 * depth)), 0, nx))
    specs["posterior_60"] = CropSpec("posterior_60", (0, nz, body_y[1] - int(round(0.6 * depth)), ny, 0, nx))
    specs["upper_half"] = CropSpec("upper_half", (nz // 2, nz, 0, ny, 0, nx))
    specs["lower_half"] = CropSpec("lower_half", (0, nz - nz // 2, 0, ny, 0, nx))
    return [specs[n] for n in names]


def compare_sides(pred: np.ndarray, ref: np.ndarray, voxel_ml: float) -> dict:
    """Per side (1 right, 2 left) of two label arrays on one grid: Dice, the reference's mL, and the share
    of the reference side labelled as the other side (a swap)."""
    out = {}
    for side, name in ((1, "right"), (2, "left")):
        p, r = pred == side, ref == side
        n_ref, n_pred = int(np.count_nonzero(r)), int(np.count_nonzero(p))
        inter = int(np.count_nonzero(p & r))
        other = int(np.count_nonzero(r & (pred == 3 - side)))
        out[f"dice_{name}"] = 2 * inter / (n_ref + n_pred) if n_ref + n_pred else 1.0
        out[f"ref_{name}_ml"] = n_ref * voxel_ml
        out[f"pred_{name}_ml"] = n_pred * voxel_ml
        out[f"{name}_as_other"] = other / n_ref if n_ref else 0.0
    return out
