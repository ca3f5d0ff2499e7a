"""LungSegmentationLogic on a real MRML scene (slicer-core), real CT slices and phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_DICOM, ThresholdNet, make_phantom, rotation
from mrml_fixtures import shared_session, slicer

from FusionLungSegLib.core.geometry import voxel_centres_lps
from FusionLungSegLib.mrml import SEGMENTS, LungSegmentationLogic, SegmentationCancelled, volume_node_to_sitk
from FusionLungSegLib.segmenter import LungSegmenter


@pytest.fixture(scope="session")
def session():
    return shared_session()


@pytest.fixture
def scene(session):
    session.scene.Clear(0)
    yield session.scene
    session.scene.Clear(0)


@pytest.fixture
def logic(scene):
    return LungSegmentationLogic(scene)


@pytest.fixture(scope="module")
def phantom_segmenter():
    return LungSegmenter(model=ThresholdNet(), device="cpu", input_size=64, progress=False)


def _load(session, image, tmp_path, name="CT"):
    path = tmp_path / f"{name}.nrrd"
    sitk.WriteImage(image, str(path))
    node = session.volumes.AddArchetypeVolume(str(path), name)
    assert node is not None
    return node


def _scene_state(scene):
    """Node IDs, and per segmentation node its segment IDs and labelmap voxel sums."""
    state = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        entry = [node.GetID(), node.GetName()]
        if node.IsA("vtkMRMLSegmentationNode"):
            seg = node.GetSegmentation()
            for j in range(seg.GetNumberOfSegments()):
                entry.append((seg.GetNthSegmentID(j), seg.GetNthSegment(j).GetName()))
        state.append(tuple(entry))
    return state


def _segment_points_lps(segmentation_node, segment_id):
    """Physical LPS centres of the voxels of one segment's binary labelmap."""
    import vtk
    from vtk.util import numpy_support

    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    image = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    dims = image.GetDimensions()
    arr = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
    kji = np.argwhere(arr == segment.GetLabelValue())
    extent = image.GetExtent()
    ijk = kji[:, ::-1] + [extent[0], extent[2], extent[4]]
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    mat = slicer.util.arrayFromVTKMatrix(m)
    ras = (mat @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    return ras * [-1, -1, 1]


def test_segments_have_names_terminology_colours_and_reference_geometry(
    session, scene, logic, tmp_path, phantom_segmenter
):
    img, _ = make_phantom(np.eye(3))
    volume = _load(session, img, tmp_path)
    seg = logic.segment(volume, segmenter=phantom_segmenter)
    segmentation = seg.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == [
        "right_lung",
        "left_lung",
    ]
    for value, (segment_id, name, terminology, colour) in SEGMENTS.items():
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetName() == name
        assert np.allclose(segment.GetColor(), colour)
        entry = segment.GetTerminology()
        assert entry == terminology
        assert "SCT^39607008^Lung" in entry and "SCT^123037004^Anatomical Structure" in entry
        assert ("SCT^24028007^Right" if value == 1 else "SCT^7771000^Left") in entry
    assert seg.GetNodeReference("referenceImageGeometryRef") is volume
    volumes = logic.lung_volumes_ml(seg)
    assert volumes["right lung"] == pytest.approx(volumes["left lung"], rel=0.05)
    assert 70 < volumes["right lung"] < 110  # ellipsoid 22 x 30 x 36 mm: 99.5 mL
    logic.show_3d(seg)
    assert segmentation.ContainsRepresentation("Closed surface")


DIRECTIONS = {
    "flip_z": np.diag([1.0, 1.0, -1.0]),
    "flip_xy": np.diag([-1.0, -1.0, 1.0]),
    "sagittal": np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),
    "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float),
    "oblique": rotation([1, 0.4, 0.2], 18),
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_segments_lie_where_the_library_puts_them_in_physical_space(
    name, session, scene, logic, tmp_path, phantom_segmenter
):
    img, lung_fn = make_phantom(DIRECTIONS[name])
    volume = _load(session, img, tmp_path)
    before = slicer.util.arrayFromVolume(volume).copy()
    seg = logic.segment(volume, segmenter=phantom_segmenter)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)  # input untouched
    # The library, run on the same file read by SimpleITK.
    reference = phantom_segmenter.segment(sitk.ReadImage(str(tmp_path / "CT.nrrd")))
    ref_arr = sitk.GetArrayFromImage(reference)
    for value, (segment_id, *_rest) in SEGMENTS.items():
        pts = _segment_points_lps(seg, segment_id)
        ref_pts = voxel_centres_lps(reference, np.argwhere(ref_arr == value))
        assert len(pts) == len(ref_pts) > 100
        key = lambda p: set(map(tuple, np.round(p, 2)))  # noqa: E731
        assert key(pts) == key(ref_pts), f"{name}: segment {segment_id} is not where the library put it"
        truth = lung_fn(pts)
        assert np.mean(truth[truth >= 0] == value) > 0.99
        assert np.sign(pts[:, 0].mean()) == (-1 if value == 1 else 1)  # right lung: negative LPS x


