"""Segment a cohort: :func:`find_cases` (files, folders, DICOM trees, CSV manifests), :func:`run_batch` on
local worker processes or Ray actors, with resume, a report per case and progress (``fusionlungseg batch``)."""

from .cases import Case, Skipped, find_cases, read_manifest
from .run import ENGINES, BatchResult, cases_to_do, run_batch
from .work import FORMATS, BatchSpec, Worker

__all__ = [
    "Case",
    "Skipped",
    "find_cases",
    "read_manifest",
    "ENGINES",
    "BatchResult",
    "cases_to_do",
    "run_batch",
    "FORMATS",
    "BatchSpec",
    "Worker",
]
