"""Writing label maps: the format follows the suffix (NIfTI, NRRD, MHA, Slicer ``.seg.nrrd``, DICOM SEG)."""

from __future__ import annotations

from pathlib import Path

from .files import LABEL_SUFFIXES, atomic_output, suffix

__all__ = ["check_output_path", "write_image"]


def check_output_path(path: str | Path) -> Path:
    """Raise ``ValueError`` unless ``path`` ends in a label-map suffix we can write."""
    p = Path(path)
    if suffix(p) not in LABEL_SUFFIXES:
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
    :mod:`FusionLungSegLib.io.outputs`.
    """
    import SimpleITK as sitk

    p = check_output_path(path)
    if suffix(p) == ".seg.nrrd":
        from .outputs import write_seg_nrrd

        return write_seg_nrrd(image, p)
    if suffix(p) == ".dcm":
        from .outputs import write_dicom_seg

        return Path(write_dicom_seg(image, source, p, model=model)["path"])
    with atomic_output(p) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return p
