"""The web page (trame-slicer): Slicer's slice and 3D views and segment editor in a browser, with the panel
"Segment lungs".  Wiring only: what the buttons do is :class:`~FusionLungSegLib.web.session.WebSession`'s.

Run it with ``fusionlungseg web --data DIR`` (extra ``[web]``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

# torch, and torchvision whose import pulls in triton (CUDA builds), must load before VTK opens its OpenGL
# context: loaded after it, triton's LLVM clashes with the one Mesa loaded and the process crashes.
import torch  # noqa: I001

try:
    import torchvision  # noqa: F401
except ImportError:  # optional: the encoders have a built-in copy
    torchvision = None
from trame.app import TrameApp
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import LayoutButtonLogic, SegmentEditorLogic
from trame_slicer.app.ui import LayoutButton, SegmentEditorUI, ViewerLayout
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.segmentation import (
    SegmentationEffectErase,
    SegmentationEffectIslands,
    SegmentationEffectNoTool,
    SegmentationEffectPaint,
    SegmentationEffectScissors,
    SegmentationEffectSmoothing,
)

from .._version import __version__
from ..core.pipeline import SegmentationCancelled
from ..core.terminology import LUNG_SEGMENTS
from ..options import FAST_INPUT_SIZE, SegmentOptions
from .session import WebSession

__all__ = ["LungWebApp", "serve"]

log = logging.getLogger(__name__)

#: The correction tools on the page (Paint and Erase work once :meth:`LungWebApp.attach_effect_pipelines` has run).
EDIT_TOOLS = (
    ("No tool", "mdi-cursor-default", SegmentationEffectNoTool),
    ("Paint", "mdi-brush", SegmentationEffectPaint),
    ("Erase", "mdi-eraser", SegmentationEffectErase),
    ("Scissors", "mdi-content-cut", SegmentationEffectScissors),
    ("Islands", "mdi-scatter-plot", SegmentationEffectIslands),
    ("Smoothing", "mdi-square-rounded-outline", SegmentationEffectSmoothing),
)


class LungEditorUI(SegmentEditorUI):
    """trame-slicer's segment editor with the tools that work on lungs (see :data:`EDIT_TOOLS`)."""

    def build_effect_buttons(self, all: bool = True, **kwargs):  # trame-slicer's signature
        for name, icon, effect in EDIT_TOOLS:
            self._create_effect_button(name, icon, effect, **kwargs)


