"""The page: trame-slicer's viewer layout (slice views, 3D view, segment editor, volume properties with window/level)
plus the MedCLIP-SAM panel. Every control has an accessible name (a label or its text), so that tests and screen
readers find it by role: textbox "Prompt", buttons "Segment", "Cancel", "Undo", "Accept", ..."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from trame.widgets import html
from trame.widgets.vuetify3 import (VAlert, VBtn, VBtnToggle, VCard, VCardText, VCardTitle, VDivider, VFileInput,
                                    VProgressLinear, VSelect, VSwitch, VTextarea, VTextField)
from trame_server.utils.typed_state import TypedState
from trame_slicer.app.ui import (LayoutButton, MprInteractionButton, SegmentEditorUI, ViewerLayout, VolumePropertyUI)
from trame_slicer.app.ui.control_button import ControlButton

from .state import BOX_TOOL, EXCLUDE_TOOL, INCLUDE_TOOL, NO_TOOL, PanelState

PANEL_TOOL = "MedCLIPSAMPanel"
"""The drawer's tool name of the MedCLIP-SAM panel (trame-slicer's drawer shows one tool at a time)."""


@dataclass
class Actions:
    """What the panel's controls call (the logic's methods, wired by ``app``)."""

    segment: Callable
    cancel: Callable
    undo: Callable
    restart_engine: Callable
    add_preset: Callable
    upload_chunk: Callable
    upload_refused: Callable
    propagate: Callable
    export: Callable
    export_dataset: Callable
    open_review: Callable
    open_case: Callable
    next_case: Callable
    accept_case: Callable
    exclude_case: Callable
    select_segment: Callable
    pacs_refresh: Callable | None = None
    pacs_select_study: Callable | None = None
    pacs_open: Callable | None = None


class PageUI:
    """Builds the page; ``tool_registry`` holds the trame-slicer tool panels the logic connects to."""

    def __init__(self, server, typed: TypedState[PanelState], actions: Actions, layout_manager,
                 max_upload_mb: float, title: str = "MedCLIP-SAM"):
        self.server, self.typed, self.actions = server, typed, actions
        self.max_upload_mb = max_upload_mb
        self.tool_registry: dict[type, object] = {}
        with ViewerLayout(server, title=title, is_drawer_visible=True) as self.layout:
            self.layout.typed_state.data.active_tool = PANEL_TOOL
            with self.layout.appbar:
                self._upload()
            with self.layout.drawer:
                self.panel = self._panel()
                self._register(SegmentEditorUI)
                self._register(VolumePropertyUI)
            with self.layout.toolbar:
                self._tool_button("MedCLIP-SAM panel", "mdi-text-search", PANEL_TOOL)
                self._tool_button("Volume properties (window/level)", "mdi-tune-variant", VolumePropertyUI.__name__)
                self._tool_button("Segment editor (paint, erase)", "mdi-brush", SegmentEditorUI.__name__)
                self.layout_button = LayoutButton(classes="mt-1")
                self.mpr_interaction_button = MprInteractionButton(classes="mt-1")
            with self.layout.content:
                layout_manager.initialize_layout_grid(self.layout)

    # ---- the drawer's tools
    def _active(self, tool: str) -> str:
        return f"{self.layout.typed_state.name.active_tool} === '{tool}'"

    def _register(self, tool_type: type) -> None:
        self.tool_registry[tool_type] = tool_type(v_if=(self._active(tool_type.__name__),))

    def _tool_button(self, name: str, icon: str, tool: str) -> None:
        data = self.layout.typed_state.data

        def show() -> None:
            data.is_drawer_visible = not data.is_drawer_visible or data.active_tool != tool
            data.active_tool = tool if data.is_drawer_visible else None

        ControlButton(name=name, icon=icon, click=show, active=(self._active(tool),), classes="mt-1",
                      raw_attrs=[f'aria-label="{name}"'])

    def _upload(self) -> None:
        """A file input that refuses a too-large choice in the browser, before any byte is sent, and otherwise
        sends the files in chunks (trame-slicer's chunk loader)."""
        chunk = self.server.trigger_name(self.actions.upload_chunk)
        refused = self.server.trigger_name(self.actions.upload_refused)
        limit = int(self.max_upload_mb * 1e6)
        VFileInput(
            label="Open image or volume", multiple=True, density="compact", hide_details=True,
            style="max-width: 320px;", prepend_icon="mdi-file-upload", classes="ml-4",
            change=(f"void ((files, size) => !files || !files.length ? 0 : size > {limit}"
                    f" ? trame.trigger('{refused}', [size])"
                    f" : window.load_files_by_chunks(files, {{ trigger_name: '{chunk}' }}))"
                    f"($event.target.files, Array.from($event.target.files || []).reduce((a, f) => a + f.size, 0))"),
        )

    def _panel(self):
        name, a = self.typed.name, self.actions
        with VCard(v_if=(self._active(PANEL_TOOL),), variant="flat", classes="overflow-y-auto",
                   style="height: 100%;") as card:
            VCardTitle("MedCLIP-SAM", classes="text-subtitle-1")
            with VCardText(classes="d-flex flex-column ga-2"):
                html.Div("{{ %s || 'No volume loaded' }}" % name.volume_name, classes="text-caption",
                         raw_attrs=['role="status"', 'aria-label="Loaded volume"'])
                VTextarea(label="Prompt", v_model=(name.prompt,), rows=2, auto_grow=True, density="compact",
                          hide_details=True, placeholder="brain tumor (one structure per line)")
                VSelect(label="Presets", items=(name.presets,), model_value=None, density="compact",
                        hide_details=True, update_modelValue=(a.add_preset, "[$event]"))
                with html.Div(classes="d-flex ga-2"):
                    VBtn("Segment", click=a.segment, color="primary", disabled=("!%s" % name.volume_name,))
                    VBtn("Cancel", click=a.cancel, disabled=("!%s" % name.running,))
                    VBtn("Undo", click=a.undo, disabled=(f"{name.running} || {name.correcting}",))
                VProgressLinear(v_show=(name.running,), model_value=(f"Math.max({name.progress}, 0)",),
                                indeterminate=(f"{name.progress} < 0",), height=6, color="primary",
                                raw_attrs=['aria-label="Progress"'])
                html.Div("{{ %s }}" % name.stage, v_show=(name.running,), classes="text-caption",
                         raw_attrs=['role="status"', 'aria-label="Stage"'])
                VAlert(v_show=(name.message,), text=(name.message,), type=(name.message_kind,), density="compact",
                       variant="tonal", raw_attrs=['aria-label="Message"'])
                VBtn("Restart the engine", v_show=(name.engine_gone,), click=a.restart_engine, color="error")
                VSwitch(label="Saliency overlay", v_model=(name.show_saliency,), disabled=("!%s" % name.has_saliency,),
                        density="compact", hide_details=True, color="primary")
                if a.pacs_open is not None:
                    self._pacs()
                self._segments()
                VDivider()
                self._correct()
                VDivider()
                self._export()
                VDivider()
                self._review()
        return card

    def _segments(self) -> None:
        name, a = self.typed.name, self.actions
        html.Div("Segments", classes="text-subtitle-2")
        with html.Div(v_for=f"row in {name.segments}", key="row.segment_id", classes="d-flex flex-column",
                      raw_attrs=['role="group"', ':aria-label="\'Segment \' + row.name"']):
            with html.Div(classes="d-flex align-center ga-2"):
                VBtn("{{ row.name }}", size="small",
                     variant=(f"row.segment_id === {name.selected_segment} ? 'flat' : 'text'",),
                     click=(a.select_segment, "[row.segment_id]"),
                     raw_attrs=[':style="{ borderLeft: \'12px solid \' + row.color }"']
                     )
                html.Span("faithfulness {{ row.faithfulness }}", v_if="row.faithfulness", classes="text-caption")
            html.Div("{{ row.warning }}", v_if="row.warning", classes="text-caption text-warning",
                     raw_attrs=['role="alert"'])

    def _pacs(self) -> None:
        name, a = self.typed.name, self.actions
        html.Div("PACS {{ %s }}" % name.pacs_url, classes="text-subtitle-2")
        VSelect(label="PACS studies", items=(name.pacs_studies,), item_title="title", item_value="study_uid",
                model_value=(name.pacs_study,), density="compact", hide_details=True,
                update_modelValue=(a.pacs_select_study, "[$event]"))
        VSelect(label="PACS series", items=(name.pacs_series,), item_title="title", item_value="series_uid",
                v_model=(name.pacs_selected_series,), density="compact", hide_details=True)
        with html.Div(classes="d-flex ga-2"):
            VBtn("Open series", click=a.pacs_open, size="small", disabled=("!%s" % name.pacs_selected_series,))
            VBtn("Refresh PACS", click=a.pacs_refresh, size="small")
        VDivider()

    def _correct(self) -> None:
        name, a = self.typed.name, self.actions
        html.Div("Correct (drag a box or click in a slice view)", classes="text-subtitle-2")
        with VBtnToggle(v_model=(name.tool,), mandatory=True, density="compact", divided=True,
                        raw_attrs=['aria-label="Correction tool"']):
            VBtn("Navigate", value=NO_TOOL, size="small")
            VBtn("Box", value=BOX_TOOL, size="small")
            VBtn("Include click", value=INCLUDE_TOOL, size="small")
            VBtn("Exclude click", value=EXCLUDE_TOOL, size="small")
        with html.Div(classes="d-flex ga-2"):
            VBtn("Propagate", click=a.propagate, size="small", disabled=(name.correcting,))
        html.Div("{{ %s }}" % name.correction_message, classes="text-caption",
                 raw_attrs=['role="status"', 'aria-label="Correction status"'])
        html.Div("Corrections applied: {{ %s }}{{ %s ? ' (last: ' + %s + ' ms)' : '' }}"
                 % (name.interactions, name.latency_ms, name.latency_ms), classes="text-caption",
                 raw_attrs=['aria-label="Corrections applied"'])

    def _export(self) -> None:
        name, a = self.typed.name, self.actions
        html.Div("Export", classes="text-subtitle-2")
        VTextField(label="Export folder", v_model=(name.export_folder,), density="compact", hide_details=True)
        VBtn("Export NIfTI and .seg.nrrd", click=a.export, size="small")
        VTextField(label="nnU-Net raw folder", v_model=(name.dataset_folder,), density="compact", hide_details=True)
        VTextField(label="Dataset name", v_model=(name.dataset_name,), density="compact", hide_details=True)
        VBtn("Add to nnU-Net dataset", click=a.export_dataset, size="small")
        html.Div("{{ path }}", v_for=f"path in {name.exported}", classes="text-caption",
                 raw_attrs=['role="listitem"'])

    def _review(self) -> None:
        name, a = self.typed.name, self.actions
        html.Div("Review queue", classes="text-subtitle-2")
        VTextField(label="Review folder", v_model=(name.review_folder,), density="compact", hide_details=True)
        VBtn("Open queue", click=a.open_review, size="small")
        with html.Div(v_for=f"row in {name.review_rows}", key="row.case", classes="d-flex align-center ga-2"):
            VBtn("{{ row.case }}", size="small", variant="text", click=(a.open_case, "[row.case]"),
                 raw_attrs=[':aria-label="\'Open case \' + row.case"'])
            html.Span("{{ row.uncertainty }} · {{ row.status }}", classes="text-caption")
        with html.Div(classes="d-flex ga-2"):
            VBtn("Accept", click=a.accept_case, size="small", disabled=("!%s" % name.review_case,))
            VBtn("Exclude", click=a.exclude_case, size="small", disabled=("!%s" % name.review_case,))
            VBtn("Next case", click=a.next_case, size="small", disabled=("!%s.length" % name.review_rows,))
