"""The cases of a batch: CT files, folders searched recursively, DICOM trees (one case per CT series) and CSV
manifests, each with a stable, unique case id that names its outputs."""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..io.files import IMAGE_SUFFIXES, suffix

__all__ = ["Case", "Skipped", "find_cases", "read_manifest", "case_under", "SCAN_SUFFIXES"]

#: CT files a folder search takes as cases (DICOM files are grouped into series instead; a ``.seg.nrrd`` is a
#: segmentation, not a scan).
SCAN_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s != ".dcm")
_CT_MODALITY = "CT"
_DICOM_TAGS = ["Modality", "SeriesInstanceUID", "ImageType", "SOPClassUID"]
#: Storage classes that hold no CT image to segment (a series of them is skipped even without a Modality)
_NOT_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation (SEG)",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT structure set (RTSTRUCT)",
    "1.2.840.10008.5.1.4.1.1.88.11": "structured report",
    "1.2.840.10008.5.1.4.1.1.88.22": "structured report",
    "1.2.840.10008.5.1.4.1.1.88.33": "structured report",
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
}


@dataclass(frozen=True)
class Case:
    """One scan to segment: ``path`` (a CT file or a DICOM folder, absolute), ``series_uid`` (the CT series in that
    folder; None for files and single-series folders named by a manifest) and ``case_id`` (unique in the
    batch, a relative path with ``/`` that names the case's outputs under the output folder)."""

    case_id: str
    path: str
    series_uid: str | None = None

    @property
    def is_dicom(self) -> bool:
        p = Path(self.path)
        return p.is_dir() or p.suffix.lower() == ".dcm"


@dataclass(frozen=True)
class Skipped:
    """Something the search found and left out, with the reason (a localizer, an RTSTRUCT, not a CT...)."""

    path: str
    reason: str


def _scan_stem(name: str) -> str | None:
    """The file name without its suffix if it names a CT scan, else None."""
    s = suffix(Path(name))
    return name[: -len(s)] if s in SCAN_SUFFIXES else None


def _safe_id(text: str) -> str:
    """A case id a file system takes: path parts kept, odd characters replaced, no '..' or empty parts."""
    parts = [re.sub(r"[^A-Za-z0-9._+-]", "_", p).strip(".") or "_" for p in re.split(r"[\\/]+", text) if p]
    return "/".join(parts) or "case"


def _dicom_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_DICOM_TAGS)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError, KeyError, TypeError):
        return None


def _series_in_folder(folder: Path, files: list[Path], skipped: list[Skipped]) -> list[tuple[str, int]]:
    """The CT series (UID, file count) among ``files`` of one folder; other series go to ``skipped``."""
    series: dict[str, list] = defaultdict(list)
    for f in files:
        ds = _dicom_header(f)
        if ds is None or "SeriesInstanceUID" not in ds:
            continue  # not DICOM: a folder of scans may hold notes, thumbnails...
        series[str(ds.SeriesInstanceUID)].append(ds)
    found = []
    for uid, headers in sorted(series.items()):
        modality = str(headers[0].get("Modality", "") or "")
        sop_class = str(headers[0].get("SOPClassUID", "") or "")
        image_type = [str(v).upper() for v in (headers[0].get("ImageType") or [])]
        where = f"{folder} series {uid}"
        if sop_class in _NOT_IMAGES:
            skipped.append(Skipped(where, f"{_NOT_IMAGES[sop_class]}, not a CT image series"))
        elif modality and modality != _CT_MODALITY:  # no Modality (a stripped file): tried as CT
            skipped.append(Skipped(where, f"modality {modality}, not CT"))
        elif "LOCALIZER" in image_type:
            skipped.append(Skipped(where, "CT localizer (scout)"))
        else:
            found.append((uid, len(headers)))
    return found


def _search_folder(root: Path, cases: list[Case], skipped: list[Skipped], prefix: str, exclude: set[str]) -> None:
    seen = set(exclude)
    for folder, dirs, names in os.walk(root, followlinks=True):  # linked folders too, each real one once
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        folder_path = Path(folder)
        rel = folder_path.relative_to(root).as_posix()
        base = prefix if rel == "." else f"{prefix}/{rel}" if prefix else rel
        others = []
        for name in sorted(names):
            stem = _scan_stem(name)
            if stem is not None:
                cases.append(Case(_safe_id(f"{base}/{stem}" if base else stem), str((folder_path / name).resolve())))
            elif not name.startswith("."):
                others.append(folder_path / name)
        series = _series_in_folder(folder_path, others, skipped) if others else []
        for uid, _ in series:
            name = base or root.name
            if len(series) > 1:  # several CT series in one folder: one case each, named by series UID
                name = f"{name}/{uid}"
            cases.append(Case(_safe_id(name), str(folder_path.resolve()), uid if len(series) > 1 else None))


def case_under(root: Path, path: Path) -> Case:
    """The case of one CT file or DICOM folder ``path`` under the folder ``root``, named as a search of ``root``
    names it (its relative path, without the scan suffix)."""
    rel = path.relative_to(root)
    stem = _scan_stem(path.name) if path.is_file() else None
    return Case(_safe_id((rel.parent / stem).as_posix() if stem else rel.as_posix()), str(path))


def read_manifest(path: str | Path) -> list[Case]:
    """Cases from a CSV manifest with the columns ``case_id`` (or ``case``) and ``path`` (a CT file or DICOM
    folder, relative paths from the manifest's folder), optionally ``series_uid``."""
    p = Path(path)
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return []
    columns = set(rows[0])
    id_column = "case_id" if "case_id" in columns else "case" if "case" in columns else None
    if id_column is None or "path" not in columns:
        raise ValueError(f"{p}: a manifest needs the columns case_id and path (found {', '.join(sorted(columns))})")
    cases = []
    for n, row in enumerate(rows, 2):
        if not (row.get(id_column) or "").strip() or not (row.get("path") or "").strip():
            raise ValueError(f"{p}, line {n}: empty case_id or path")
        scan = Path(row["path"].strip())
        scan = scan if scan.is_absolute() else p.parent / scan
        series_uid = (row.get("series_uid") or "").strip() or None
        cases.append(Case(_safe_id(row[id_column].strip()), str(scan.resolve()), series_uid))
    return cases


def find_cases(inputs: list[str | Path], exclude: str | Path | None = None) -> tuple[list[Case], list[Skipped]]:
    """The cases in ``inputs`` (files, folders searched recursively, DICOM trees, ``.csv`` manifests), in a
    stable order, and what was left out with the reason.  The folder ``exclude`` (the batch's output folder)
    is not searched, so a batch whose outputs lie inside its input never takes them for scans.  Raises
    ``FileNotFoundError`` for a missing input and ``ValueError`` for two cases with one id."""
    skip_folders = {os.path.realpath(exclude)} if exclude is not None else set()
    cases: list[Case] = []
    skipped: list[Skipped] = []
    several = len(inputs) > 1
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
        if p.is_file() and p.suffix.lower() == ".csv":
            cases += read_manifest(p)
        elif p.is_file():
            cases.append(Case(_safe_id(_scan_stem(p.name) or p.stem), str(p.resolve())))
        else:
            _search_folder(p, cases, skipped, _safe_id(p.resolve().name) if several else "", skip_folders)
    seen: dict[str, str] = {}
    for c in cases:
        if c.case_id in seen:
            raise ValueError(f"two cases would be named {c.case_id!r}: {seen[c.case_id]} and {c.path}; rename one")
        seen[c.case_id] = c.path
    return cases, skipped
