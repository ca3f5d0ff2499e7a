"""Reading CT and writing results: images (NIfTI, NRRD, MHA, DICOM series), Slicer ``.seg.nrrd``,
DICOM SEG and PNG overlays."""

from .files import IMAGE_SUFFIXES, LABEL_SUFFIXES, atomic_output, atomic_write_text, output_stem
from .images import dicom_series_files, read_image, to_file_grid
from .write import check_output_path, write_image, write_outputs

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "atomic_output",
    "atomic_write_text",
    "check_output_path",
    "dicom_series_files",
    "output_stem",
    "read_image",
    "to_file_grid",
    "write_image",
    "write_outputs",
]
