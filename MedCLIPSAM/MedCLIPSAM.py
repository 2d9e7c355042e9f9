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
REVIEW_DATASET_KEY, REVIEW_PREDICTIONS_KEY = "MedCLIPSAM/reviewDataset", "MedCLIPSAM/reviewPredictions"
ENGINE_MODES = ["This computer", "Server"]
SAM_MODELS = ["auto", "litemedsam", "vit_b", "vit_l", "vit_h"]
SCOPES = ["Whole volume", "Current slice", "Slice range"]
POLL_MS = 250
UPLOAD_TICK_MS = 10


class MedCLIPSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedCLIP-SAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedCLIP-SAM developers"]
        self.parent.helpText = (
            "Type what to segment (for example <i>brain tumor</i>) and click Segment. BiomedCLIP with M2IB "
            "saliency finds the target slice by slice, its salient regions become box prompts, and SAM turns "
            "them into an editable segment. The work runs in a separate engine process on this computer or on "
            "a GPU server. See <a href='https://github.com/medclipsam/SlicerMedCLIPSAM'>the documentation</a>.")
        if not SUPPORTED:
            self.parent.helpText = UNSUPPORTED_TEXT
        self.parent.acknowledgementText = (
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
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    bottleneckLayer: Annotated[int, WithinRange(0, 10)] = 9
    beta: Annotated[float, WithinRange(0.0, 10.0)] = 1.0
    maxComponents: Annotated[int, WithinRange(1, 10)] = 1
    promptMode: Annotated[str, Choice(["boxes", "box_all", "points"])] = "boxes"
    refineRounds: Annotated[int, WithinRange(0, 2)] = 2
    fastSaliency: bool = False
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
        self.ui.loadPredictionButton.connect("clicked(bool)", self.onLoadPrediction)
        self.ui.stopEngineButton.connect("clicked(bool)", self.onStopEngine)
        self.ui.openReviewButton.connect("clicked(bool)", self.onOpenReview)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)
        self.ui.acceptCaseButton.connect("clicked(bool)", self.onAcceptCase)
        self.ui.excludeCaseButton.connect("clicked(bool)", self.onExcludeCase)
        self.ui.undoExcludeButton.connect("clicked(bool)", self.onUndoExclude)
        self.ui.reviewQueueList.itemDoubleClicked.connect(self.onReviewItemActivated)
        self._setupEngineSection()
        self.ui.progressBar.hide()

        self._timer = qt.QTimer(uiWidget)
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self._onTick)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.onPromptChanged(self.ui.promptComboBox.currentText)

    def cleanup(self) -> None:
        """Module reload or application exit: stop polling, the run and the engine this session started.

        Each step runs even if an earlier one fails, so Slicer always quits promptly."""
        steps = [lambda: self._timer.stop() if self._timer is not None else None,
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
        self.logic.cancel()
        self.logic.lastRun = None  # node IDs are reused after a scene close: undo must not touch new nodes
        if self.logic.review is not None:
            self.logic.review.forget_nodes()
        self._finishRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
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
        self.ui.segmentButton.text = "Cancel" if busy else "Segment"
        self.ui.segmentButton.toolTip = "Stop the running segmentation" if busy else (
            "Segment the prompt in the input volume" if ready else "Select an input volume first")
        rangeScope = bool(self._parameterNode and self._parameterNode.scope == "Slice range")
        self.ui.firstSliceSpinBox.enabled = self.ui.lastSliceSpinBox.enabled = rangeScope
        self.ui.undoButton.enabled = self.logic.lastRun is not None and not busy
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
        self.ui.serverTokenLineEdit.text = settings.value(SERVER_TOKEN_KEY) or ""
        self.ui.engineModeComboBox.connect("currentTextChanged(QString)", self._onEngineChoiceChanged)
        self.ui.serverUrlLineEdit.connect("editingFinished()", self._onEngineChoiceChanged)
        self.ui.serverTokenLineEdit.connect("editingFinished()", self._onEngineChoiceChanged)
        self._onEngineChoiceChanged()

    def _onEngineChoiceChanged(self, *args) -> None:
        remote = self.ui.engineModeComboBox.currentText == "Server"
        settings = qt.QSettings()
        settings.setValue(ENGINE_MODE_KEY, self.ui.engineModeComboBox.currentText)
        settings.setValue(SERVER_URL_KEY, self.ui.serverUrlLineEdit.text.strip())
        settings.setValue(SERVER_TOKEN_KEY, self.ui.serverTokenLineEdit.text.strip())
        for widget in (self.ui.serverUrlLineEdit, self.ui.serverTokenLineEdit):
            widget.enabled = remote
        self.ui.deviceComboBox.enabled = not remote
        self.ui.deviceComboBox.toolTip = ("The server chose its device when it started." if remote else
                                          "auto: the GPU when PyTorch sees one, else the CPU.")

    def _engine(self):
        from MedCLIPSAMLib.slicer.panel import local_engine_args

        if self.ui.engineModeComboBox.currentText == "Server":
            return self.logic.engine("remote", url=self.ui.serverUrlLineEdit.text,
                                     token=self.ui.serverTokenLineEdit.text)
        if not self.logic.ensureDependencies():
            return None
        return self.logic.engine("local", localArgs=local_engine_args(self._parameterNode))

    def onStopEngine(self) -> None:
        self.logic.cancel()
        self.logic.stopEngine()
        self.ui.statusLabel.text = "The engine on this computer was stopped; it starts again on the next Segment."
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
            self.logic.cancel()
            self.ui.statusLabel.text = "Cancelled; the engine stops after its current batch. Nothing was changed."
            self._finishRun()
            return
        prompt = self.ui.promptComboBox.currentText.strip()
        if not prompt:
            slicer.util.errorDisplay("Type what to segment, for example 'brain tumor'.")
            return
        p = self._parameterNode
        try:
            from MedCLIPSAMLib.slicer.panel import run_settings

            settings = run_settings(p, self._currentSliceScope())
            engine = self._engine()
            if engine is None:
                return
            self.logic.start(engine, p.inputVolume, [prompt], settings, p.outputSegmentation, p.showSaliency)
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
        """(axis, index) of the Red view's slice in the input volume, for the 'Current slice' scope."""
        if self._parameterNode.scope != "Current slice" or not self._parameterNode.inputVolume:
            return None
        from MedCLIPSAMLib.slicer.run import view_slice

        layoutManager = slicer.app.layoutManager()
        sliceWidget = layoutManager.sliceWidget("Red") if layoutManager is not None else None
        if sliceWidget is None:
            return None
        return view_slice(self._parameterNode.inputVolume, sliceWidget.mrmlSliceNode().GetSliceToRAS())

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
            self.logic.lastRun = run.record
            timings = ", ".join(f"{k} {v:.1f} s" for k, v in run.result.timings.items())
            notes = " ".join(m for m in run.result.messages if m not in run.warnings)
            self.ui.statusLabel.text = f"Done: {timings}. {notes}".strip()
            if run.warnings:  # the saliency barely depends on the prompt: say so first, where it is seen
                self.ui.statusLabel.text = f"Check the result: {' '.join(run.warnings)} {self.ui.statusLabel.text}"
                self.ui.statusLabel.styleSheet = "color: #c05000; font-weight: bold"
            if self._parameterNode:
                self._parameterNode.outputSegmentation = slicer.mrmlScene.GetNodeByID(run.record.segmentation_node_id)
            if run.record.created_node_ids and run.show_saliency:
                opacity = self._parameterNode.saliencyOpacity if self._parameterNode else 0.4
                slicer.util.setSliceViewerLayers(foreground=run.record.created_node_ids[0], foregroundOpacity=opacity)
        elif run.state == FAILED:
            self.ui.statusLabel.text = run.error.splitlines()[0] if run.error else "Failed."
            slicer.util.errorDisplay(run.error or "The segmentation failed.")

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

    def onUndoButton(self) -> None:
        self.logic.undoLastRun()
        self.ui.statusLabel.text = "The last run was undone."
        self._checkCanApply()

    # --- training set and predictions ----------------------------------------------------------------------

    def onAddToTrainingSet(self) -> None:
        """Export the input volume and the current (edited) segment as one nnU-Net case."""
        from MedCLIPSAMLib.slicer.panel import path_or_none

        p = self._parameterNode
        segmentationNode = p.outputSegmentation
        if not (p.inputVolume and segmentationNode and path_or_none(p.nnunetRawFolder)):
            slicer.util.errorDisplay("Choose the input volume, the output segmentation and the nnU-Net raw folder.")
            return
        if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            slicer.util.errorDisplay(f"'{segmentationNode.GetName()}' has no segment to export.")
            return
        segmentId = self._selectedSegmentId(segmentationNode)
        try:
            imagePath, _ = self.logic.addToTrainingSet(p, segmentationNode, segmentId)
            self.ui.statusLabel.text = f"Added {imagePath.name} to the training set."
        except Exception as exc:
            slicer.util.errorDisplay(str(exc))

    @staticmethod
    def _selectedSegmentId(segmentationNode) -> str:
        """The segment selected in the Segment Editor, else the last segment."""
        editorNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentEditorNode")
        selected = editorNode.GetSelectedSegmentID() if editorNode else ""
        segmentation = segmentationNode.GetSegmentation()
        if selected and segmentation.GetSegment(selected):
            return selected
        return segmentation.GetNthSegmentID(segmentation.GetNumberOfSegments() - 1)

    def onLoadPrediction(self) -> None:
        p = self._parameterNode
        try:
            record = self.logic.loadPrediction(p)
        except Exception as exc:
            slicer.util.errorDisplay(str(exc))
            return
        if record.created_node_ids:
            slicer.util.setSliceViewerLayers(foreground=record.created_node_ids[0], foregroundOpacity=p.saliencyOpacity)
        self.ui.statusLabel.text = "Loaded the nnU-Net prediction and its uncertainty map."
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
            slicer.util.errorDisplay("Choose the dataset folder that 'medclipsam label' wrote.")
            return

        def openDataset():
            session = self.logic.openReview(dataset, predictions)
            settings = qt.QSettings()
            settings.setValue(REVIEW_DATASET_KEY, dataset)
            settings.setValue(REVIEW_PREDICTIONS_KEY, predictions or "")
            return session.summary()

        self._review(openDataset)

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
            return "Every case is reviewed. " + self.logic.review.summary()
        show_case(slicer.mrmlScene, loaded, self._parameterNode.saliencyOpacity)
        return (f"{loaded.case}: edit '{self.logic.review.dataset.label_name}' in the Segment Editor, then Accept "
                f"(or Exclude). {loaded.note}").strip()

    def onNextCase(self) -> None:
        self._review(lambda: self._showReviewCase(self.logic.review.next_case()))

    def onReviewItemActivated(self, item) -> None:
        case = self._selectedReviewCase()
        if case is not None:
            self._review(lambda: self._showReviewCase(self.logic.review.load(case)))

    def onAcceptCase(self) -> None:
        def accept():
            entry = self.logic.review.accept()
            return (f"Accepted {self.logic.review.current.case}: DSC {entry['dsc']:.3f} against the pseudo-label, "
                    f"{entry['changed_voxels']} voxels changed. Next case when ready.")

        self._review(accept)

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
                                 "Excluded {case} from the training set (kept in medclipsam_review/excluded).")

    def onUndoExclude(self) -> None:
        self._reviewTargetAction(lambda review, case: review.undo_exclude(case), "{case} is back in the training set.")

    def onDownloadModels(self) -> None:
        model = self._parameterNode.samModel
        keys = ["biomedclip"] + ([model] if model in ("vit_b", "vit_l", "vit_h") else [])
        self.logic.downloadModels(keys)


