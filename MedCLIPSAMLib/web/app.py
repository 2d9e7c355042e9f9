"""Wiring and serving: trame-slicer's SlicerApp and views, the panel's logic, and the trame server on 127.0.0.1."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from trame.app import get_server
from trame_server.utils.typed_state import TypedState
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import LayoutButtonLogic, MprInteractionButtonLogic, VolumePropertyLogic
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.app.ui import SegmentEditorUI, VolumePropertyUI
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories

from ..errors import InputError, MedCLIPSAMError
from ..presets import load_presets
from .correction import CorrectionLogic
from .engine import EngineHolder
from .export import export_segmentation, export_to_dataset
from .loading import DEFAULT_MAX_UPLOAD_MB, read_source_into_scene, read_uploads_into, too_large
from .logic import SegmentLogic, split_prompts
from .pacs import PacsLogic
from .review import ReviewLogic
from .slice_input import SliceInput
from .state import NO_TOOL, PanelState
from .ui import PANEL_TOOL, Actions, PageUI
from .uploads import UploadStore
from .workspace import Workspace

SALIENCY_OPACITY = 0.4
NAMESPACE = "mcs"


@dataclass
class WebConfig:
    """What ``medclipsam web`` was started with."""

    engine: EngineHolder
    settings: dict[str, Any] = field(default_factory=dict)
    """Job settings sent with every Segment (the segment command's method options given explicitly)."""
    presets: bool = True
    input_path: str | None = None
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    export_folder: str = ""
    dicomweb_url: str | None = None
    """A DICOMweb root the page lists studies and series from (``--dicomweb``)."""
    pacs_token_file: str | None = None
    pacs_cache: str | None = None


def guarded(panel: PanelState, flush: Callable, action: Callable) -> Callable:
    """A control's handler: a problem the user can fix is a message in the page, a bug one line too (logged
    with its traceback on the server), never a stack trace in the page."""
    def run(*args):
        try:
            action(*args)
        except MedCLIPSAMError as exc:
            panel.message, panel.message_kind = str(exc).splitlines()[0], "error"
        except Exception as exc:  # noqa: BLE001 - shown, logged
            logging.exception("MedCLIP-SAM web action failed")
            panel.message, panel.message_kind = f"Unexpected error ({type(exc).__name__}: {exc}).", "error"
        flush()
    return run


class WebApp:
    def __init__(self, config: WebConfig, server=None):
        self.config = config
        self.server = server or get_server(client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.typed = TypedState(self.server.state, PanelState, namespace=NAMESPACE)
        panel = self.panel = self.typed.data
        self.workspace = Workspace(self.slicer_app)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.volume_logic = VolumePropertyLogic(self.server, self.slicer_app)
        self.layout_logic = LayoutButtonLogic(self.server, self.slicer_app)
        self.mpr_logic = MprInteractionButtonLogic(self.server, self.slicer_app)
        self.runs = SegmentLogic(panel, self.workspace, config.engine, config.settings, config.presets, self.flush,
                                 self._applied, self._busy_correcting)
        self.corrections = CorrectionLogic(panel, self.workspace, config.engine, self.flush,
                                           lambda: self.runs.running, self._segments_changed)
        self.review = ReviewLogic(panel, self.workspace, self._show_case)
        self._uploads: list[dict] = []
        self.upload_store = UploadStore()  # an uploaded DICOM series stays while on screen: Export's SEG refers to it
        self._history: list[tuple[str, Any]] = []
        """("run", RunRecord) and ("correction", Correction): Undo takes back the newest first."""
        g = lambda action: guarded(panel, self.flush, action)  # noqa: E731
        self.pacs = (PacsLogic(panel, config.dicomweb_url, config.pacs_token_file, config.pacs_cache,
                               self.load_path) if config.dicomweb_url else None)
        pacs_actions = {} if self.pacs is None else dict(
            pacs_refresh=g(self.pacs.refresh), pacs_select_study=g(self.pacs.select_study),
            pacs_open=g(self.pacs.open_series))
        actions = Actions(
            segment=g(self.runs.segment), cancel=g(self.runs.cancel), undo=g(self.undo),
            restart_engine=g(self.restart_engine), add_preset=g(self.add_preset),
            upload_chunk=self.upload_chunk, upload_refused=g(self.upload_refused),
            propagate=g(self.corrections.propagate), export=g(self.export), export_dataset=g(self.export_dataset),
            open_review=g(lambda: self.review.open(panel.review_folder)), open_case=g(self.review.open_case),
            next_case=g(self.review.next_case), accept_case=g(self.review.accept),
            exclude_case=g(self.review.exclude), select_segment=g(self.select_segment), **pacs_actions)
        self.ui = PageUI(self.server, self.typed, actions, self.layout_logic.layout_manager, config.max_upload_mb)
        self.editor_logic.set_ui(self.ui.tool_registry[SegmentEditorUI])
        self.volume_logic.set_ui(self.ui.tool_registry[VolumePropertyUI])
        self.layout_logic.set_ui(self.ui.layout_button)
        self.mpr_logic.set_ui(self.ui.mpr_interaction_button)
        self.slice_input = SliceInput(self.slicer_app.view_manager.get_slice_views(), lambda: panel.tool,
                                      g(self.corrections.box), g(self.corrections.click))
        panel.presets = sorted(load_presets())
        panel.export_folder = config.export_folder
        self.typed.bind_changes({self.typed.name.show_saliency: lambda *_: self._show_overlay()})
        self.server.state["trame__title"] = "MedCLIP-SAM"
        if config.input_path:
            self.load_path(config.input_path)
        if self.pacs is not None:
            guarded(panel, lambda: None, self.pacs.refresh)()  # an unreachable server: a line in the page

    # ---- state
    def flush(self) -> None:
        self.server.state.flush()

    def _busy_correcting(self) -> str | None:
        return "Wait for the correction being computed, then press Segment." if self.corrections.busy else None

    # ---- loading
    def load_path(self, path: str | Path, name: str | None = None) -> None:
        self.corrections.close()
        self.workspace.clear()
        node, volume = read_source_into_scene(self.workspace.scene, path, name=name)
        self.workspace.source = volume if volume.dicom_files else None
        self.upload_store.keep(None)  # no uploaded volume is on screen any more
        self._show_volume(node)

    def upload_refused(self, size: int) -> None:
        raise InputError(too_large(int(size), self.config.max_upload_mb) or "The upload was refused.")

    def upload_chunk(self, files: list[dict]) -> None:
        """trame-slicer's chunk loader: chunks of files, then an empty list at the end."""
        if files:
            self._uploads.extend(files)
            return
        uploads, self._uploads = self._uploads, []
        if uploads:
            guarded(self.panel, self.flush, self._load_uploads)(uploads)

    def _load_uploads(self, uploads: list[dict]) -> None:
        if self.runs.running:
            raise InputError("A segmentation is running: press Cancel before loading another volume.")
        folder = self.upload_store.new_folder()
        try:
            volume, source = read_uploads_into(self.workspace.scene, uploads, self.config.max_upload_mb, folder)
        except BaseException:
            self.upload_store.discard(folder)
            raise
        scene_volume = volume
        self.corrections.close()
        for node in list(self.workspace.scene.GetNodesByClass("vtkMRMLScalarVolumeNode")):
            if node is not scene_volume:
                self.workspace.scene.RemoveNode(node)
        for node in list(self.workspace.scene.GetNodesByClass("vtkMRMLSegmentationNode")):
            self.workspace.scene.RemoveNode(node)
        self.workspace.notes, self.workspace.drafts = {}, {}
        self.workspace.source = source if source.dicom_files else None  # a DICOM upload: Export writes a SEG
        self.upload_store.keep(folder if source.dicom_files else None)
        self._show_volume(volume)

    def _show_volume(self, volume, segmentation_node=None) -> None:
        self.workspace.volume_node = volume
        self._history.clear()
        self._display(volume)
        if segmentation_node is None:
            self.editor_logic.on_volume_changed(volume)
        else:
            self.slicer_app.segmentation_editor.set_active_segmentation(segmentation_node, volume)
        self.volume_logic.on_volume_changed(volume)
        layout = self.ui.layout.typed_state.data
        layout.is_volume_loaded, layout.is_drawer_visible, layout.active_tool = True, True, PANEL_TOOL
        self.panel.volume_name = volume.GetName()
        self.panel.has_saliency = False
        self._segments_changed()
        self.panel.message, self.panel.message_kind = f"Loaded '{volume.GetName()}'.", "info"

    def _display(self, volume) -> None:
        """The volume in every slice view and, as in Slicer by default, the slice planes in the 3D view; no volume
        rendering: on a CPU it re-renders the 3D view for every segment change, ~1 s per correction (measured)."""
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(volume)
        display.show_volume_in_slice_foreground(None)
        display.set_node_visible_in_group(volume)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_visible_in_3d(True)
        display.reset_views()

    def _show_case(self, loaded) -> None:
        scene = self.workspace.scene
        self.corrections.close()
        self.workspace.source = None
        self.upload_store.keep(None)
        self._show_volume(scene.GetNodeByID(loaded.volume_node_id), scene.GetNodeByID(loaded.segmentation_node_id))
        overlay = scene.GetNodeByID(loaded.overlay_node_id) if loaded.overlay_node_id else None
        self.slicer_app.display_manager.show_volume_in_slice_foreground(overlay)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_foreground_opacity(SALIENCY_OPACITY)
        self.panel.selected_segment = loaded.segment_id

    # ---- results, overlay, segments
    def _applied(self, run) -> None:
        self._history.append(("run", run.record))
        self._overlay_id = run.record.created_node_ids[0] if run.record.created_node_ids else None
        self.panel.has_saliency = self._overlay_id is not None
        self._show_overlay()
        self.workspace.remember_drafts(run.record.segment_ids)
        if run.record.segment_ids:
            self.panel.selected_segment = run.record.segment_ids[-1]
        self._segments_changed()

    def _show_overlay(self) -> None:
        overlay_id = getattr(self, "_overlay_id", None)
        overlay = self.workspace.scene.GetNodeByID(overlay_id) if overlay_id else None
        shown = overlay if (overlay is not None and self.panel.show_saliency) else None
        self.slicer_app.display_manager.show_volume_in_slice_foreground(shown)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_foreground_opacity(SALIENCY_OPACITY)

    def _segments_changed(self) -> None:
        self.slicer_app.segmentation_editor.trigger_all_signals()
        self.panel.segments = self.workspace.rows()
        ids = self.workspace.segment_ids()
        if self.panel.selected_segment not in ids:
            self.panel.selected_segment = ids[-1] if ids else ""
        self.panel.can_undo = bool(self._history) or self.corrections.can_undo()
        if self.corrections.correction is not None and ("correction", self.corrections.correction) not in \
                self._history and self.corrections.can_undo():
            self._history.append(("correction", self.corrections.correction))

    def select_segment(self, segment_id: str) -> None:
        if segment_id in self.workspace.segment_ids():
            self.panel.selected_segment = segment_id
            self.slicer_app.segmentation_editor.set_active_segment_id(segment_id)

    def add_preset(self, preset) -> None:
        if not preset:
            return
        prompts = split_prompts(self.panel.prompt or "")
        if preset not in prompts:
            prompts.append(preset)
        self.panel.prompt = "\n".join(prompts)

    # ---- undo: the newest run or correction first
    def undo(self) -> None:
        if self.runs.running:
            raise InputError("A segmentation is running: press Cancel to stop it instead.")
        while self._history:
            kind, item = self._history[-1]
            if kind == "correction":
                if item is self.corrections.correction and self.corrections.undo():
                    if not self.corrections.can_undo():
                        self._history.pop()
                    return
                self._history.pop()
                continue
            blocker = item.undo_blocker()
            if blocker:
                raise InputError(blocker)
            self.corrections.close()
            item.undo()
            self._history.pop()
            self._overlay_id = None
            self.panel.has_saliency = False
            self._show_overlay()
            self._segments_changed()
            self.panel.message, self.panel.message_kind = "The last run was undone.", "info"
            return
        raise InputError("Nothing to undo.")

    # ---- engine
    def restart_engine(self) -> None:
        if self.runs.running:
            self.runs.cancel()
        self.corrections.close()
        self.config.engine.restart()
        self.panel.engine_gone = False
        self.panel.message, self.panel.message_kind = "The engine is starting again (loading its models).", "info"

    # ---- export
    def export(self) -> None:
        paths = export_segmentation(self.workspace, self.panel.export_folder)
        self.panel.exported = [str(p) for p in paths] + list(self.panel.exported or [])
        note = "" if self.workspace.source is not None else (
            " No DICOM SEG: the volume was not loaded from DICOM (a folder, an upload or the PACS), so a SEG has no images to "
            "refer to.")
        self.panel.message, self.panel.message_kind = f"Saved {', '.join(p.name for p in paths)}.{note}", "success"

    def export_dataset(self) -> None:
        image, label = export_to_dataset(self.workspace, self.panel.selected_segment, self.panel.dataset_folder, 1,
                                         self.panel.dataset_name or "MedCLIPSAM")
        self.panel.exported = [str(image), str(label)] + list(self.panel.exported or [])
        self.panel.message, self.panel.message_kind = f"Added case {label.name} to the nnU-Net dataset.", "success"

    # ---- serving
    def start(self, host: str, port: int, on_ready: Callable[[int], None]) -> None:
        self.config.engine.get()  # the local engine loads its models while the page opens

        @self.server.controller.add("on_server_ready")
        def _ready(**kwargs):
            on_ready(self.server.port)

        try:
            self.server.start(host=host, port=port, open_browser=False, show_connection_info=False,
                              disable_logging=True)
        finally:
            self.corrections.close()
            self.config.engine.stop()
