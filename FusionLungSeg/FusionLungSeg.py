"""3D Slicer module "Segment lungs" (FusionLungSeg): right and left lung segments from a chest CT.

The panel only wires widgets to :class:`FusionLungSegLogic`, which delegates to
``FusionLungSegLib.mrml.LungSegmentationLogic`` (MRML only, no Qt); the console
and headless batch runs use the same logic.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from FusionLungSegLib.core.tasks import CANCELLING, DONE, FAILED, IDLE, RUNNING
from FusionLungSegLib.engines.hardware import ALL_PRECISIONS

_HERE = os.path.dirname(os.path.abspath(__file__))


def _ensure_library_on_path() -> None:
    """Source checkout: the library sits beside this folder; installed: beside this file."""
    for candidate in (_HERE, os.path.dirname(_HERE)):
        if os.path.isdir(os.path.join(candidate, "FusionLungSegLib")) and candidate not in sys.path:
            sys.path.insert(0, candidate)


_ensure_library_on_path()


def resource_path(*parts: str) -> str:
    """A file under ``Resources/``, found by the library's one rule (FusionLungSegLib.resources, no torch import)."""
    from FusionLungSegLib.resources import resource_path as library_resource_path

    return str(library_resource_path(*parts))


#: import name -> distribution name; the version bounds come from Resources/requirements.txt.
REQUIRED_PACKAGES = {"torch": "torch", "scipy": "scipy", "cv2": "opencv-python-headless", "tqdm": "tqdm"}


def requirement_specs() -> dict[str, str]:
    """Distribution name -> requirement line (e.g. "torch>=2.1") from Resources/requirements.txt."""
    import re

    specs = {}
    path = resource_path("requirements.txt")
    if os.path.exists(path):
        for line in open(path, encoding="utf-8"):
            line = line.split("#", 1)[0].strip()
            if line:
                specs[re.split(r"[<>=!~ ;\[]", line, maxsplit=1)[0].lower()] = line
    return specs


def missing_packages() -> list[str]:
    """Requirement lines of the Python packages the segmentation needs but that cannot be imported."""
    import importlib.util

    specs = requirement_specs()
    return [
        specs.get(dist, dist) for module, dist in REQUIRED_PACKAGES.items() if importlib.util.find_spec(module) is None
    ]


def ensure_dependencies() -> bool:
    """Offer to install missing packages (never silently); True when all are importable."""
    missing = missing_packages()
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
        "Segment lungs needs these Python packages, which are not installed: "
        + ", ".join(missing)
        + ". Install them now? (This downloads several hundred MB and may take minutes.)",
        "Install dependencies",
    ):
        return False
    with slicer.util.displayPythonShell(), slicer.util.tryWithErrorDisplay("Installing dependencies failed."):
        torch_spec = [m for m in missing if m.startswith("torch")]
        if torch_spec and hasattr(slicer.modules, "pytorchutils"):
            import PyTorchUtils  # the PyTorch extension picks a build that matches the GPU

            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
            missing = [m for m in missing if m not in torch_spec]
        if missing:
            slicer.util.pip_install(missing)
    return not missing_packages()


#
# Module
#
class FusionLungSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Segment lungs"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["FusionLungSeg developers"]
        self.parent.helpText = (
            "Segments the right and left lungs in a chest CT with FusionLungNet "
            "(Rezvani et al., arXiv 2410.15812). Choose the CT, optionally an existing segmentation, "
            "and press Apply. Only the segments 'right lung' and 'left lung' are written; other segments "
            "are kept. See the <a href='https://github.com/fusionlungseg/FusionLungSeg'>README</a>."
        )
        self.parent.acknowledgementText = (
            "FusionLungNet: S. Rezvani, M. Fateh, Y. Jalali, A. Fateh, arXiv 2410.15812. "
            "Sample CT: lungmask test data (Apache-2.0)."
        )
        icon = resource_path("Icons", "FusionLungSeg.png")
        if os.path.exists(icon):
            self.parent.icon = qt.QIcon(icon)


#
# Logic (no Qt): thin wrapper so that the console call is FusionLungSeg.FusionLungSegLogic().segment(node)
#
class FusionLungSegLogic(ScriptedLoadableModuleLogic):
    """``segment(volume_node, segmentation_node=None, *, device, precision, input_size, progress, cancel)``
    (synchronous) and ``start(...)`` (a ``SegmentationTask`` computing in a worker thread);
    see ``FusionLungSegLib.mrml.LungSegmentationLogic``."""

    def __init__(self, scene=None):
        ScriptedLoadableModuleLogic.__init__(self)
        from FusionLungSegLib.mrml import LungSegmentationLogic

        self._impl = LungSegmentationLogic(scene if scene is not None else slicer.mrmlScene)

    def setDefaultParameters(self, parameterNode):
        defaults = {"Device": "auto", "Precision": "auto", "Fast": "false", "Show3D": "true"}
        for key, value in defaults.items():
            if not parameterNode.GetParameter(key):
                parameterNode.SetParameter(key, value)

    def segment(self, volume_node, segmentation_node=None, **kwargs):
        return self._impl.segment(volume_node, segmentation_node, **kwargs)

    def start(self, volume_node, segmentation_node=None, **kwargs):
        """Check and copy the input here (main thread), then compute in a worker thread; the caller
        polls the returned task and calls its ``finish()`` on the main thread to write the segments."""
        from FusionLungSegLib.mrml import SegmentationTask

        return SegmentationTask(self._impl, self._impl.prepare(volume_node, segmentation_node, **kwargs)).start()

    @property
    def last_seconds(self):
        return self._impl.last_seconds

    @property
    def last_qc(self):
        """QC verdict of the last run: {"ok", "flags", "notes", "measures"}."""
        return self._impl.last_qc

    def lung_volumes_ml(self, segmentation_node):
        return self._impl.lung_volumes_ml(segmentation_node)

    def show_3d(self, segmentation_node):
        return self._impl.show_3d(segmentation_node)


