"""Writing label maps: the format follows the suffix (NIfTI, NRRD, MHA, Slicer ``.seg.nrrd``, DICOM SEG)."""

from __future__ import annotations

from pathlib import Path

from .files import LABEL_SUFFIXES, atomic_output, suffix

__all__ = ["check_output_path", "write_image", "write_outputs"]


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


def write_outputs(
    image, labels, outputs: dict, *, source=None, series_uid: str | None = None, model: str | None = None
) -> dict:
    """Write the label map ``labels`` (on the CT ``image``'s grid) once per format in ``outputs`` (format ->
    path): ``nii.gz`` and ``seg.nrrd`` (the label map, a Slicer segmentation), ``dcm`` (a DICOM SEG of the
    DICOM series ``source``, ``series_uid`` where its folder holds several; ``model``: the model to record) and
    ``png`` (an overlay of ``image``).  Other formats (a JSON report) are the caller's.  Returns ``outputs``."""
    for fmt in ("nii.gz", "seg.nrrd"):
        if fmt in outputs:
            write_image(labels, outputs[fmt])
    if "dcm" in outputs:
        from .outputs import write_dicom_seg

        write_dicom_seg(labels, source, outputs["dcm"], model=model, series_uid=series_uid)
    if "png" in outputs:
        from .png import overlay_png

        overlay_png(image, labels, outputs["png"])
    return outputs
