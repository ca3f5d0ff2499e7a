"""MRML front door: segment a Slicer volume node into "right lung" and "left lung" segments.

The only module of the library that imports ``slicer``.  It uses MRML nodes,
vtkSegmentationCore and numpy only (no Qt), so it runs inside the Slicer
application, in ``Slicer --no-main-window`` batch runs and with the
``slicer-core`` wheel in plain Python.

Nothing in the scene changes until the network and post-processing have
finished: a failed or cancelled run leaves the scene as it was.

A run has three parts: :meth:`LungSegmentationLogic.prepare` (main thread:
checks, and copies the voxels out of the scene), :meth:`~LungSegmentationLogic.compute`
(any thread: the model on that copy; it never touches the scene) and
:meth:`~LungSegmentationLogic.apply` (main thread: writes the segments).
``segment()`` runs the three in a row; :class:`SegmentationTask` runs compute in a
worker thread so that a GUI stays responsive, and applies on the main thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import slicer

from .core.tasks import CANCELLING, DONE, FAILED, IDLE, RUNNING, BackgroundTask
from .core.terminology import LUNG_SEGMENTS, SEGMENTS
from .options import SegmentOptions
from .segmenter import (
    InvalidInputError,
    LungSegmenter,
    SegmentationCancelled,
    check_hu_range,
)

__all__ = [
    "LungSegmentationLogic",
    "SegmentationRequest",
    "SegmentationComputed",
    "SegmentationTask",
    "IDLE",
    "RUNNING",
    "CANCELLING",
    "DONE",
    "FAILED",
    "SEGMENTS",
    "volume_node_to_sitk",
    "sitk_to_volume_node",
    "labels_from_segmentation",
    "HeadlessSlicer",
    "SegmentationCancelled",
    "InvalidInputError",
]

log = logging.getLogger(__name__)

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _ijk_to_ras(volume_node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _with_node_geometry(image, volume_node):
    """Give ``image`` (on ``volume_node``'s KJI array grid) the node's spacing, origin and direction, in LPS."""
    m = _ijk_to_ras(volume_node)
    spacing = np.asarray(volume_node.GetSpacing(), float)
    direction_ras = m[:3, :3] / spacing  # unit columns
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(_RAS_TO_LPS @ m[:3, 3]))
    image.SetDirection(tuple((_RAS_TO_LPS @ direction_ras).ravel()))
    return image


def volume_node_to_sitk(volume_node):
    """Copy a scalar volume node into a ``SimpleITK.Image`` with the same voxel grid (LPS geometry).

    The array keeps the node's own KJI order, so label arrays computed on the
    image map back voxel for voxel.
    """
    import SimpleITK as sitk

    arr = slicer.util.arrayFromVolume(volume_node)
    return _with_node_geometry(sitk.GetImageFromArray(np.array(arr, copy=True)), volume_node)


def _options(weights, device: str, input_size: int | None, precision: str) -> SegmentOptions:
    return SegmentOptions(
        weights=str(weights) if weights else None, device=device, input_size=input_size, precision=precision
    )


def sitk_to_volume_node(image, scene, name: str = "CT"):
    """Add a ``vtkMRMLScalarVolumeNode`` holding ``image`` (same voxels, LPS geometry -> RAS)."""
    import SimpleITK as sitk
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    spacing = np.asarray(image.GetSpacing(), float)
    direction_ras = _RAS_TO_LPS @ np.asarray(image.GetDirection(), float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = direction_ras * spacing
    m[:3, 3] = _RAS_TO_LPS @ np.asarray(image.GetOrigin(), float)
    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, m[r, c])
    node.SetIJKToRASMatrix(vm)
    node.CreateDefaultDisplayNodes()
    return node


class HeadlessSlicer:
    """A scene wired with the logics it needs, for plain Python with the ``slicer-core`` wheel.

    Inside the Slicer application use ``slicer.mrmlScene`` instead.
    """

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        self.logics = {}
        for name, cls in (
            ("Colors", slicer.vtkSlicerColorLogic),
            ("Volumes", slicer.vtkSlicerVolumesLogic),
            ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ):
            logic = cls()
            logic.SetMRMLApplicationLogic(self.app)
            logic.SetMRMLScene(self.scene)
            self.app.SetModuleLogic(name, logic)
            self.logics[name] = logic

    @property
    def volumes_logic(self):
        return self.logics["Volumes"]


@dataclass
class SegmentationRequest:
    """What :meth:`LungSegmentationLogic.compute` needs, taken from the scene on the main thread.

    The nodes are kept for :meth:`~LungSegmentationLogic.apply` only; compute reads
    ``image`` (a copy of the volume's voxels, LPS geometry) and the segmentation options.
    """

    volume_node: Any
    segmentation_node: Any
    image: Any  # SimpleITK.Image
    ijk_to_ras: np.ndarray
    options: SegmentOptions
    segmenter: LungSegmenter | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class SegmentationComputed:
    """The result of :meth:`LungSegmentationLogic.compute`, not yet in the scene."""

    request: SegmentationRequest
    label_image: Any  # SimpleITK uint8 label map on the volume's grid: 0, 1 right lung, 2 left lung
    output: Any  # whatever the segmenter's run() returned (e.g. QC figures), None when it has no run()
    precision: str
    device: str
    seconds: float
    segmenter: Any = None  # the segmenter that ran (device, input size, engine, model metadata)


class LungSegmentationLogic:
    """Segment lungs of a ``vtkMRMLScalarVolumeNode`` into a ``vtkMRMLSegmentationNode``.

    ``scene`` defaults to ``slicer.mrmlScene`` (the application's scene).
    Segmenters are cached per set of :class:`SegmentOptions`, so repeated runs
    do not reload the model.
    """

    def __init__(self, scene=None):
        self.scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
        if self.scene is None:
            raise ValueError("no MRML scene: pass one, e.g. LungSegmentationLogic(scene)")
        self._segmenters: dict[SegmentOptions, LungSegmenter] = {}
        self._segmenters_lock = threading.Lock()  # compute() may run in a worker thread
        self.last_label_image = None  # SimpleITK label map of the last run (on the volume's grid)
        self.last_result: SegmentationComputed | None = None  # everything compute() returned for it
        self.last_seconds = 0.0

    # ------------------------------------------------------------ model
    def segmenter(
        self, weights=None, device: str = "auto", input_size: int | None = None, precision: str = "auto"
    ) -> LungSegmenter:
        """The segmenter for these options, loaded once per set of options and shared by worker threads."""
        return self.segmenter_for(_options(weights, device, input_size, precision))

    def segmenter_for(self, options: SegmentOptions) -> LungSegmenter:
        """The segmenter for a whole set of :class:`SegmentOptions` (engine, fast mode... too), loaded once."""
        with self._segmenters_lock:
            if options not in self._segmenters:
                self._segmenters[options] = options.segmenter(progress=False)
            return self._segmenters[options]

    # ------------------------------------------------------------ checks
    def validate_volume(self, volume_node) -> None:
        """Raise :class:`InvalidInputError` unless ``volume_node`` is a 3D CT volume in this scene."""
        if volume_node is None:
            raise InvalidInputError("no input volume selected")
        if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InvalidInputError(f"'{volume_node.GetName()}' is a label map volume, not a CT; choose the CT")
        if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
            raise InvalidInputError(f"'{volume_node.GetName()}' is a {volume_node.GetClassName()}, not a CT volume")
        if self.scene.GetNodeByID(volume_node.GetID()) is not volume_node:
            raise InvalidInputError(f"'{volume_node.GetName()}' is not in this logic's scene")
        image = volume_node.GetImageData()
        if image is None or 0 in image.GetDimensions() or image.GetNumberOfPoints() == 0:
            raise InvalidInputError(f"'{volume_node.GetName()}' has no voxels (empty volume)")
        if image.GetNumberOfScalarComponents() != 1:
            raise InvalidInputError(f"'{volume_node.GetName()}' has several components per voxel; expected a CT")
        dims = image.GetDimensions()
        if sum(d > 1 for d in dims) < 2:
            raise InvalidInputError(f"'{volume_node.GetName()}' is not an image volume (dimensions {dims})")
        check_hu_range(slicer.util.arrayFromVolume(volume_node))

    # ------------------------------------------------------------ run
    def prepare(
        self,
        volume_node,
        segmentation_node=None,
        *,
        device: str = "auto",
        input_size: int | None = None,
        weights=None,
        precision: str = "auto",
        segmenter: LungSegmenter | None = None,
        options: SegmentOptions | None = None,
    ) -> SegmentationRequest:
        """Main thread: check the nodes and copy what :meth:`compute` needs out of the scene.  ``options``: all
        segmentation options at once, in place of ``device``, ``input_size``, ``weights`` and ``precision``."""
        t0 = time.monotonic()
        self.validate_volume(volume_node)
        if segmentation_node is not None:
            if not segmentation_node.IsA("vtkMRMLSegmentationNode"):
                raise InvalidInputError(f"'{segmentation_node.GetName()}' is not a segmentation node")
            if self.scene.GetNodeByID(segmentation_node.GetID()) is not segmentation_node:
                raise InvalidInputError(f"'{segmentation_node.GetName()}' is not in this logic's scene")
        return SegmentationRequest(
            volume_node=volume_node,
            segmentation_node=segmentation_node,
            image=volume_node_to_sitk(volume_node),  # a copy: the scene may change while compute runs
            ijk_to_ras=_ijk_to_ras(volume_node),
            options=options or _options(weights, device, input_size, precision),
            segmenter=segmenter,
            started=t0,
        )

    def compute(
        self,
        request: SegmentationRequest,
        progress: Callable[[float, str], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> SegmentationComputed:
        """Any thread: load the model if needed and segment the copied image. Never touches the scene.

        ``progress(fraction, message)`` is called between batches; ``cancel()``
        returning True stops before the next batch and raises :class:`SegmentationCancelled`.
        """
        t0 = time.monotonic()
        seg = request.segmenter
        if seg is None:
            if progress is not None:
                progress(0.0, "loading the model")
            seg = self.segmenter_for(request.options)
        run = getattr(seg, "run", None)  # LungSegmenter.run returns a result object that holds the labels
        if run is not None:
            output = run(request.image, progress=progress, cancel=cancel)
            labels = output.labels
        else:
            output = None
            labels = seg.segment(request.image, progress=progress, cancel=cancel)
        if cancel is not None and cancel():
            raise SegmentationCancelled("cancelled before writing the segmentation")
        return SegmentationComputed(
            request=request,
            label_image=labels,
            output=output,
            precision=seg.precision,
            device=str(seg.device),
            seconds=time.monotonic() - t0,
            segmenter=seg,
        )

    def apply(self, computed: SegmentationComputed):
        """Main thread: write "right lung" and "left lung" into the scene; returns the segmentation node.

        Raises :class:`InvalidInputError` (scene unchanged) when the input volume or the
        chosen segmentation was removed from the scene while :meth:`compute` ran.
        """
        import SimpleITK as sitk

        request = computed.request
        volume_node, segmentation_node = request.volume_node, request.segmentation_node
        if self.scene.GetNodeByID(volume_node.GetID() or "") is not volume_node:
            raise InvalidInputError(f"the input volume '{volume_node.GetName()}' was removed from the scene")
        if segmentation_node is not None and self.scene.GetNodeByID(segmentation_node.GetID() or "") is not (
            segmentation_node
        ):
            raise InvalidInputError(f"the segmentation '{segmentation_node.GetName()}' was removed from the scene")
        labels = sitk.GetArrayFromImage(computed.label_image)
        segments = self._build_segments(request.ijk_to_ras, labels)
        node = self._write(volume_node, segmentation_node, segments)
        qc = getattr(computed.output, "qc", None)
        if qc is not None:  # kept with the node, so a saved scene still says what QC found
            import json

            node.SetAttribute("FusionLungSeg.QC", json.dumps(qc))
        self.last_label_image = computed.label_image
        self.last_result = computed
        self.last_seconds = time.monotonic() - request.started
        return node

    def segment(
        self,
        volume_node,
        segmentation_node=None,
        *,
        device: str = "auto",
        input_size: int | None = None,
        weights=None,
        precision: str = "auto",
        progress: Callable[[float, str], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        segmenter: LungSegmenter | None = None,
    ):
        """Segment the lungs synchronously (:meth:`prepare`, :meth:`compute`, :meth:`apply`);
        returns the segmentation node (new, or ``segmentation_node``).

        ``progress(fraction, message)`` is called as slices are processed;
        ``cancel()`` returning True stops within one batch and raises
        :class:`SegmentationCancelled`.  The input volume is never modified;
        in a given segmentation node only the segments "right_lung" and
        "left_lung" are replaced.  ``input_size`` None uses the model's own size;
        ``precision`` is "auto", "fp32", "bf16" or "int8" (see :class:`LungSegmenter`).
        For a run that keeps a GUI responsive see :class:`SegmentationTask`.
        """
        request = self.prepare(
            volume_node,
            segmentation_node,
            device=device,
            input_size=input_size,
            weights=weights,
            precision=precision,
            segmenter=segmenter,
        )
        node = self.apply(self.compute(request, progress=progress, cancel=cancel))
        if progress is not None:
            progress(1.0, f"done in {self.last_seconds:.1f} s")
        return node

    def _build_segments(self, ijk_to_ras: np.ndarray, labels: np.ndarray) -> list:
        """One vtkSegment per lung, binary labelmap on the volume's IJK grid (not yet in the scene)."""
        import vtk
        from vtk.util import numpy_support

        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(ijk_to_ras[r, c]))
        k, j, i = labels.shape
        out = []
        for value, (segment_id, name, terminology, colour) in SEGMENTS.items():
            image = slicer.vtkOrientedImageData()
            image.SetDimensions(i, j, k)
            image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            image.SetImageToWorldMatrix(matrix)
            view = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i)
            view[:] = labels == value
            segment = slicer.vtkSegment()
            segment.SetName(name)
            segment.SetColor(*colour)
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminology)
            segment.SetLabelValue(1)
            segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), image)
            out.append((segment_id, segment))
        return out

    def _write(self, volume_node, segmentation_node, segments):
        """Put the segments into the scene; on any error the scene is restored."""
        created = segmentation_node is None
        labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        if created:
            segmentation_node = self.scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", self.scene.GenerateUniqueName(f"{volume_node.GetName()} lungs")
            )
        segmentation = segmentation_node.GetSegmentation()
        backup = {}
        try:
            if created:
                segmentation_node.CreateDefaultDisplayNodes()
                segmentation.SetSourceRepresentationName(labelmap_name)
                segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
                segmentation_node.SetNodeReferenceID("referenceImageGeometryRef", volume_node.GetID())
                segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
            elif segmentation.GetSourceRepresentationName() != labelmap_name:
                raise InvalidInputError(
                    f"'{segmentation_node.GetName()}' stores {segmentation.GetSourceRepresentationName()}; "
                    "choose a segmentation based on binary labelmaps or create a new one"
                )
            was_modifying = segmentation_node.StartModify()
            try:
                for segment_id, segment in segments:
                    old = segmentation.GetSegment(segment_id)
                    if old is not None:
                        keep = slicer.vtkSegment()
                        keep.DeepCopy(old)
                        backup[segment_id] = keep
                        segmentation.RemoveSegment(segment_id)
                    if not segmentation.AddSegment(segment, segment_id):
                        raise RuntimeError(f"could not add segment {segment_id}")
            finally:
                segmentation_node.EndModify(was_modifying)
        except BaseException:
            if created:
                self.scene.RemoveNode(segmentation_node)
            else:
                for segment_id, _ in segments:
                    if segmentation.GetSegment(segment_id) is not None:
                        segmentation.RemoveSegment(segment_id)
                for segment_id, keep in backup.items():
                    segmentation.AddSegment(keep, segment_id)
            raise
        return segmentation_node

    # ------------------------------------------------------------ results
    @property
    def last_qc(self) -> dict | None:
        """QC verdict of the last run: ``{"ok", "flags", "notes", "measures"}`` (see ``FusionLungSegLib.qc``)."""
        return getattr(self.last_result.output, "qc", None) if self.last_result is not None else None

    @staticmethod
    def qc_of(segmentation_node) -> dict | None:
        """The QC verdict stored on a segmentation node by :meth:`apply`, or None."""
        import json

        text = segmentation_node.GetAttribute("FusionLungSeg.QC") if segmentation_node is not None else None
        return json.loads(text) if text else None

    @staticmethod
    def lung_volumes_ml(segmentation_node) -> dict[str, float]:
        """Volume of "right lung" and "left lung" (and their sum, "lungs") in mL."""
        name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        segmentation = segmentation_node.GetSegmentation()
        out = {}
        for segment_id, seg_name, _, _ in SEGMENTS.values():
            segment = segmentation.GetSegment(segment_id)
            if segment is None:
                continue
            image = segment.GetRepresentation(name)
            out[seg_name] = _labelmap_volume_ml(image, segment.GetLabelValue()) if image is not None else 0.0
        if out:
            out["lungs"] = sum(out.values())
        return out

    @staticmethod
    def show_3d(segmentation_node) -> None:
        """Create the closed-surface representation so the lungs show in the 3D view."""
        segmentation_node.CreateClosedSurfaceRepresentation()