#
# Widget: wiring and processing states only. Inference runs in a worker thread (SegmentationTask); a QTimer
# polls it, and the scene is changed on the main thread when it has finished. Runs only inside Slicer.
#
POLL_MS = 100


class FusionLungSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updating = False
        self._state = IDLE
        self._task = None  # the running SegmentationTask
        self._timer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resource_path("UI", "FusionLungSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.inputVolumeSelector.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode"]
        self.ui.deviceComboBox.clear()
        self.ui.deviceComboBox.addItems(["auto", "cuda", "cpu"])
        self.ui.precisionComboBox.clear()
        self.ui.precisionComboBox.addItems(list(ALL_PRECISIONS))
        self.logic = FusionLungSegLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.precisionComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.fastModeCheckBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.initializeParameterNode()
        self.setState(IDLE, "Choose a chest CT and press Apply.")

    def cleanup(self):
        if self._task is not None:
            self._task.cancel()  # the worker stops after its batch; nothing is written
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        if self._task is not None:
            self._task.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ---------------------------------------------------------------- parameter node
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.GetNodeReference("InputVolume"):
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume and not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.SetNodeReferenceID("InputVolume", volume.GetID())

    def setParameterNode(self, inputParameterNode):
        if inputParameterNode:
            self.logic.setDefaultParameters(inputParameterNode)
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode is not None:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updating:
            return
        self._updating = True
        p = self._parameterNode
        self.ui.inputVolumeSelector.setCurrentNode(p.GetNodeReference("InputVolume"))
        self.ui.outputSegmentationSelector.setCurrentNode(p.GetNodeReference("OutputSegmentation"))
        self.ui.deviceComboBox.setCurrentText(p.GetParameter("Device") or "auto")
        self.ui.precisionComboBox.setCurrentText(p.GetParameter("Precision") or "auto")
        self.ui.fastModeCheckBox.checked = p.GetParameter("Fast") == "true"
        self.ui.show3DCheckBox.checked = p.GetParameter("Show3D") == "true"
        self._updating = False
        self.updateButtons()

    def updateParameterNodeFromGUI(self, caller=None, event=None):
        if self._parameterNode is None or self._updating:
            return
        wasModified = self._parameterNode.StartModify()
        p = self._parameterNode
        p.SetNodeReferenceID("InputVolume", self.ui.inputVolumeSelector.currentNodeID)
        p.SetNodeReferenceID("OutputSegmentation", self.ui.outputSegmentationSelector.currentNodeID)
        p.SetParameter("Device", self.ui.deviceComboBox.currentText)
        p.SetParameter("Precision", self.ui.precisionComboBox.currentText)
        p.SetParameter("Fast", "true" if self.ui.fastModeCheckBox.checked else "false")
        p.SetParameter("Show3D", "true" if self.ui.show3DCheckBox.checked else "false")
        self._parameterNode.EndModify(wasModified)

    # ---------------------------------------------------------------- processing states
    def setState(self, state, message=""):
        self._state = state
        self.ui.statusLabel.text = message
        self.ui.progressBar.visible = state in (RUNNING, CANCELLING)
        self.updateButtons()

    def updateButtons(self):
        busy = self._state in (RUNNING, CANCELLING)
        hasInput = self.ui.inputVolumeSelector.currentNode() is not None
        self.ui.applyButton.enabled = hasInput and not busy
        self.ui.applyButton.toolTip = "Segment the lungs" if hasInput else "Select a CT volume first"
        self.ui.cancelButton.enabled = self._state == RUNNING
        for w in (
            self.ui.inputVolumeSelector,
            self.ui.outputSegmentationSelector,
            self.ui.deviceComboBox,
            self.ui.precisionComboBox,
        ):
            w.enabled = not busy

    def onCancelButton(self):
        if self._task is not None:
            self._task.cancel()
        self.setState(CANCELLING, "Cancelling after the current batch of slices...")

    def onApplyButton(self):
        if not ensure_dependencies():
            self.setState(FAILED, "Missing Python packages: " + ", ".join(missing_packages()))
            return
        self.ui.volumesTableWidget.setRowCount(0)
        self.showQC(None)
        p = self._parameterNode
        try:  # checks the nodes and copies the CT here; the model loads and runs in the worker thread
            self._task = self.logic.start(
                self.ui.inputVolumeSelector.currentNode(),
                self.ui.outputSegmentationSelector.currentNode(),
                device=p.GetParameter("Device") or "auto",
                precision=p.GetParameter("Precision") or "auto",
                input_size=160 if p.GetParameter("Fast") == "true" else None,
            )
        except Exception as exc:
            self.onFailed(exc)
            return
        self.ui.progressBar.value = 0
        self.setState(RUNNING, "Loading the model...")
        self._timer.start()

    def onPoll(self):
        """Timer tick on the main thread: show progress; when the worker is done, write the result."""
        task = self._task
        if task is None:
            self._timer.stop()
            return
        self.ui.progressBar.value = int(round(100 * task.fraction))
        if self._state == RUNNING and task.message:
            self.ui.statusLabel.text = task.message
        if not task.finished:
            return
        self._timer.stop()
        self._task = None
        from FusionLungSegLib.mrml import SegmentationCancelled

        try:
            seg = task.finish()  # writes the segments: main thread
        except SegmentationCancelled:
            self.setState(IDLE, "Cancelled; the scene was not changed.")
            return
        except Exception as exc:
            self.onFailed(exc)
            return
        self.ui.outputSegmentationSelector.setCurrentNode(seg)
        if self._parameterNode is not None and self._parameterNode.GetParameter("Show3D") == "true":
            self.logic.show_3d(seg)
        self.showVolumes(seg)
        self.showQC(self.logic.last_qc)
        self.setState(DONE, f"Done in {self.logic.last_seconds:.1f} s.")

    def onFailed(self, exc):
        logging.error("Lung segmentation failed", exc_info=exc)
        self.setState(FAILED, f"Failed: {exc}")
        slicer.util.errorDisplay(f"Lung segmentation failed: {exc}")

    def showQC(self, qc):
        """The QC verdict beside the volumes: flags in a warning colour, notes below them."""
        label = self.ui.qcLabel
        if not qc:
            label.text = ""
            return
        lines = [f"<b>Check this result:</b> {flag}" for flag in qc["flags"]] or ["Quality check: no warnings."]
        colour = "#b35900" if qc["flags"] else "#2e7d32"
        notes = "".join(f"<br><span style='color:#666'>{note}</span>" for note in qc["notes"])
        label.text = f"<span style='color:{colour}'>" + "<br>".join(lines) + "</span>" + notes

    def showVolumes(self, segmentationNode):
        volumes = self.logic.lung_volumes_ml(segmentationNode)
        table = self.ui.volumesTableWidget
        table.setRowCount(len(volumes))
        for row, (name, ml) in enumerate(volumes.items()):
            table.setItem(row, 0, qt.QTableWidgetItem(name))
            table.setItem(row, 1, qt.QTableWidgetItem(f"{ml:.1f}"))


