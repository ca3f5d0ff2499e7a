"""MRML front door: segment a Slicer volume node into "right lung" and "left lung" segments.

The only module of the library that imports ``slicer``.  It uses MRML nodes,
vtkSegmentationCore and numpy only (no Qt), so it runs inside the Slicer
application, in ``Slicer --no-main-window`` batch runs and with the
``slicer-core`` wheel in plain Python.

Nothing in the scene changes until the network and post-processing have
finished: a failed or cancelled run leaves the scene as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import slicer

from .inference import (
    LEFT_LUNG,
    RIGHT_LUNG,
    InvalidInputError,
    LungSegmenter,
    SegmentationCancelled,
    check_hu_range,
)

__all__ = [
    "LungSegmentationLogic",
    "SEGMENTS",
    "volume_node_to_sitk",
    "sitk_to_volume_node",
    "save_segmentation",
    "HeadlessSlicer",
    "SegmentationCancelled",
    "InvalidInputError",
]

log = logging.getLogger(__name__)

_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMY = "Anatomic codes - DICOM master list"
#: Slicer's General Anatomy colour for lung (both sides), RGB 0..1.
LUNG_COLOUR = (197 / 255, 165 / 255, 145 / 255)


def _terminology(modifier_code: str, modifier_meaning: str) -> str:
    """Slicer terminology entry: Anatomical Structure / Lung (SCT 39607008) / laterality modifier."""
    return (
        f"{_CONTEXT}~SCT^123037004^Anatomical Structure~SCT^39607008^Lung"
        f"~SCT^{modifier_code}^{modifier_meaning}~{_ANATOMY}~^^~^^"
    )


#: label value -> (segment ID, segment name, terminology entry, colour)
SEGMENTS = {
    RIGHT_LUNG: ("right_lung", "right lung", _terminology("24028007", "Right"), LUNG_COLOUR),
    LEFT_LUNG: ("left_lung", "left lung", _terminology("7771000", "Left"), LUNG_COLOUR),
}

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _ijk_to_ras(volume_node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_node_to_sitk(volume_node):
    """Copy a scalar volume node into a ``SimpleITK.Image`` with the same voxel grid (LPS geometry).

    The array keeps the node's own KJI order, so label arrays computed on the
    image map back voxel for voxel.
    """
    import SimpleITK as sitk

    arr = slicer.util.arrayFromVolume(volume_node)
    image = sitk.GetImageFromArray(np.array(arr, copy=True))
    m = _ijk_to_ras(volume_node)
    spacing = np.asarray(volume_node.GetSpacing(), float)
    direction_ras = m[:3, :3] / spacing  # unit columns
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(_RAS_TO_LPS @ m[:3, 3]))
    image.SetDirection(tuple((_RAS_TO_LPS @ direction_ras).ravel()))
    return image


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


def save_segmentation(segmentation_node, path) -> None:
    """Write a segmentation node to ``.seg.nrrd`` atomically (temporary file, then rename)."""
    import os
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
    scene = segmentation_node.GetScene()
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    try:
        storage.SetFileName(str(tmp))
        if not storage.WriteData(segmentation_node):
            raise OSError(f"cannot write segmentation to {p}")
        os.replace(tmp, p)
    finally:
        scene.RemoveNode(storage)
        tmp.unlink(missing_ok=True)


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


class LungSegmentationLogic:
    """Segment lungs of a ``vtkMRMLScalarVolumeNode`` into a ``vtkMRMLSegmentationNode``.

    ``scene`` defaults to ``slicer.mrmlScene`` (the application's scene).
    Segmenters are cached per (weights, device, input size, precision), so
    repeated runs do not reload the model.
    """

    def __init__(self, scene=None):
        self.scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
        if self.scene is None:
            raise ValueError("no MRML scene: pass one, e.g. LungSegmentationLogic(scene)")
        self._segmenters: dict[tuple, LungSegmenter] = {}
        self.last_label_image = None  # SimpleITK label map of the last run (on the volume's grid)
        self.last_seconds = 0.0

    # ------------------------------------------------------------ model
    def segmenter(
        self, weights=None, device: str = "auto", input_size: int | None = None, precision: str = "auto"
    ) -> LungSegmenter:
        key = (str(weights) if weights else None, device, input_size, precision)
        if key not in self._segmenters:
            self._segmenters[key] = LungSegmenter(
                weights, device=device, input_size=input_size, progress=False, precision=precision
            )
        return self._segmenters[key]

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
        """Segment the lungs; returns the segmentation node (new, or ``segmentation_node``).

        ``progress(fraction, message)`` is called as slices are processed;
        ``cancel()`` returning True stops within one batch and raises
        :class:`SegmentationCancelled`.  The input volume is never modified;
        in a given segmentation node only the segments "right_lung" and
        "left_lung" are replaced.  ``input_size`` None uses the model's own size;
        ``precision`` is "auto", "fp32" or "bf16" (see :class:`LungSegmenter`).
        """
        t0 = time.monotonic()
        self.validate_volume(volume_node)
        if segmentation_node is not None:
            if not segmentation_node.IsA("vtkMRMLSegmentationNode"):
                raise InvalidInputError(f"'{segmentation_node.GetName()}' is not a segmentation node")
            if self.scene.GetNodeByID(segmentation_node.GetID()) is not segmentation_node:
                raise InvalidInputError(f"'{segmentation_node.GetName()}' is not in this logic's scene")
        seg = segmenter or self.segmenter(weights, device, input_size, precision)
        image = volume_node_to_sitk(volume_node)
        labels_image = seg.segment(image, progress=progress, cancel=cancel)
        if cancel is not None and cancel():
            raise SegmentationCancelled("cancelled before writing the segmentation")
        import SimpleITK as sitk

        labels = sitk.GetArrayFromImage(labels_image)
        segments = self._build_segments(volume_node, labels)
        node = self._write(volume_node, segmentation_node, segments)
        self.last_label_image = labels_image
        self.last_seconds = time.monotonic() - t0
        if progress is not None:
            progress(1.0, f"done in {self.last_seconds:.1f} s")
        return node

    def _build_segments(self, volume_node, labels: np.ndarray) -> list:
        """One vtkSegment per lung, binary labelmap on the volume's IJK grid (not yet in the scene)."""
        import vtk
        from vtk.util import numpy_support

        ijk_to_ras = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(ijk_to_ras)
        k, j, i = labels.shape
        out = []
        for value, (segment_id, name, terminology, colour) in SEGMENTS.items():
            image = slicer.vtkOrientedImageData()
            image.SetDimensions(i, j, k)
            image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            image.SetImageToWorldMatrix(ijk_to_ras)
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


def _labelmap_volume_ml(image, label_value: int) -> float:
    import vtk
    from vtk.util import numpy_support

    scalars = image.GetPointData().GetScalars() if image.GetPointData() else None
    if scalars is None or image.GetNumberOfPoints() == 0:
        return 0.0
    count = int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars) == label_value))
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    voxel_mm3 = abs(np.linalg.det(np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])))
    return count * voxel_mm3 / 1000.0
