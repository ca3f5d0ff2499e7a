"""File names and safe writes: the suffixes read and written, and :func:`atomic_output`, the one way this
package writes a file (a temporary file beside it, renamed into place, so a failed write leaves nothing)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "LABEL_SUFFIXES", "suffix", "output_stem", "atomic_output", "atomic_write_text"]

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: Outputs: label maps (.nii, .nii.gz, .nrrd, .mha), Slicer segmentation (.seg.nrrd), DICOM SEG (.dcm).
LABEL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".dcm")


def suffix(path: Path) -> str:
    """The file's format suffix, lower case, with the double suffixes ``.nii.gz`` and ``.seg.nrrd``."""
    name = path.name.lower()
    for double in (".nii.gz", ".seg.nrrd"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def output_stem(path: str | Path) -> str:
    """File name without its output suffix: ``lungs.seg.nrrd`` -> ``lungs``."""
    p = Path(path)
    return p.name[: -len(suffix(p))] if suffix(p) else p.name


@contextmanager
def atomic_output(path: str | Path):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success, remove it on any error."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix(p), dir=p.parent)
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


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)
