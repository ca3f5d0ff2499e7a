"""One case of a batch: read, segment with the worker's one segmenter, write the outputs ``segment`` writes,
return the report row.  The same function runs in a local worker process and in a Ray actor."""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..options import SegmentOptions
from .cases import Case

__all__ = ["FORMATS", "BatchSpec", "Worker", "case_outputs", "model_identity"]

#: What a case can write: label map (.nii.gz), Slicer segmentation (.seg.nrrd), overlay picture (.png), the
#: JSON report ``segment --json`` writes (.json) and, for DICOM input, a DICOM SEG (.dcm).
FORMATS = ("nii.gz", "seg.nrrd", "png", "json", "dcm")


@dataclass(frozen=True)
class BatchSpec:
    """What every case of a batch gets: the output folder, the formats and the segmentation options."""

    out_dir: str
    options: SegmentOptions
    formats: tuple[str, ...] = FORMATS

    def options_key(self) -> str:
        """The options that change a case's outputs, as one stable string (resume compares it)."""
        fields = asdict(self.options)
        for volatile in ("device", "batch_size", "weights"):  # the result does not depend on them (weights: sha256)
            fields.pop(volatile)
        return json.dumps({**fields, "formats": sorted(self.formats)}, sort_keys=True)


def model_identity(options: SegmentOptions) -> str:
    """The sha256 of the weights these options use ('none' for the HU threshold), without loading them."""
    if options.method != "network":
        return "none"
    from ..nets.weights import BUNDLED_SHA256, sha256_of

    if options.weights is None:
        return BUNDLED_SHA256
    if not Path(options.weights).is_file():
        raise FileNotFoundError(f"weights file not found: {options.weights}")
    return sha256_of(options.weights)


def case_outputs(spec: BatchSpec, case: Case) -> dict[str, Path]:
    """The files a case writes, by format: ``OUT/<case id>.<format>`` (``.dcm`` for DICOM input only)."""
    base = Path(spec.out_dir) / case.case_id
    return {f: base.with_name(f"{base.name}.{f}") for f in spec.formats if f != "dcm" or case.is_dicom}


class Worker:
    """Holds one segmenter (the model is loaded once) and segments cases one after another with ``threads``
    CPU threads.  :meth:`process` never raises for a bad case: the row says ``failed`` with the error."""

    def __init__(self, spec: BatchSpec, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.spec = spec
        self.segmenter = spec.options.segmenter(progress=False)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.model_sha256 = model_identity(spec.options)
        if spec.options.method == "network":
            from ..nets.weights import model_name

            self.model_version = model_name(self.segmenter.meta)
        else:
            self.model_version = spec.options.method

    def process(self, case: Case, attempt: int = 1) -> dict:
        t0 = time.monotonic()
        row = {"case": case.case_id, "input": case.path, "series_uid": case.series_uid or "", "worker": self.name}
        row.update(attempts=attempt, model_sha256=self.model_sha256, options=self.spec.options_key())
        row["model_version"] = self.model_version
        try:
            row.update(self._segment(case, t0))
            row["status"] = "ok"
        except (FileNotFoundError, ValueError) as exc:  # bad input: the message says it all
            row.update(status="failed", error=_one_line(exc))
        except Exception as exc:  # one bad scan must not stop the batch: the row carries the reason
            row.update(status="failed", error=_one_line(exc), traceback=traceback.format_exc())
        row["seconds"] = f"{time.monotonic() - t0:.1f}"
        row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return row

    def _segment(self, case: Case, t0: float) -> dict:
        from ..io import read_image, write_outputs

        image = read_image(case.path, case.series_uid)
        result = self.segmenter.run(image)
        outputs = case_outputs(self.spec, case)
        model = None
        if "dcm" in outputs:
            from ..nets.weights import describe_model

            model = describe_model(self.segmenter.meta, sha256=self.model_sha256)
        write_outputs(image, result.labels, outputs, source=case.path, series_uid=case.series_uid, model=model)
        from ..segmenter import segmentation_report

        report = segmentation_report(image, result, self.segmenter, time.monotonic() - t0)
        report = {"input": case.path, "case": case.case_id, **report, "model": self.model_version}
        if "json" in outputs:
            from ..io import atomic_write_text

            atomic_write_text(outputs["json"], json.dumps(report, indent=1))
        qc = result.qc
        return {
            "right_lung_ml": f"{report['right_lung_ml']:.1f}",
            "left_lung_ml": f"{report['left_lung_ml']:.1f}",
            "qc_ok": "yes" if qc["ok"] else "no",
            "qc_flags": " | ".join(qc["flags"]),
            "slices": report["slices"],
            "slices_skipped": report["slices_skipped"],
            "engine": report["backend"],
            "precision": report["precision"],
            "device": report["device"],
            "input_size": report["input_size"] or "",
            "outputs": ";".join(p.relative_to(self.spec.out_dir).as_posix() for p in outputs.values()),
            "error": "",
        }


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:500]
