"""What the web page does, without the page: list and open the cases under the data folder, segment the open
case in a worker thread (the same :class:`~FusionLungSegLib.mrml.LungSegmentationLogic` as the Slicer panel,
so the same ``segment_volume``), and export the segmentation as it is in the scene (after the user's
corrections) with the library's writers.  No trame here: the page (:mod:`.app`) only wires widgets to this.

Safety: only cases inside the data folder open and only the export folder is written; one run at a time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..batch.cases import Case, case_under, find_cases
from ..core.terminology import LUNG_SEGMENTS
from ..mrml import (
    InvalidInputError,
    LungSegmentationLogic,
    SegmentationTask,
    labels_from_segmentation,
    sitk_to_volume_node,
)
from ..options import SegmentOptions

__all__ = ["WebSession", "CaseRefused", "RunSummary", "EXPORT_FORMATS"]

#: What **Export** writes: the label map, the Slicer segmentation, the overlay picture, the report (JSON) and,
#: for DICOM input, a DICOM SEG.
EXPORT_FORMATS = ("seg.nrrd", "nii.gz", "png", "json", "dcm")


class CaseRefused(ValueError):
    """A case name the page may not open: outside the data folder, or not there."""


@dataclass
class RunSummary:
    """What the page shows after a run: lung volumes (mL), the QC verdict and how the run went."""

    right_ml: float
    left_ml: float
    qc: dict
    seconds: float
    device: str
    precision: str
    input_size: int | None
    report: dict = field(default_factory=dict)


def _inside(root: Path, name: str) -> Path:
    """``root / name`` without leaving ``root``: '..' and absolute paths elsewhere are refused (links that the
    operator put inside the folder are followed, like a web server's)."""
    path = Path(os.path.normpath(os.path.join(root, name)))
    if path != root and root not in path.parents:
        raise CaseRefused(f"{name!r} is outside the data folder {root}; choose a case from the list")
    return path


class WebSession:
    """One page's work on one MRML ``scene``: the cases under ``data_dir``, the open case, a segmentation
    run, exports to ``out_dir``.  ``options`` are the server's defaults (device, precision, input size, engine);
    each run may change device, precision and fast mode."""

    def __init__(self, scene, data_dir: str | Path, out_dir: str | Path, options: SegmentOptions | None = None):
        self.scene = scene
        self.data_dir = Path(os.path.abspath(data_dir))
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"data folder not found: {self.data_dir}")
        self.out_dir = Path(os.path.abspath(out_dir))
        self.options = options or SegmentOptions()
        self.logic = LungSegmentationLogic(scene)
        self.case: Case | None = None
        self.image = None  # the open case's CT as read from disk (SimpleITK)
        self.volume_node = None
        self.segmentation_node = None
        self.task: SegmentationTask | None = None
        self.summary: RunSummary | None = None
        self._cases: dict[str, Case] = {}

    # ------------------------------------------------------------ cases
    def list_cases(self) -> list[str]:
        """Case names under the data folder (CT files and DICOM series; the export folder left out)."""
        cases, _ = find_cases([self.data_dir], exclude=self.out_dir)
        self._cases = {c.case_id: c for c in cases}
        return list(self._cases)

    def find_case(self, name: str) -> Case:
        """The case called ``name``: a listed case, or a file or DICOM folder given by its path under the data
        folder.  Raises :class:`CaseRefused` for anything outside the data folder or not there."""
        name = (name or "").strip()
        if not name:
            raise CaseRefused("no case chosen")
        if not self._cases:
            self.list_cases()
        if name in self._cases:
            return self._cases[name]
        path = _inside(self.data_dir, name)
        if not path.exists():
            raise CaseRefused(f"{name!r}: no such case or file under the data folder {self.data_dir}")
        return case_under(self.data_dir, path)

    def open(self, name: str) -> Case:
        """Read the case, check it is a CT (the CLI's checks and messages) and show it in the scene in place of
        the previous case.  On any error the previous case stays open."""
        if self.busy:
            raise RuntimeError("a segmentation is running; cancel it or wait before opening another case")
        from ..io import read_image
        from ..segmenter import validate_ct

        case = self.find_case(name)
        image = read_image(case.path, case.series_uid)
        validate_ct(image)
        volume_node = sitk_to_volume_node(image, self.scene, Path(case.case_id).name)
        self.close()
        self.case, self.image, self.volume_node = case, image, volume_node
        return case

    def close(self) -> None:
        """Remove the open case's volume and segmentation from the scene."""
        for node in (self.segmentation_node, self.volume_node):
            if node is not None and self.scene.IsNodePresent(node):
                self.scene.RemoveNode(node)
        self.case = self.image = self.volume_node = self.segmentation_node = None
        self.summary = None

    # ------------------------------------------------------------ segmentation
    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.finished

    def run_options(self, device: str | None = None, precision: str | None = None, fast: bool | None = None):
        """The server's options with the page's device, precision and fast mode."""
        from dataclasses import replace

        changes = {k: v for k, v in {"device": device, "precision": precision}.items() if v}
        if fast is not None:
            changes.update(fast=bool(fast), input_size=None if fast else self.options.input_size)
        return replace(self.options, **changes)

    def start(self, segmentation_node=None, **page_options) -> SegmentationTask:
        """Start segmenting the open case in a worker thread; poll the returned task, then :meth:`finish`.
        The lungs go into ``segmentation_node`` (the editor's) or a new node; other segments are kept."""
        if self.busy:
            raise RuntimeError("a segmentation is already running")
        if self.volume_node is None:
            raise InvalidInputError("no case is open: choose one first")
        options = self.run_options(**page_options)  # the logic keeps one loaded model per set of options
        request = self.logic.prepare(self.volume_node, segmentation_node or self.segmentation_node, options=options)
        self.task = SegmentationTask(self.logic, request)
        return self.task.start()

    def finish(self) -> RunSummary:
        """Main thread, once the task has finished: write the lungs into the scene and summarise the run.
        Raises the run's error (``SegmentationCancelled`` after a cancel) with the scene unchanged."""
        from ..segmenter import segmentation_report

        self.segmentation_node = self.task.finish()
        computed = self.logic.last_result
        report = {
            "input": self.case.path,
            "case": self.case.case_id,
            **segmentation_report(self.image, computed.output, computed.segmenter, self.logic.last_seconds),
        }
        self.summary = RunSummary(
            right_ml=report["right_lung_ml"],
            left_ml=report["left_lung_ml"],
            qc=report["qc"],
            seconds=report["seconds"],
            device=report["device"],
            precision=report["precision"],
            input_size=report["input_size"],
            report=report,
        )
        return self.summary

    # ------------------------------------------------------------ export
    def labels(self):
        """The lungs as they are in the scene now (after corrections), on the open case's grid."""
        if self.segmentation_node is None:
            raise InvalidInputError("nothing to export: segment the lungs first")
        return labels_from_segmentation(self.segmentation_node, self.volume_node)

    def export(self, formats: tuple[str, ...] = EXPORT_FORMATS) -> dict[str, Path]:
        """Write the current segmentation under the export folder as ``<case>.<format>`` (``dcm`` only for DICOM
        input); returns format -> path."""
        from ..io import atomic_write_text, write_outputs

        labels = self.labels()
        base = self.out_dir / self.case.case_id
        outputs = {f: base.with_name(f"{base.name}.{f}") for f in formats if f != "dcm" or self.case.is_dicom}
        base.parent.mkdir(parents=True, exist_ok=True)
        model = None
        if "dcm" in outputs:
            from ..nets.weights import describe_model

            model = describe_model(self.logic.last_result.segmenter.meta, self.options.weights)
        json_path = outputs.pop("json", None)
        write_outputs(self.image, labels, outputs, source=self.case.path, series_uid=self.case.series_uid, model=model)
        if json_path is not None:
            report = dict(self.summary.report) if self.summary else {}
            report["exported_lung_ml"] = _volumes_ml(labels)  # after the user's corrections
            atomic_write_text(json_path, json.dumps(report, indent=1, default=str))
            outputs["json"] = json_path
        return outputs


def _volumes_ml(labels) -> dict[str, float]:
    import SimpleITK as sitk

    from ..core.metrics import volume_ml

    arr, spacing_zyx = sitk.GetArrayViewFromImage(labels), labels.GetSpacing()[::-1]
    return {s.name: round(volume_ml(arr == s.value, spacing_zyx), 1) for s in LUNG_SEGMENTS}