#
# Self-test (runs inside Slicer: Developer mode -> Reload and Test)
#
class FusionLungSegTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_segment_sample_ct()

    def test_segment_sample_ct(self):
        from FusionLungSegLib.io import read_image
        from FusionLungSegLib.mrml import sitk_to_volume_node

        self.delayDisplay("Loading the bundled sample CT")
        volume = sitk_to_volume_node(read_image(resource_path("Samples", "lungmask_testdata")), slicer.mrmlScene)
        before = slicer.util.arrayFromVolume(volume).copy()
        logic = FusionLungSegLogic()
        seg = logic.segment(volume, input_size=160)
        segmentation = seg.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 2)
        self.assertEqual(segmentation.GetSegment("right_lung").GetName(), "right lung")
        self.assertEqual(segmentation.GetSegment("left_lung").GetName(), "left lung")
        volumes = logic.lung_volumes_ml(seg)
        self.assertGreater(volumes["right lung"], 0.0)
        self.assertGreater(volumes["left lung"], 0.0)
        self.assertTrue((slicer.util.arrayFromVolume(volume) == before).all())
        self.delayDisplay("Running through the panel")
        widget = slicer.modules.fusionlungseg.widgetRepresentation().self()
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.ui.outputSegmentationSelector.setCurrentNode(seg)
        widget.ui.fastModeCheckBox.checked = True
        widget.onApplyButton()
        self.assertEqual(widget._state, RUNNING)  # returns at once: the model runs in a worker thread
        self.waitWhileBusy(widget)
        self.assertEqual(widget._state, DONE)
        self.assertEqual(widget.ui.volumesTableWidget.rowCount, 3)
        self.delayDisplay("Cancel through the panel")
        segments = segmentation.GetNumberOfSegments()
        widget.onApplyButton()
        widget.onCancelButton()
        self.waitWhileBusy(widget)
        self.assertEqual(widget._state, IDLE)
        self.assertEqual(segmentation.GetNumberOfSegments(), segments)
        self.delayDisplay("Test passed")

    def waitWhileBusy(self, widget, timeout_s=600):
        deadline = time.monotonic() + timeout_s
        while widget._state in (RUNNING, CANCELLING):
            self.assertLess(time.monotonic(), deadline, "the panel's segmentation did not finish")
            slicer.app.processEvents()
            time.sleep(0.02)
