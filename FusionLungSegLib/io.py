"""Reading CT (file or DICOM folder) and writing label maps safely."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["read_image", "write_image", "dicom_series_files", "atomic_output", "IMAGE_SUFFIXES", "LABEL_SUFFIXES"]

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: Outputs: label maps (.nii, .nii.gz, .nrrd, .mha), Slicer segmentation (.seg.nrrd), DICOM SEG (.dcm).
LABEL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".dcm")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def output_stem(path: str | Path) -> str:
    """File name without its output suffix: ``lungs.seg.nrrd`` -> ``lungs``."""
    p = Path(path)
    return p.name[: -len(_suffix(p))] if _suffix(p) else p.name


@contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success, remove it on any error."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=_suffix(p), dir=p.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written output gets the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def check_output_path(path: str | Path) -> Path:
    """Raise ``ValueError`` unless ``path`` ends in a label-map suffix we can write."""
    p = Path(path)
    if _suffix(p) not in LABEL_SUFFIXES:
        raise ValueError(f"{p}: output must end in one of {', '.join(LABEL_SUFFIXES)}")
    if p.is_dir():
        raise ValueError(f"{p}: output is a folder; give a file name such as {p / 'lungs.nii.gz'}")
    return p


def write_image(image, path: str | Path, compress: bool = True, *, source=None, model: str | None = None) -> Path:
    """Write ``image`` to ``path`` atomically (temporary file in the same folder, then rename).

    The format follows the suffix; a failed write leaves no partial file.  A label
    map (0/1/2) written as ``.seg.nrrd`` becomes a Slicer segmentation with named,
    coloured and coded segments; as ``.dcm`` a DICOM SEG of the DICOM series
    ``source`` it was computed from (``model``: model version to record).  See
    :mod:`FusionLungSegLib.outputs`.
    """
    import SimpleITK as sitk

    p = check_output_path(path)
    if _suffix(p) == ".seg.nrrd":
        from .outputs import write_seg_nrrd

        return write_seg_nrrd(image, p)
    if _suffix(p) == ".dcm":
        from .outputs import write_dicom_seg

        return Path(write_dicom_seg(image, source, p, model=model)["path"])
    with atomic_output(p) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return p


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
