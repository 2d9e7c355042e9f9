"""MedCLIP-SAM: text-prompted segmentation in 3D Slicer (Module, Widget, Logic, Test).

The widget only gathers choices and shows progress. The engine (``MedCLIPSAMLib``) does
the work in a worker thread; all MRML changes happen on the main thread through
``MedCLIPSAMLib.mrml`` in one all-or-nothing step, which is tested outside Slicer.
"""
import logging
import os
import queue
import sys
import tempfile
import threading
import time
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


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
SAM_MODELS = ["auto", "litemedsam", "vit_b", "vit_l", "vit_h"]
SCOPES = ["Whole volume", "Current slice", "Slice range"]


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
            "them into an editable segment. Edit it with the Segment Editor. "
            "See <a href='https://github.com/medclipsam/SlicerMedCLIPSAM'>the documentation</a>.")
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
    clipModelPath: str = ""
    samCheckpointPath: str = ""
    nnunetRawFolder: str = ""
    datasetId: Annotated[int, WithinRange(1, 999)] = 501
    datasetName: str = "MedCLIPSAM"
    predictionMaskPath: str = ""
    predictionEntropyPath: str = ""


class MedCLIPSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedCLIPSAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedCLIPSAMLogic()

        self.ui.promptComboBox.addItems(self._recentPrompts() + [p for p in PROMPT_PRESETS
                                                                 if p not in self._recentPrompts()])
        self.ui.promptComboBox.lineEdit().returnPressed.connect(self.onSegmentButton)
        self.ui.promptComboBox.connect("currentTextChanged(QString)", self.onPromptChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.downloadModelsButton.connect("clicked(bool)", self.onDownloadModels)
        self.ui.saliencyOpacitySlider.connect("valueChanged(double)", self.onSaliencyOpacity)
        self.ui.addToTrainingSetButton.connect("clicked(bool)", self.onAddToTrainingSet)
        self.ui.loadPredictionButton.connect("clicked(bool)", self.onLoadPrediction)
        self.ui.progressBar.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None:
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
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

    def setParameterNode(self, inputParameterNode: Optional[MedCLIPSAMParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
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
        rangeScope = self._parameterNode and self._parameterNode.scope == "Slice range"
        self.ui.firstSliceSpinBox.enabled = self.ui.lastSliceSpinBox.enabled = bool(rangeScope)
        self.ui.undoButton.enabled = self.logic.lastRun is not None and not busy

    # --- actions -------------------------------------------------------------------------------

    def _recentPrompts(self) -> list:
        return [p for p in (qt.QSettings().value(RECENT_PROMPTS_KEY) or []) if p]

    def _rememberPrompt(self, prompt: str) -> None:
        recent = [prompt] + [p for p in self._recentPrompts() if p != prompt]
        qt.QSettings().setValue(RECENT_PROMPTS_KEY, recent[:10])

    def onPromptChanged(self, text: str) -> None:
        """Show a preset's method settings in the Advanced section, so what is shown is what runs."""
        from MedCLIPSAMLib.presets import load_presets

        preset = load_presets().get(text.strip().lower())
        if preset is None or not self._parameterNode:
            return
        fields = {"bottleneck_layer": "bottleneckLayer", "beta": "beta", "max_components": "maxComponents",
                  "prompt_mode": "promptMode"}
        for key, name in fields.items():
            if key in preset:
                setattr(self._parameterNode, name, preset[key])

    def onSegmentButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
            self.ui.statusLabel.text = "Cancelling after the current batch..."
            return
        prompt = self.ui.promptComboBox.currentText.strip()
        if not prompt:
            slicer.util.errorDisplay("Type what to segment, for example 'brain tumor'.")
            return
        if not self.logic.ensureDependencies():
            return
        p = self._parameterNode
        try:
            settings = self.logic.settingsFromParameters(p, prompt, self._currentSliceScope())
        except Exception as exc:  # MedCLIPSAMError: a message for the user
            slicer.util.errorDisplay(str(exc))
            return
        self._rememberPrompt(prompt)
        self.ui.progressBar.show()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting..."
        self.logic.start(p.inputVolume, [prompt], settings, p.outputSegmentation, p.showSaliency,
                         onProgress=self._onProgress, onDone=self._onDone)
        self._checkCanApply()

    def _currentSliceScope(self):
        """(axis, index) of the Red view's slice in the input volume, for the 'Current slice' scope."""
        if self._parameterNode.scope != "Current slice":
            return None
        from MedCLIPSAMLib.slicer_run import view_slice
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        return view_slice(self._parameterNode.inputVolume, sliceNode.GetSliceToRAS())

    def _onProgress(self, stage: str, done: int, total: int) -> None:
        self.ui.progressBar.maximum = max(total, 1)
        self.ui.progressBar.value = done
        self.ui.progressBar.format = f"{stage}: {done}/{total}"
        self.ui.statusLabel.text = f"{stage} ({done} of {total})"

    def _onDone(self, record, result, error) -> None:
        self.ui.progressBar.hide()
        if error is not None:
            self.ui.statusLabel.text = str(error).splitlines()[0]
            if not self.logic.wasCancelled:
                slicer.util.errorDisplay(str(error))
        else:
            timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
            notes = " ".join(result.messages)
            self.ui.statusLabel.text = f"Done: {timings}. {notes}".strip()
            self._parameterNode.outputSegmentation = slicer.mrmlScene.GetNodeByID(record.segmentation_node_id)
            if record.created_node_ids and self._parameterNode.showSaliency:
                slicer.util.setSliceViewerLayers(foreground=record.created_node_ids[0],
                                                 foregroundOpacity=self._parameterNode.saliencyOpacity)
        self._checkCanApply()

    def onSaliencyOpacity(self, value: float) -> None:
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            composite.SetForegroundOpacity(value)

    def onUndoButton(self) -> None:
        self.logic.undoLastRun()
        self.ui.statusLabel.text = "The last run was undone."
        self._checkCanApply()

    def onAddToTrainingSet(self) -> None:
        """Export the input volume and the current (edited) segment as one nnU-Net case."""
        p = self._parameterNode
        segmentationNode = p.outputSegmentation
        if not (p.inputVolume and segmentationNode and p.nnunetRawFolder):
            slicer.util.errorDisplay("Choose the input volume, the output segmentation and the nnU-Net raw folder.")
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

    def onDownloadModels(self) -> None:
        model = self._parameterNode.samModel
        keys = ["biomedclip"] + ([model] if model in ("vit_b", "vit_l", "vit_h") else [])
        self.logic.downloadModels(keys)


class MedCLIPSAMLogic(ScriptedLoadableModuleLogic):
    """Runs the engine off the main thread and applies results on it; keeps models loaded."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._worker = None
        self._cancel = threading.Event()
        self._messages = queue.Queue()
        self._timer = None
        self.lastRun = None
        self.wasCancelled = False

    def getParameterNode(self):
        return MedCLIPSAMParameterNode(super().getParameterNode())

    # --- settings and dependencies ---------------------------------------------------------------

    @staticmethod
    def settingsFromParameters(p, prompt: str, sliceScope=None):
        """Engine settings: the prompt's preset (e.g. its CT window), then what the panel shows."""
        from MedCLIPSAMLib.presets import apply_preset
        from MedCLIPSAMLib.settings import BIOMEDCLIP_HUB_ID, FAST_SALIENCY, Settings

        settings, _ = apply_preset(Settings(), prompt)
        changes = dict(bottleneck_layer=p.bottleneckLayer, beta=p.beta, max_components=p.maxComponents,
                       prompt_mode=p.promptMode, refine_rounds=p.refineRounds, sam_backend=p.samModel,
                       device=p.device, clip_model=BIOMEDCLIP_HUB_ID, sam_checkpoint=None)
        if p.fastSaliency:
            changes.update(FAST_SALIENCY)
        if p.useLocalModels:
            changes["clip_model"] = p.clipModelPath or BIOMEDCLIP_HUB_ID
            changes["sam_checkpoint"] = p.samCheckpointPath or None
        if p.scope == "Slice range":
            changes["axis"], changes["slice_range"] = 0, (min(p.firstSlice, p.lastSlice), max(p.firstSlice, p.lastSlice))
        elif p.scope == "Current slice" and sliceScope is not None:
            changes["axis"], changes["slice_range"] = sliceScope[0], (sliceScope[1], sliceScope[1])
        return settings.replace(**changes)

    def ensureDependencies(self, ask: bool = True) -> bool:
        """Install what is missing, asking once; never lets pip replace Slicer's own packages."""
        from MedCLIPSAMLib.dependencies import missing_requirements, torch_missing, write_constraints

        missing = missing_requirements()
        needTorch = torch_missing()
        if not missing and not needTorch:
            return True
        listing = "\n".join((["PyTorch (through the PyTorch extension)"] if needTorch else []) + missing)
        if ask and not slicer.util.confirmOkCancelDisplay(
                f"MedCLIP-SAM needs these Python packages, which will be installed now:\n\n{listing}"):
            return False
        if needTorch:
            try:
                import PyTorchUtils
            except ImportError:
                slicer.util.errorDisplay("Install the PyTorch extension from the Extensions Manager first.")
                return False
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                return False
        if missing:
            constraints = write_constraints(__import__("pathlib").Path(tempfile.gettempdir()))
            packaging = getattr(slicer, "packaging", None)
            if packaging is not None and hasattr(packaging, "pip_ensure"):
                packaging.pip_ensure(missing, requester="MedCLIP-SAM", constraints=str(constraints))
            else:
                slicer.util.pip_install(" ".join(f'"{r}"' for r in missing) + f' -c "{constraints}"')
        return not missing_requirements() and not torch_missing()

    def downloadModels(self, keys) -> None:
        """Download catalog models into the per-user cache with a cancellable progress dialog."""
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

    # --- running ---------------------------------------------------------------------------------

    def isRunning(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def cancel(self) -> None:
        if self.isRunning():
            self.wasCancelled = True
            self._cancel.set()

    def start(self, volumeNode, prompts, settings, segmentationNode=None, showSaliency=True,
              onProgress=None, onDone=None) -> None:
        """Read the volume here, compute in a worker thread, apply here when it finishes."""
        from MedCLIPSAMLib.slicer_run import Request, apply, compute, read_input

        request = Request(prompts=list(prompts), settings=settings, show_saliency=showSaliency)
        volume = read_input(volumeNode)
        self._cancel = threading.Event()
        self.wasCancelled = False
        messages = self._messages = queue.Queue()

        def work():
            try:
                result = compute(volume, request, lambda *a: messages.put(("progress", a)), self._cancel)
                messages.put(("done", result))
            except BaseException as exc:  # reported on the main thread
                messages.put(("error", exc))

        def poll():
            while True:
                try:
                    kind, payload = messages.get_nowait()
                except queue.Empty:
                    return
                if kind == "progress" and onProgress:
                    onProgress(*payload)
                elif kind in ("done", "error"):
                    self._timer.stop()
                    record, result, error = None, None, None
                    if kind == "done":
                        result = payload
                        try:
                            record = apply(slicer.mrmlScene, volumeNode, result, request, segmentationNode)
                            self.lastRun = record
                        except Exception as exc:
                            error = exc
                    else:
                        error = payload
                        if not isinstance(error, Exception):
                            logging.error(f"MedCLIP-SAM stopped: {error!r}")
                    if onDone:
                        onDone(record, result, error)
                    return

        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(poll)
        self._worker = threading.Thread(target=work, name="MedCLIP-SAM", daemon=True)
        self._worker.start()
        self._timer.start()

    def process(self, volumeNode, prompts, settings, segmentationNode=None, showSaliency=True, pipeline=None):
        """Synchronous run for scripts and tests: returns the RunRecord."""
        from MedCLIPSAMLib.slicer_run import Request, apply, compute, read_input

        request = Request(prompts=list(prompts), settings=settings, show_saliency=showSaliency)
        result = compute(read_input(volumeNode), request, pipeline=pipeline)
        self.lastRun = apply(slicer.mrmlScene, volumeNode, result, request, segmentationNode)
        return self.lastRun

    def addToTrainingSet(self, p, segmentationNode, segmentId):
        from pathlib import Path
        from MedCLIPSAMLib.mrml import add_to_training_set
        from MedCLIPSAMLib.weak.export import dataset_dir, next_case_id

        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        folder = dataset_dir(Path(p.nnunetRawFolder), p.datasetId, p.datasetName)
        caseId = next_case_id(folder, p.datasetName)
        return add_to_training_set(p.inputVolume, segmentationNode, segmentId, folder, caseId, segment.GetName(),
                                   modality=p.inputVolume.GetAttribute("DICOM.Modality") or "MRI")

    def loadPrediction(self, p):
        from MedCLIPSAMLib.mrml import load_prediction

        if not (p.inputVolume and p.predictionMaskPath):
            raise ValueError("Choose the input volume and the predicted mask file.")
        self.lastRun = load_prediction(slicer.mrmlScene, p.inputVolume, p.predictionMaskPath,
                                       p.predictionEntropyPath or None, "nnU-Net", p.outputSegmentation)
        return self.lastRun

    def undoLastRun(self) -> None:
        if self.lastRun is not None:
            self.lastRun.undo()
            self.lastRun = None


class MedCLIPSAMTest(ScriptedLoadableModuleTest):
    """Offline self-test: synthetic volume, tiny random CLIP, real LiteMedSAM weights."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSyntheticVolume()

    def test_SegmentSyntheticVolume(self):
        import numpy as np
        from MedCLIPSAMLib.models.random_clip import make_random_clip
        from MedCLIPSAMLib.mrml import segment_to_array
        from MedCLIPSAMLib.pipeline import Pipeline
        from MedCLIPSAMLib.settings import Settings

        self.delayDisplay("Creating a synthetic volume")
        yy, xx = np.mgrid[:48, :64]
        disk = ((yy - 24) ** 2 + (xx - 30) ** 2 <= 81).astype(np.int16)
        array = np.stack([disk * 800 + 50 for _ in range(5)])
        volumeNode = slicer.util.addVolumeFromArray(array, name="synthetic")
        volumeNode.SetSpacing(0.7, 0.8, 2.5)

        self.delayDisplay("Running MedCLIP-SAM with a tiny random CLIP and LiteMedSAM")
        folder = tempfile.mkdtemp(prefix="medclipsam_test_")
        clip = make_random_clip(__import__("pathlib").Path(folder))
        settings = Settings(clip_model=folder, sam_backend="litemedsam", device="cpu", m2ib_steps=2, m2ib_samples=2)
        logic = MedCLIPSAMLogic()
        start = time.time()
        record = logic.process(volumeNode, ["brain tumor"], settings, pipeline=Pipeline(settings, clip=clip))
        segmentationNode = slicer.mrmlScene.GetNodeByID(record.segmentation_node_id)
        segment = segmentationNode.GetSegmentation().GetSegment(record.segment_ids[0])
        self.assertEqual(segment.GetName(), "brain tumor")
        exported = segment_to_array(segmentationNode, record.segment_ids[0], volumeNode)
        self.assertEqual(exported.shape, array.shape)
        saliencyNode = slicer.mrmlScene.GetNodeByID(record.created_node_ids[0])
        self.assertEqual(saliencyNode.GetSpacing(), volumeNode.GetSpacing())
        logic.undoLastRun()
        self.assertIsNone(slicer.mrmlScene.GetNodeByID(record.segmentation_node_id))
        self.delayDisplay(f"Test passed ({time.time() - start:.1f} s)")
