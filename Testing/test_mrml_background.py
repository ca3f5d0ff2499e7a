"""Segmentation off the main thread on a real MRML scene (slicer-core): compute in a worker, apply on the main
thread, cancel mid-run, and the scene is never touched by the computation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ThresholdNet, make_phantom
from mrml_fixtures import shared_session, slicer

from FusionLungSegLib.engines.hardware import resolve_precision
from FusionLungSegLib.mrml import (
    CANCELLING,
    DONE,
    FAILED,
    IDLE,
    RUNNING,
    InvalidInputError,
    LungSegmentationLogic,
    SegmentationCancelled,
    SegmentationTask,
)
from FusionLungSegLib.segmenter import LungSegmenter

SLICES = 40  # the phantom's slices: 10 batches of 4


class GatedSegmenter(LungSegmenter):
    """Threshold network; records the threads its batches run in, and can hold batch ``hold_at``
    until the test releases it (so a cancel lands mid-run, deterministically)."""

    def __init__(self, hold_at: int | None = None, fail: bool = False):
        super().__init__(model=ThresholdNet(), device="cpu", input_size=64, batch_size=4, progress=False)
        self.hold_at, self.fail = hold_at, fail
        self.batches, self.threads = 0, set()
        self.held, self.release = threading.Event(), threading.Event()
        run = self.engine.probabilities

        def gated(x):
            self.batches += 1
            self.threads.add(threading.get_ident())
            if self.fail:
                raise RuntimeError("the network failed")
            if self.batches == self.hold_at:
                self.held.set()
                assert self.release.wait(30), "the test never released the held batch"
            return run(x)

        self.engine.probabilities = gated


@pytest.fixture
def scene():
    session = shared_session()
    session.scene.Clear(0)
    yield session.scene
    session.scene.Clear(0)


@pytest.fixture
def logic(scene):
    return LungSegmentationLogic(scene)


@pytest.fixture
def volume(scene, tmp_path):
    image, _ = make_phantom(np.eye(3))
    assert image.GetSize()[2] == SLICES
    path = tmp_path / "CT.nrrd"
    sitk.WriteImage(image, str(path))
    return shared_session().volumes.AddArchetypeVolume(str(path), "CT")


def _scene_state(scene):
    """Node IDs and names, and per segmentation node its segment IDs and names."""
    state = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        entry = [node.GetID(), node.GetName(), node.GetMTime()]
        if node.IsA("vtkMRMLSegmentationNode"):
            seg = node.GetSegmentation()
            for j in range(seg.GetNumberOfSegments()):
                entry.append((seg.GetNthSegmentID(j), seg.GetNthSegment(j).GetName()))
        state.append(tuple(entry))
    return state


def test_compute_in_a_worker_while_the_main_thread_waits_then_apply(logic, volume):
    reference = logic.segment(volume, segmenter=GatedSegmenter())
    reference_labels = sitk.GetArrayFromImage(logic.last_label_image)
    reference_volumes = logic.lung_volumes_ml(reference)

    seg = GatedSegmenter(hold_at=1)  # the first batch waits for the first poll: no race with a fast worker
    task = SegmentationTask(logic, logic.prepare(volume, segmenter=seg))
    assert task.state == IDLE and not task.finished
    task.start()
    assert seg.held.wait(30), "the worker never reached its first batch"
    seen = [(task.state, task.fraction)]
    seg.release.set()
    deadline = time.monotonic() + 60
    while not task.finished:  # the main thread is free: it only polls, as the panel's timer does
        seen.append((task.state, task.fraction))
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert {state for state, _ in seen} <= {RUNNING} and seen[0] == (RUNNING, 0.0)
    assert threading.get_ident() not in seg.threads and len(seg.threads) == 1
    assert seg.batches == SLICES // 4
    node = task.finish()
    assert task.state == DONE and task.fraction == 1.0 and task.message.startswith("done in")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(logic.last_label_image), reference_labels)
    assert logic.lung_volumes_ml(node) == pytest.approx(reference_volumes)
    assert node is not reference and node.GetSegmentation().GetNumberOfSegments() == 2
    computed = logic.last_result
    used = resolve_precision("auto", "cpu", warn=False)  # bf16 on CPUs with bf16 units, else fp32
    assert computed.label_image is logic.last_label_image and computed.precision == used
    assert computed.device == "cpu" and computed.seconds >= 0


def test_compute_does_not_modify_the_scene(logic, volume, scene):
    request = logic.prepare(volume, segmenter=GatedSegmenter())
    events = []
    observers = [
        (obj, obj.AddObserver("AnyEvent", lambda _caller, event: events.append(event))) for obj in (scene, volume)
    ]
    try:
        before = _scene_state(scene), scene.GetMTime(), volume.GetImageData().GetMTime()
        out = {}
        worker = threading.Thread(target=lambda: out.update(computed=logic.compute(request)))
        worker.start()
        worker.join(60)
        assert not worker.is_alive()
        assert events == [], f"compute fired scene events: {events}"
        assert (_scene_state(scene), scene.GetMTime(), volume.GetImageData().GetMTime()) == before
        assert (sitk.GetArrayFromImage(out["computed"].label_image) > 0).sum() > 1000
        logic.apply(out["computed"])
        assert events, "the observers see apply's changes (so they would have seen compute's)"
    finally:
        for obj, tag in observers:
            obj.RemoveObserver(tag)


def test_the_input_is_copied_before_compute(logic, volume):
    request = logic.prepare(volume, segmenter=GatedSegmenter())
    slicer.util.arrayFromVolume(volume)[:] = 40  # the user edits the volume while the model runs: no lungs left
    slicer.util.arrayFromVolumeModified(volume)
    computed = logic.compute(request)
    assert (sitk.GetArrayFromImage(computed.label_image) > 0).sum() > 1000


def test_cancel_from_the_main_thread_mid_run_leaves_the_scene_unchanged(logic, volume, scene):
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "previous")
    existing.GetSegmentation().AddEmptySegment("right_lung", "my right lung")
    before = _scene_state(scene)
    seg = GatedSegmenter(hold_at=3)
    task = SegmentationTask(logic, logic.prepare(volume, existing, segmenter=seg)).start()
    assert seg.held.wait(60), "the worker never reached batch 3"
    task.cancel()  # from the main thread, while batch 3 runs
    assert task.state == CANCELLING and task.cancel_requested
    seg.release.set()
    assert task.wait(60)
    with pytest.raises(SegmentationCancelled):
        task.finish()
    assert task.state == IDLE and "not changed" in task.message
    assert seg.batches == 3 < SLICES // 4  # stopped before the next batch
    assert 0 < task.fraction < 1
    assert _scene_state(scene) == before
    assert existing.GetSegmentation().GetSegment("right_lung").GetName() == "my right lung"


def test_cancel_after_the_last_batch_still_writes_nothing(logic, volume, scene):
    before = _scene_state(scene)
    task = SegmentationTask(logic, logic.prepare(volume, segmenter=GatedSegmenter())).start()
    assert task.wait(60)
    task.cancel()
    with pytest.raises(SegmentationCancelled):
        task.finish()
    assert _scene_state(scene) == before


def test_a_failure_in_the_worker_is_raised_on_the_main_thread(logic, volume, scene):
    before = _scene_state(scene)
    task = SegmentationTask(logic, logic.prepare(volume, segmenter=GatedSegmenter(fail=True))).start()
    assert task.wait(60)
    with pytest.raises(RuntimeError, match="the network failed"):
        task.finish()
    assert task.state == FAILED and "the network failed" in task.message
    assert _scene_state(scene) == before


def test_input_removed_while_computing_is_a_clear_error(logic, volume, scene):
    seg = GatedSegmenter(hold_at=2)
    task = SegmentationTask(logic, logic.prepare(volume, segmenter=seg)).start()
    assert seg.held.wait(60)
    scene.RemoveNode(volume)  # the user deletes the CT while the model runs
    seg.release.set()
    assert task.wait(60)
    before = _scene_state(scene)
    with pytest.raises(InvalidInputError, match="removed from the scene"):
        task.finish()
    assert task.state == FAILED and _scene_state(scene) == before


def test_finish_before_the_worker_returns_is_refused(logic, volume):
    seg = GatedSegmenter(hold_at=1)
    task = SegmentationTask(logic, logic.prepare(volume, segmenter=seg)).start()
    assert seg.held.wait(60)
    with pytest.raises(RuntimeError, match="has not finished"):
        task.finish()
    with pytest.raises(RuntimeError, match="already started"):
        task.start()
    seg.release.set()
    assert task.wait(60)
    task.finish()
    assert task.state == DONE


def test_the_computed_result_keeps_what_the_segmenters_run_returns(logic, volume):
    """LungSegmenter.run(image, progress, cancel) returns labels with the QC verdict:
    compute keeps the whole result, apply writes its labels."""
    computed = logic.compute(logic.prepare(volume, segmenter=GatedSegmenter()))
    assert set(computed.output.qc) == {"ok", "flags", "notes", "measures"}
    assert computed.label_image is computed.output.labels
    node = logic.apply(computed)
    assert logic.last_result is computed and node.GetSegmentation().GetNumberOfSegments() == 2
