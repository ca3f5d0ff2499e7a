""".seg.nrrd (slicerio, loaded by Slicer) and DICOM SEG (highdicom) outputs, read back and checked voxel by voxel."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATA, SAMPLE_DICOM, ThresholdNet, make_phantom, require, rotation

from FusionLungSegLib import __version__
from FusionLungSegLib.cli import main
from FusionLungSegLib.core.terminology import LUNG_COLOUR, LUNG_SEGMENTS, SEGMENTS
from FusionLungSegLib.io import dicom_series_files, read_image, write_image
from FusionLungSegLib.io.outputs import ijk_to_lps, write_dicom_seg, write_seg_nrrd
from FusionLungSegLib.nets import weights as W

slicerio = pytest.importorskip("slicerio", reason="slicerio not installed (pip install slicerio)")
hd = pytest.importorskip("highdicom", reason="highdicom not installed (pip install highdicom)")
pydicom = pytest.importorskip("pydicom", reason="pydicom not installed (pip install pydicom)")

TOTALSEG_DICOM = DATA / "dev" / "totalsegmentator_abdomen_dicom"
CODES = {1: ("SCT", "24028007", "Right"), 2: ("SCT", "7771000", "Left")}


def _labels_like(image, blocks):
    """A 0/1/2 label map on ``image``'s grid with the given (value, k-slice, j-slice, i-slice) blocks."""
    arr = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    for value, *index in blocks:
        arr[tuple(index)] = value
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(image)
    return labels


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def check_seg_nrrd(path, labels):
    """slicerio reads back the two named, coloured, coded segments on ``labels``' grid and voxels."""
    seg = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in seg["segments"]] == ["right lung", "left lung"]
    for s in seg["segments"]:
        value = s["labelValue"]
        assert (s["id"], s["name"]) == SEGMENTS[value][:2] and s["layer"] == 0
        assert np.allclose(s["color"], LUNG_COLOUR, atol=1e-6)
        term = s["terminology"]
        assert term["category"] == ["SCT", "123037004", "Anatomical Structure"]
        assert term["type"] == ["SCT", "39607008", "Lung"]
        assert term["typeModifier"] == list(CODES[value])
        assert slicerio.segmentation.terminology_entry_to_string(term) == SEGMENTS[value][2]
    np.testing.assert_allclose(seg["ijkToLPS"], ijk_to_lps(labels), atol=1e-9)
    np.testing.assert_array_equal(seg["voxels"], sitk.GetArrayFromImage(labels).transpose(2, 1, 0))
    for value in (1, 2):
        np.testing.assert_array_equal(slicerio.segment_mask(seg, SEGMENTS[value][1]), seg["voxels"] == value)
    return seg


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0]), rotation([1, 0.3, 0.2], 17)])
def test_seg_nrrd_reads_back_with_names_values_colours_codes_and_geometry(tmp_path, direction):
    image, _ = make_phantom(direction)
    labels = _labels_like(image, [(1, slice(5, 30), slice(4, 20), slice(3, 22)), (2, slice(8, 33), slice(20, 40), 30)])
    path = write_image(labels, tmp_path / "lungs.seg.nrrd")
    check_seg_nrrd(path, labels)
    import nrrd

    header = nrrd.read_header(str(path))
    assert header["Segment0_Tags"] == f"TerminologyEntry:{SEGMENTS[1][2]}|"  # Slicer's own tag format
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_seg_nrrd_loads_in_slicer_as_a_segmentation(tmp_path):
    pytest.importorskip("slicer", reason="slicer-core wheel not installed (pip install slicer-core)")
    import vtk
    from vtk.util import numpy_support

    from FusionLungSegLib.core.geometry import voxel_centres_lps
    from FusionLungSegLib.mrml import HeadlessSlicer

    image, _ = make_phantom(rotation([0.2, 1, 0.1], 25))
    labels = _labels_like(image, [(1, slice(5, 30), slice(4, 20), slice(3, 22)), (2, slice(8, 33), slice(20, 40), 30)])
    path = write_seg_nrrd(labels, tmp_path / "lungs.seg.nrrd")
    session = HeadlessSlicer()
    node = session.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lungs")
    storage = session.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), "Slicer could not read the .seg.nrrd as a segmentation"
    segmentation = node.GetSegmentation()
    assert segmentation.GetSourceRepresentationName() == "Binary labelmap"
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == [
        "right_lung",
        "left_lung",
    ]
    arr = sitk.GetArrayFromImage(labels)
    for value, (segment_id, name, terminology, colour) in SEGMENTS.items():
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetName() == name and segment.GetTerminology() == terminology
        assert np.allclose(segment.GetColor(), colour, atol=1e-5)
        rep = segment.GetRepresentation("Binary labelmap")
        dims, extent = rep.GetDimensions(), rep.GetExtent()
        vox = numpy_support.vtk_to_numpy(rep.GetPointData().GetScalars()).reshape(dims[::-1])
        kji = np.argwhere(vox == segment.GetLabelValue())
        ijk = kji[:, ::-1] + [extent[0], extent[2], extent[4]]
        m = vtk.vtkMatrix4x4()
        rep.GetImageToWorldMatrix(m)
        import slicer.util

        mat = slicer.util.arrayFromVTKMatrix(m)
        lps = (mat @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3] * [-1, -1, 1]
        expected = voxel_centres_lps(labels, np.argwhere(arr == value))
        key = lambda p: set(map(tuple, np.round(p, 2)))  # noqa: E731
        assert len(lps) == len(expected) > 100 and key(lps) == key(expected), f"{name} is not where it was written"