class SegmentationTask(BackgroundTask):
    """:meth:`LungSegmentationLogic.compute` in a worker thread; the main thread polls, then :meth:`finish`
    writes the segments (see :class:`~FusionLungSegLib.core.tasks.BackgroundTask`: states, cancel, errors).

    No Qt here: a GUI polls :attr:`fraction`, :attr:`message` and :attr:`finished` (e.g. from a timer).
    """

    def __init__(self, logic: LungSegmentationLogic, request: SegmentationRequest):
        super().__init__(
            lambda progress, cancel: logic.compute(request, progress=progress, cancel=cancel),
            logic.apply,
            name="FusionLungSeg compute",
        )
        self.logic, self.request = logic, request

    def done_message(self) -> str:
        return f"done in {self.logic.last_seconds:.1f} s"


def labels_from_segmentation(segmentation_node, volume_node):
    """The "right lung" and "left lung" segments of ``segmentation_node`` as one ``SimpleITK`` label map (0, 1
    right, 2 left) on ``volume_node``'s voxel grid, as the segments are now (after any editing).  A segment the
    user deleted gives no voxels."""
    import SimpleITK as sitk
    import vtk

    scene = volume_node.GetScene()
    labels = np.zeros(slicer.util.arrayFromVolume(volume_node).shape, np.uint8)
    segmentation = segmentation_node.GetSegmentation()
    for seg in LUNG_SEGMENTS:
        if segmentation.GetSegment(seg.id) is None:
            continue
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(seg.id)
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, labelmap, volume_node
            ):
                raise RuntimeError(f"could not export the segment {seg.name!r}")
            labels[slicer.util.arrayFromVolume(labelmap) > 0] = seg.value
        finally:
            scene.RemoveNode(labelmap)
    return _with_node_geometry(sitk.GetImageFromArray(labels), volume_node)  # no copy of the CT for its grid


def _labelmap_volume_ml(image, label_value: int) -> float:
    import vtk
    from vtk.util import numpy_support

    scalars = image.GetPointData().GetScalars() if image.GetPointData() else None
    if scalars is None or image.GetNumberOfPoints() == 0:
        return 0.0
    count = int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars) == label_value))
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    voxel_mm3 = abs(np.linalg.det(slicer.util.arrayFromVTKMatrix(m)[:3, :3]))
    return count * voxel_mm3 / 1000.0
