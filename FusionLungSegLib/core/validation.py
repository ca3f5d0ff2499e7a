"""Is this a CT the pipeline can segment?  Checks that fail with a message that says what to do."""

from __future__ import annotations

import numpy as np

__all__ = ["InvalidInputError", "validate_ct", "check_hu_range"]


class InvalidInputError(ValueError):
    """The input is not a CT volume this model can segment; the message says why."""


def validate_ct(image) -> bool:
    """Raise :class:`InvalidInputError` unless ``image`` looks like a 3D CT in HU.

    Returns False for a valid image that holds nothing but air (no lungs to find).
    """
    import SimpleITK as sitk

    if not isinstance(image, sitk.Image):
        raise InvalidInputError(f"expected a SimpleITK.Image, got {type(image).__name__}")
    dim = image.GetDimension()
    if dim != 3:
        raise InvalidInputError(
            f"expected a 3D CT volume, got a {dim}D image of size {image.GetSize()}"
            + ("; for a single slice, stack it into a volume with SimpleITK.JoinSeries" if dim == 2 else "")
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(
            f"expected a scalar CT, got {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(a colour or vector image)"
        )
    if 0 in image.GetSize():
        raise InvalidInputError(f"the image is empty (size {image.GetSize()})")
    spacing = np.asarray(image.GetSpacing(), float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidInputError(f"voxel spacing must be positive, got {tuple(spacing)}")
    return check_hu_range(sitk.GetArrayViewFromImage(image))


def check_hu_range(array: np.ndarray) -> bool:
    """Raise :class:`InvalidInputError` for a label map or values that are not CT in HU.

    Looks at a strided sample, so it costs little on large volumes.  Returns
    False when the image is nothing but air (valid, but there is nothing to segment).
    """
    step = max(1, int(round((array.size / 2_000_000) ** (1 / 3))))
    sample = np.asarray(array[::step, ::step, ::step])
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample.ravel()
    if finite.size == 0:
        raise InvalidInputError("the image holds no finite values (all NaN or infinite)")
    lo, hi = float(finite.min()), float(finite.max())
    if lo == hi:
        if lo <= -500:
            return False  # all air: valid, the result is empty
        raise InvalidInputError(f"the image is constant ({lo:g}); a CT in HU has air near -1000 and tissue near 0")
    if sample.dtype.kind in "iub" and lo >= 0 and hi <= 255 and np.unique(finite).size <= 16:
        raise InvalidInputError(
            f"this looks like a label map or mask (only {np.unique(finite).size} distinct values between "
            f"{lo:g} and {hi:g}), not a CT; choose the CT volume as input"
        )
    if np.percentile(finite, 1) > -300:
        raise InvalidInputError(
            f"values range from {lo:g} to {hi:g}, but a chest CT in Hounsfield units has air and lungs "
            "near -1000 HU. This may be an MR image or a CT stored without its rescale slope/intercept "
            "(e.g. unsigned values shifted by +1024): convert it to HU first"
        )
    return True