def _frames_by_position(seg_path, labels):
    """Independent of highdicom's readers: each frame's Image Position -> label-map slice, per segment."""
    ds = pydicom.dcmread(str(seg_path))
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    arr = sitk.GetArrayFromImage(labels)
    seen = set()
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        i, j, k = labels.TransformPhysicalPointToIndex(position)
        assert (i, j) == (0, 0) and 0 <= k < arr.shape[0]
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frames[f].astype(bool), arr[k] == number)
        seen.add((k, number))
    # every slice and segment with voxels has its frame (empty frames may be left out)
    assert {(k, v) for v in (1, 2) for k in range(arr.shape[0]) if (arr[k] == v).any()} <= seen
    return ds


def check_dicom_seg(seg_path, labels, source_files, model=None):
    """highdicom reads the SEG back: references, codes, algorithm, and the same voxels as ``labels``."""
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in source_files]
    uids = [str(s.get("SOPInstanceUID") or s.file_meta.MediaStorageSOPInstanceUID) for s in sources]
    seg = hd.seg.segread(str(seg_path))
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert seg.get_segment_numbers() == [1, 2]
    src = sources[0]
    if src.get("StudyInstanceUID"):
        assert seg.StudyInstanceUID == src.StudyInstanceUID
    if src.get("FrameOfReferenceUID"):
        assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    (ref,) = seg.ReferencedSeriesSequence
    if src.get("SeriesInstanceUID"):
        assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert sorted(str(i.ReferencedSOPInstanceUID) for i in ref.ReferencedInstanceSequence) == sorted(uids)
    for s in LUNG_SEGMENTS:
        desc = seg.get_segment_description(s.value)
        assert desc.segment_label == s.name
        assert (desc.segmented_property_category.value, desc.segmented_property_category.scheme_designator) == (
            "123037004",
            "SCT",
        )
        assert (desc.segmented_property_type.value, desc.segmented_property_type.scheme_designator) == (
            "39607008",
            "SCT",
        )
        (modifier,) = desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
        assert (modifier.CodingSchemeDesignator, modifier.CodeValue, modifier.CodeMeaning) == CODES[s.value]
        (algorithm,) = desc.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == "FusionLungSeg" and algorithm.AlgorithmVersion == __version__
        if model:
            assert algorithm.AlgorithmParameters == f"model={model}"
        assert desc.RecommendedDisplayCIELabValue is not None
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(pixels, sitk.GetArrayFromImage(labels))
    _frames_by_position(seg_path, labels)
    return seg


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The bundled model on the bundled DICOM sample, as a user runs it: .seg.nrrd and --dicom-seg."""
    if not W.BUNDLED_SHA256:
        pytest.skip("no trained weights are bundled yet")
    out = tmp_path_factory.mktemp("sample")
    before = _digests(SAMPLE_DICOM)
    args = ["segment", str(SAMPLE_DICOM), str(out / "lungs.seg.nrrd"), "--dicom-seg", str(out / "lungs.dcm")]
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main([*args, "--device", "cpu", "--quiet"]) == 0
    assert _digests(SAMPLE_DICOM) == before, "the input DICOM files were modified"
    return out, json.loads(buffer.getvalue())


def test_sample_seg_nrrd_from_the_command_line(sample_run):
    out, report = sample_run
    ct = read_image(SAMPLE_DICOM)
    seg = slicerio.read_segmentation(str(out / "lungs.seg.nrrd"))
    labels = sitk.GetImageFromArray(seg["voxels"].transpose(2, 1, 0).copy())
    labels.CopyInformation(ct)
    check_seg_nrrd(out / "lungs.seg.nrrd", labels)
    np.testing.assert_allclose(seg["ijkToLPS"], ijk_to_lps(ct), atol=1e-9)  # the input's own geometry
    assert (seg["voxels"] == 1).sum() > 1000 and (seg["voxels"] == 2).sum() > 1000  # both lungs found
    assert report["png"].endswith("lungs.png")


def test_sample_dicom_seg_reads_back_to_the_same_voxels(sample_run):
    out, report = sample_run
    ct = read_image(SAMPLE_DICOM)
    seg = slicerio.read_segmentation(str(out / "lungs.seg.nrrd"))
    labels = sitk.GetImageFromArray(seg["voxels"].transpose(2, 1, 0).copy())
    labels.CopyInformation(ct)
    (written,) = report["dicom_seg"]
    dicom_seg = check_dicom_seg(out / "lungs.dcm", labels, dicom_series_files(SAMPLE_DICOM))
    algorithm = dicom_seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    version = W.load_weights(None)[1]["version"]  # the bundled model's own version, e.g. "FusionLungNet 0.4.0"
    assert version.startswith("FusionLungNet ")
    assert algorithm.AlgorithmParameters.startswith(f"model={version} ")
    assert f"sha256:{W.BUNDLED_SHA256[:12]}" in algorithm.AlgorithmParameters
    # The sample's stripped header: what was filled is said, and only in the SEG.
    filled = " ".join(written["filled"])
    assert "FrameOfReferenceUID" in filled and "PatientID" in filled
    assert dicom_seg.PatientID == "" and dicom_seg.FrameOfReferenceUID


def test_dicom_seg_on_a_full_header_series_from_the_library(tmp_path):
    folder = require(TOTALSEG_DICOM)
    before = _digests(folder)
    ct = read_image(folder)
    labels = _labels_like(ct, [(1, slice(2, 12), slice(150, 300), slice(100, 240)), (2, 7, slice(150, 300), 300)])
    written = write_dicom_seg(labels, folder, tmp_path / "seg.dcm", model="test-model")
    check_dicom_seg(tmp_path / "seg.dcm", labels, dicom_series_files(folder), model="test-model")
    assert written["frames"] == 11  # 10 slices of right lung, 1 of left: empty frames left out
    # This copy has its UIDs blanked: SOP Instance UIDs come from the file meta header, and it is said.
    assert any("SOPInstanceUID" in n and "file meta" in n for n in written["filled"])
    assert _digests(folder) == before


def test_empty_label_map_still_gives_a_readable_dicom_seg(tmp_path):
    ct = read_image(SAMPLE_DICOM)
    labels = _labels_like(ct, [])
    written = write_dicom_seg(labels, SAMPLE_DICOM, tmp_path / "empty.dcm")
    assert written["frames"] == 4  # no lung: every frame kept, all empty
    check_dicom_seg(tmp_path / "empty.dcm", labels, dicom_series_files(SAMPLE_DICOM))


def test_dcm_output_name_writes_dicom_seg(tmp_path, random_weights, capsys):
    out = tmp_path / "lungs.dcm"
    args = ["segment", str(SAMPLE_DICOM), str(out), "--weights", str(random_weights), "--device", "cpu", "--quiet"]
    assert main([*args, "--png", "none"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dicom_seg"][0]["path"] == str(out)
    assert pydicom.dcmread(str(out)).Modality == "SEG"
    assert [p.name for p in tmp_path.iterdir()] == ["lungs.dcm"]


def test_dicom_seg_of_non_dicom_input_is_a_clear_error_before_any_work(tmp_path, capsys):
    image, _ = make_phantom(np.eye(3))
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(ct))
    no_weights = ["--weights", str(tmp_path / "absent.pt")]  # the check must come before the model is loaded
    for args in (
        [str(ct), str(tmp_path / "o.dcm")],
        [str(ct), str(tmp_path / "o.nii.gz"), "--dicom-seg", str(tmp_path / "o.dcm")],
    ):
        assert main(["segment", *args, *no_weights]) == 2
        err = capsys.readouterr().err
        assert "DICOM SEG output needs DICOM input" in err and ".seg.nrrd" in err
    assert main(["segment", str(SAMPLE_DICOM), str(tmp_path / "o.nii.gz"), "--dicom-seg", "x.nrrd"]) == 2
    assert "--dicom-seg must name a .dcm file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]
    labels = _labels_like(image, [])
    for source, message in ((None, "pass the DICOM folder"), (ct, "this input is not DICOM")):
        with pytest.raises(ValueError, match=message):
            write_dicom_seg(labels, source, tmp_path / "x.dcm")


def test_dicom_seg_refuses_labels_of_another_grid(tmp_path):
    ct = read_image(SAMPLE_DICOM)
    image, _ = make_phantom(np.eye(3))
    with pytest.raises(ValueError, match="does not match the DICOM series"):
        write_dicom_seg(_labels_like(image, []), SAMPLE_DICOM, tmp_path / "x.dcm")
    shifted = _labels_like(ct, [])
    shifted.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="not on this series' grid"):
        write_dicom_seg(shifted, SAMPLE_DICOM, tmp_path / "x.dcm")
    bad = _labels_like(ct, [(3, 0, 0, 0)])
    with pytest.raises(ValueError, match="outside"):
        write_seg_nrrd(bad, tmp_path / "x.seg.nrrd")
    assert not list(tmp_path.iterdir())


def test_threshold_segmenter_labels_round_trip_through_both_formats(tmp_path):
    """Labels from the real pipeline (stand-in network) on real CT slices, through both files."""
    from FusionLungSegLib.segmenter import LungSegmenter

    ct = read_image(SAMPLE_DICOM)
    labels = LungSegmenter(model=ThresholdNet(), device="cpu", input_size=64, progress=False).segment(ct)
    check_seg_nrrd(write_seg_nrrd(labels, tmp_path / "l.seg.nrrd"), labels)
    write_dicom_seg(labels, SAMPLE_DICOM, tmp_path / "l.dcm")
    check_dicom_seg(tmp_path / "l.dcm", labels, dicom_series_files(SAMPLE_DICOM))