class LungWebApp(TrameApp):
    """One server: one MRML scene (trame-slicer's :class:`SlicerApp`), one :class:`WebSession` on it, one page."""

    def __init__(self, session_args: dict, server=None):
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.layout_logic = LayoutButtonLogic(self.server, self.slicer_app)
        self.session = WebSession(self.slicer_app.scene, **session_args)
        self._init_state()
        self._build_ui()
        self.editor_logic.set_ui(self.editor_ui)
        self.layout_logic.set_ui(self.layout_button)
        self.attach_effect_pipelines()

    def attach_effect_pipelines(self) -> int:
        """Give every segment editor effect pipeline its view; returns how many lacked one.

        Works around trame-slicer 2.0.0: the brush effects' pipelines (Erase, Smoothing, Paint) are made when the
        editor starts, before the views exist, so they get no view and the tool fails on activation with
        "'NoneType' object has no attribute 'paint_interaction_stopped'".
        """
        views = self.slicer_app.view_manager
        fixed = 0
        for effect in self.slicer_app.segmentation_editor._effects.values():
            for ref in effect._pipelines:
                pipeline = ref()
                if pipeline is not None and pipeline._view is None and pipeline.GetViewNode() is not None:
                    view = views.get_view(pipeline.GetViewNode())
                    if view is not None:
                        pipeline.SetView(view)
                        fixed += 1
        return fixed

    # ------------------------------------------------------------ state
    def _init_state(self):
        s = self.state
        s.trame__title = "FusionLungSeg"
        opts = self.session.options
        s.cases = self.session.list_cases()
        s.case_name = None
        s.open_case = ""
        s.devices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        s.device = opts.device if opts.device in s.devices else "auto"
        s.precisions = ["auto", "fp32", "bf16", "int8"]
        s.precision = opts.precision
        s.fast = opts.fast
        s.running = False
        s.progress = 0
        s.status = "choose a case" if s.cases else f"no CT scans found under {self.session.data_dir}"
        s.error = ""
        s.volumes = []
        s.qc_ok = None
        s.qc_flags = []
        s.exported = []
        s.exports = 0  # numbered, so a repeated export shows as new

    # ------------------------------------------------------------ page
    def _build_ui(self):
        with ViewerLayout(self.server, is_drawer_visible=True) as self.layout:
            self.layout.title.set_text(f"FusionLungSeg {__version__}: segment lungs")
            with self.layout.toolbar:
                self.layout_button = LayoutButton(classes="mt-1")
            with self.layout.drawer, html.Div(classes="pa-3 d-flex flex-column", style="gap: 8px;"):
                self._build_panel()
                v3.VDivider()
                self.editor_ui = LungEditorUI(v_show="case_name && !running")
            with self.layout.content:
                self.layout_logic.layout_manager.initialize_layout_grid(self.layout)

    def _build_panel(self):
        with html.Div(classes="d-flex", style="gap: 8px;"):
            v3.VCombobox(
                v_model=("open_case",),
                items=("cases",),
                label="Case (under the data folder)",
                density="compact",
                hide_details=True,
                classes="flung-case",
                disabled=("running",),
            )
            # the values go with the click: a v-model update may reach the server after the click does
            v3.VBtn("Open", click=(self.on_open, "[open_case]"), classes="flung-open", disabled=("running",))
        with html.Div(classes="d-flex", style="gap: 8px;"):
            v3.VSelect(v_model=("device",), items=("devices",), label="Device", density="compact", hide_details=True)
            v3.VSelect(
                v_model=("precision",),
                items=("precisions",),
                label="Precision",
                density="compact",
                hide_details=True,
                classes="flung-precision",
            )
        v3.VCheckbox(
            v_model=("fast",),
            label=f"Fast ({FAST_INPUT_SIZE} px network input)",
            density="compact",
            hide_details=True,
        )
        with html.Div(classes="d-flex", style="gap: 8px;"):
            v3.VBtn(
                "Segment lungs",
                click=(self.on_segment, "[device, precision, fast]"),
                color="primary",
                classes="flung-segment",
                disabled=("!case_name",),
            )
            v3.VBtn("Cancel", click=self.on_cancel, v_show="running", classes="flung-cancel")
        v3.VProgressLinear(v_show="running", model_value=("progress",), height=6, classes="flung-progress")
        html.Div("{{ status }}", classes="text-body-2 flung-status")
        v3.VAlert(
            "{{ error }}",
            v_show="error",
            type="error",
            density="compact",
            variant="tonal",
            classes="flung-error",
        )
        with v3.VTable(v_show="volumes.length", density="compact", classes="flung-volumes"):
            with html.Thead(), html.Tr():
                html.Th("Segment")
                html.Th("Volume (mL)")
            with html.Tbody():
                with html.Tr(v_for="row in volumes", key="row.name"):
                    html.Td("{{ row.name }}")
                    html.Td("{{ row.ml.toFixed(1) }}")
        v3.VAlert(
            "QC ok",
            v_show="qc_ok === true",
            type="success",
            density="compact",
            variant="tonal",
            classes="flung-qc",
        )
        with v3.VAlert(
            v_show="qc_ok === false",
            type="warning",
            density="compact",
            variant="tonal",
            title="QC: check this result",
            classes="flung-qc",
        ):
            html.Div("{{ flag }}", v_for="flag in qc_flags", key="flag", classes="text-body-2")
        v3.VBtn("Export", click=self.on_export, disabled=("qc_ok === null || running",), classes="flung-export")
        html.Div("{{ path }}", v_for="path in exported", key="path", classes="text-caption flung-exported")

    # ------------------------------------------------------------ actions
    def open_case(self, name: str) -> None:
        """Open a case (also used by ``--open``); errors go to the page, the previous case stays open."""
        s = self.state
        s.error = ""
        try:
            case = self.session.open(name)
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            s.error = f"error: {exc}"
            return
        volume = self.session.volume_node
        display = self.slicer_app.display_manager  # slice views only: the 3D view is for the lung surfaces
        display.show_volume_in_slice_background(volume)
        display.show_volume_in_slice_foreground(None)
        display.set_node_visible_in_group(volume)
        display.reset_views()
        self.editor_logic.on_volume_changed(volume)
        self.attach_effect_pipelines()
        self.session.segmentation_node = self.slicer_app.segmentation_editor.active_segmentation_node
        s.case_name, s.open_case = case.case_id, case.case_id
        s.volumes, s.qc_ok, s.qc_flags, s.exported, s.progress = [], None, [], [], 0
        size = self.session.image.GetSize()
        s.status = f"{case.case_id}: {size[0]} x {size[1]} x {size[2]} voxels; ready to segment"

    def on_open(self, name: str | None = None):
        self.open_case(name if name is not None else self.state.open_case or "")

    def on_segment(self, device: str | None = None, precision: str | None = None, fast: bool | None = None):
        s = self.state
        if self.session.busy:
            s.status = "already segmenting: wait, or cancel first"
            return
        s.error = ""
        try:
            self.slicer_app.segmentation_editor.deactivate_effect()
            self.session.start(
                self.slicer_app.segmentation_editor.active_segmentation_node,
                device=device or s.device,
                precision=precision or s.precision,
                fast=s.fast if fast is None else fast,
            )
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            s.error = f"error: {exc}"
            return
        s.running, s.progress, s.status = True, 0, "starting"
        asyncio.ensure_future(self._watch())

    def on_cancel(self):
        if self.session.busy:
            self.session.task.cancel()
            self.state.status = "cancelling after the current batch of slices"

    async def _watch(self):
        task = self.session.task
        while not task.finished:
            with self.state:
                self.state.progress = round(100 * task.fraction)
                self.state.status = task.message
            await asyncio.sleep(0.25)
        with self.state:
            self._finish()

    def _finish(self):
        s = self.state
        s.running = False
        try:
            summary = self.session.finish()
        except SegmentationCancelled:
            s.status = "cancelled; nothing was changed"
            return
        except Exception as exc:  # the page must keep serving: show it
            log.exception("segmentation failed")
            s.status, s.error = "failed", f"error: {exc}"
            return
        editor = self.slicer_app.segmentation_editor
        editor.set_active_segmentation(self.session.segmentation_node, self.session.volume_node)
        editor.set_active_segment_id(LUNG_SEGMENTS[0].id)
        editor.set_surface_representation_enabled(True)
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_view()  # the camera onto the lung surfaces (the 3D view had nothing to frame before)
        s.volumes = [
            {"name": "right lung", "ml": summary.right_ml},
            {"name": "left lung", "ml": summary.left_ml},
            {"name": "both lungs", "ml": round(summary.right_ml + summary.left_ml, 1)},
        ]
        s.qc_ok, s.qc_flags = bool(summary.qc["ok"]), list(summary.qc["flags"])
        s.progress = 100
        size = f"{summary.input_size} px, " if summary.input_size else ""
        s.status = f"done in {summary.seconds:.1f} s ({summary.device}, {size}{summary.precision})"

    def on_export(self):
        s = self.state
        s.error = ""
        try:
            written = self.session.export()
        except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
            s.error = f"error: {exc}"
            return
        s.exported = [str(p) for p in written.values()]
        s.exports += 1
        s.status = f"export {s.exports}: {len(written)} files written to {self.session.out_dir}"


def serve(
    data: str | Path,
    out: str | Path,
    options: SegmentOptions,
    open_name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
) -> None:
    """Serve the page until interrupted.  ``open_name`` is checked before the server starts (a refused or
    unreadable case is an error, not a page)."""
    app = LungWebApp({"data_dir": data, "out_dir": out, "options": options})
    if open_name:  # outside --data, missing or unreadable: an error before serving
        app.open_case(open_name)
        if app.state.error:
            raise ValueError(app.state.error.removeprefix("error: "))
    print(f"FusionLungSeg web: http://{host}:{port}/  (data: {app.session.data_dir}; exports: {app.session.out_dir})")
    sys.argv = sys.argv[:1]  # trame parses the command line too: ours is not its own (--port, --data...)
    app.server.start(host=host, port=port, open_browser=False, timeout=0, show_connection_info=False)