def test_real_ct_slices_from_the_sample(session, scene, logic, random_weights):
    image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(SAMPLE_DICOM)))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "sample")
    arr = sitk.GetArrayFromImage(image)
    slicer.util.updateVolumeFromArray(node, arr)
    node.SetSpacing(image.GetSpacing())
    before = slicer.util.arrayFromVolume(node).copy()
    seg = logic.segment(node, device="cpu", weights=random_weights, input_size=64)
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    back = volume_node_to_sitk(node)
    assert back.GetSize() == image.GetSize()
    qc = logic.last_qc  # the QC verdict, also stored on the node so a saved scene keeps it
    assert set(qc) == {"ok", "flags", "notes", "measures"} and logic.qc_of(seg) == qc


@pytest.mark.slow
def test_console_int8_on_the_sample_matches_fp32(scene, logic):
    """The console call with precision int8 (ONNX Runtime), the bundled model: labels as fp32's."""
    from FusionLungSegLib.engines import selection
    from FusionLungSegLib.nets.weights import BUNDLED_SHA256

    if not (selection.available() and BUNDLED_SHA256):
        pytest.skip("needs onnxruntime and onnx (pip install '.[onnx]') and the bundled weights")
    image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(SAMPLE_DICOM)))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "sample")
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.SetSpacing(image.GetSpacing())
    labels = {}
    for precision in ("fp32", "int8"):
        seg = logic.segment(node, device="cpu", precision=precision)
        assert seg.GetSegmentation().GetNumberOfSegments() == 2
        assert logic.last_result.precision == precision
        labels[precision] = sitk.GetArrayFromImage(logic.last_label_image)
    for side in (1, 2):
        a, b = labels["fp32"] == side, labels["int8"] == side
        assert a.sum() > 1000 and 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.995, side


def test_existing_segmentation_keeps_other_segments_and_only_ours_are_replaced(
    session, scene, logic, tmp_path, phantom_segmenter
):
    img, _ = make_phantom(np.eye(3))
    volume = _load(session, img, tmp_path)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    seg.CreateDefaultDisplayNodes()
    seg.GetSegmentation().AddEmptySegment("tumour", "tumour")
    logic.segment(volume, seg, segmenter=phantom_segmenter)
    logic.segment(volume, seg, segmenter=phantom_segmenter)  # again: replaces, never duplicates
    ids = [seg.GetSegmentation().GetNthSegmentID(i) for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert sorted(ids) == ["left_lung", "right_lung", "tumour"]


def test_cancel_half_way_leaves_the_scene_as_it_was(session, scene, logic, tmp_path, phantom_segmenter):
    img, _ = make_phantom(np.eye(3))
    volume = _load(session, img, tmp_path)
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "previous")
    existing.GetSegmentation().AddEmptySegment("right_lung", "my right lung")
    before = _scene_state(scene)
    calls = []

    def progress(fraction, message):
        calls.append(fraction)

    with pytest.raises(SegmentationCancelled):
        logic.segment(volume, segmenter=phantom_segmenter, progress=progress, cancel=lambda: len(calls) >= 3)
    with pytest.raises(SegmentationCancelled):
        calls.clear()
        logic.segment(volume, existing, segmenter=phantom_segmenter, progress=progress, cancel=lambda: len(calls) >= 3)
    assert 0 < max(calls) < 0.9
    assert _scene_state(scene) == before
    assert existing.GetSegmentation().GetSegment("right_lung").GetName() == "my right lung"


def _label_map_node(scene):
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(node, np.zeros((4, 16, 16), np.uint8))
    return node


def _scalar_labels(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mask as scalar")
    arr = np.zeros((4, 16, 16), np.uint8)
    arr[:, 4:8, 4:8] = 1
    slicer.util.updateVolumeFromArray(node, arr)
    return node


def _colour_2d(scene):
    """A 2D colour picture (e.g. a PNG screenshot) loaded as a vector volume."""
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    slicer.util.updateVolumeFromArray(node, np.zeros((1, 16, 16, 3), np.uint8))
    return node


def _empty(scene):
    return scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")


def _mr_like(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR")
    arr = np.random.default_rng(0).integers(0, 4000, (4, 16, 16)).astype(np.int16)
    slicer.util.updateVolumeFromArray(node, arr)
    return node


@pytest.mark.parametrize(
    "make, message",
    [
        (_label_map_node, "label map volume"),
        (_scalar_labels, "looks like a label map"),
        (_empty, "no voxels"),
        (_colour_2d, "several components"),
        (_mr_like, "Hounsfield"),
        (lambda scene: None, "no input volume"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(scene, logic, make, message, phantom_segmenter):
    node = make(scene)
    before = _scene_state(scene)
    arr = slicer.util.arrayFromVolume(node).copy() if node is not None and node.GetImageData() else None
    with pytest.raises(ValueError, match=message):
        logic.segment(node, segmenter=phantom_segmenter)
    assert _scene_state(scene) == before
    if arr is not None:
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), arr)
