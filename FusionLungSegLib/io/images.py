"""Reading CT: a file (NIfTI, NRRD, MHA) or a DICOM series folder; label maps onto a file's own grid."""

from __future__ import annotations

from pathlib import Path

from .files import IMAGE_SUFFIXES

__all__ = ["read_image", "dicom_series_files", "to_file_grid"]


def dicom_series_files(folder: str | Path, series_uid: str | None = None) -> list[str]:
    """The files of the DICOM series in ``folder``, in slice order: file ``k`` is slice ``k`` of :func:`read_image`.

    The folder must hold exactly one series unless ``series_uid`` picks one; raises ``ValueError`` otherwise.
    """
    import SimpleITK as sitk

    p = Path(folder)
    series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)) or [])
    if not series:
        raise ValueError(f"{p}: folder holds no DICOM series (give a NIfTI/NRRD/MHA file or a DICOM folder)")
    if series_uid is None:
        if len(series) > 1:
            raise ValueError(
                f"{p}: folder holds {len(series)} DICOM series ({', '.join(series)}); "
                "put one series per folder or pass its SeriesInstanceUID"
            )
        series_uid = series[0]
    elif series_uid not in series:
        raise ValueError(f"{p}: no DICOM series {series_uid} (found {', '.join(series)})")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), series_uid))


def read_image(path: str | Path, series_uid: str | None = None):
    """Read a CT as a ``SimpleITK.Image``: NIfTI, NRRD, MHA/MHD, one DICOM file, or a DICOM folder.

    A folder must hold exactly one DICOM series unless ``series_uid`` picks one.
    Raises ``FileNotFoundError`` or ``ValueError`` with the reason.
    """
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input not found: {p}")
    if p.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(dicom_series_files(p, series_uid))
        try:
            return reader.Execute()
        except RuntimeError as exc:
            raise ValueError(f"{p}: cannot read DICOM series: {str(exc).strip().splitlines()[-1]}") from None
    try:
        return sitk.ReadImage(str(p))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()
        raise ValueError(
            f"{p}: cannot read image ({msg[-1] if msg else 'unknown format'}); "
            f"supported: {', '.join(IMAGE_SUFFIXES)} files or a DICOM folder"
        ) from None


def to_file_grid(labels, path: str | Path):
    """Nearest-neighbour copy of a label image onto the voxel grid stored in the file ``path``.

    Slicer may index a loaded volume differently from the file (e.g. a flipped
    slice axis); the voxel centres are the same points, so this is exact.
    Returns ``labels`` unchanged when the grids already agree or ``path`` is a folder.
    """
    import numpy as np
    import SimpleITK as sitk

    p = Path(path)
    if p.is_dir():
        return labels
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.ReadImageInformation()
    size, spacing = reader.GetSize(), reader.GetSpacing()
    origin, direction = reader.GetOrigin(), reader.GetDirection()
    if (
        tuple(size) == labels.GetSize()
        and np.allclose(spacing, labels.GetSpacing())
        and np.allclose(origin, labels.GetOrigin(), atol=1e-4)
        and np.allclose(direction, labels.GetDirection(), atol=1e-6)
    ):
        return labels
    reference = sitk.Image(list(size), labels.GetPixelID())
    reference.SetSpacing(spacing)
    reference.SetOrigin(origin)
    reference.SetDirection(direction)
    return sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