class MedCLIPSAMLogic(ScriptedLoadableModuleLogic):
    """Engine process, the current run, and the Qt-free glue; no torch in this process."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from MedCLIPSAMLib.slicer.engine_process import EngineChoice

        self.engines = EngineChoice(self.pythonExecutable)
        self.run = None
        self.lastRun = None
        self.review = None

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

    def ensureDependencies(self, ask: bool = True) -> bool:
        """Install what the local engine needs into Slicer's Python, asking once; never replaces Slicer's own
        numpy/SimpleITK/VTK. Checks with importlib (nothing is imported here)."""
        import importlib
        import subprocess
        from MedCLIPSAMLib.dependencies import missing_requirements, torch_missing, write_constraints

        missing, needTorch = missing_requirements(), torch_missing()
        if not missing and not needTorch:
            return True
        listing = "\n".join((["PyTorch (through the PyTorch extension)"] if needTorch else []) + missing)
        if ask and not slicer.util.confirmOkCancelDisplay(
                f"The MedCLIP-SAM engine needs these Python packages in Slicer's Python:\n\n{listing}\n\n"
                "Install them now? (Or choose Engine: Server to use a server that has them.)"):
            return False
        try:
            if needTorch:
                try:
                    import PyTorchUtils
                except ImportError:
                    slicer.util.errorDisplay("Install the PyTorch extension from the Extensions Manager, restart "
                                             "Slicer, and click Segment again.")
                    return False
                # installTorch returns the torch module (it imports torch once, in the PyTorch extension's code)
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                    slicer.util.errorDisplay("PyTorch was not installed; MedCLIP-SAM cannot run on this computer.")
                    return False
            if missing:
                constraints = write_constraints(Path(tempfile.gettempdir()))
                # Slicer 5.10: pip_install takes a list of pip arguments and raises CalledProcessError on failure.
                slicer.util.pip_install(missing + ["-c", str(constraints)])
        except subprocess.CalledProcessError as exc:
            slicer.util.errorDisplay(f"Installing the packages failed (pip exit code {exc.returncode}); the Python "
                                     "console shows pip's output. Check the internet connection and try again.")
            return False
        except Exception as exc:
            slicer.util.errorDisplay(f"Installing the packages failed: {exc or type(exc).__name__}")
            return False
        importlib.invalidate_caches()
        return not missing_requirements() and not torch_missing()

    def downloadModels(self, keys) -> None:
        """Download catalog models into the per-user cache with a cancellable progress dialog."""
        import threading
        from MedCLIPSAMLib.models.catalog import ensure_model

        dialog = qt.QProgressDialog("Downloading models...", "Cancel", 0, 100, slicer.util.mainWindow())
        dialog.setWindowModality(qt.Qt.WindowModal)
        cancel = threading.Event()
        dialog.canceled.connect(cancel.set)

        def progress(stage, done, total):
            dialog.setLabelText(f"{stage}: {done / 1e6:.0f} of {total / 1e6:.0f} MB")
            dialog.setValue(int(100 * done / total) if total else 0)
            slicer.app.processEvents()

        try:
            for key in keys:
                ensure_model(key, progress, cancel)
        except Exception as exc:
            slicer.util.errorDisplay(str(exc))
        finally:
            dialog.close()
            dialog.deleteLater()

    # --- engine and runs -----------------------------------------------------------------------------------

    def engine(self, mode: str, localArgs=(), url: str = "", token: str = ""):
        return self.engines.get(mode, localArgs, url, token)

    def stopEngine(self) -> None:
        self.engines.stop()

    def isRunning(self) -> bool:
        return self.run is not None and not self.run.finished

    def start(self, engine, volumeNode, prompts, settings, segmentationNode=None, showSaliency=True):
        """A new run (the previous one, if any, is cancelled and can never apply its result)."""
        from MedCLIPSAMLib.slicer.run import SegmentRun

        if volumeNode is None:
            raise ValueError("Select an input volume first.")
        self.cancel()
        self.run = SegmentRun(engine, slicer.mrmlScene, volumeNode, prompts, settings, segmentationNode, showSaliency)
        return self.run

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

    def loadPrediction(self, p):
        from MedCLIPSAMLib.slicer.mrml import load_prediction
        from MedCLIPSAMLib.slicer.panel import path_or_none

        mask = path_or_none(p.predictionMaskPath)
        if not (p.inputVolume and mask):
            raise ValueError("Choose the input volume and the predicted mask file.")
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

    def undoLastRun(self) -> None:
        if self.lastRun is not None:
            self.lastRun.undo()
            self.lastRun = None


class MedCLIPSAMTest(ScriptedLoadableModuleTest):
    """Offline self-test: synthetic volume, an engine process with a tiny random CLIP and real LiteMedSAM."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
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
        array = np.stack([disk * 800 + 50 for _ in range(5)])
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
