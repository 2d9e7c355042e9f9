"""The Slicer module without Slicer: .ui and widget code agree; CMake ships every file."""
import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "MedCLIPSAM" / "MedCLIPSAM.py"
UI = ROOT / "MedCLIPSAM" / "Resources" / "UI" / "MedCLIPSAM.ui"

EXPECTED_CLASSES = {
    "promptComboBox": "QComboBox", "segmentButton": "QPushButton", "undoButton": "QPushButton",
    "progressBar": "QProgressBar", "statusLabel": "QLabel", "saliencyOpacitySlider": "ctkSliderWidget",
    "downloadModelsButton": "QPushButton", "firstSliceSpinBox": "QSpinBox", "lastSliceSpinBox": "QSpinBox",
    "inputVolumeSelector": "qMRMLNodeComboBox", "outputSegmentationSelector": "qMRMLNodeComboBox",
    "clipModelPathLineEdit": "ctkPathLineEdit", "samCheckpointPathLineEdit": "ctkPathLineEdit",
    "engineModeComboBox": "QComboBox", "serverUrlLineEdit": "QLineEdit", "serverTokenLineEdit": "QLineEdit",
    "stopEngineButton": "QPushButton",
    "reviewDatasetPathLineEdit": "ctkPathLineEdit", "reviewPredictionsPathLineEdit": "ctkPathLineEdit",
    "openReviewButton": "QPushButton", "reviewQueueList": "QListWidget", "nextCaseButton": "QPushButton",
    "acceptCaseButton": "QPushButton", "excludeCaseButton": "QPushButton", "undoExcludeButton": "QPushButton",
    "reviewStatusLabel": "QLabel", "exportSegButton": "QPushButton",
}


@pytest.fixture(scope="module")
def ui_widgets():
    tree = ElementTree.parse(UI)
    return {w.get("name"): w for w in tree.iter("widget")}


def parameter_fields() -> dict[str, str]:
    """Field name -> annotation source of the parameter node class in the module."""
    tree = ast.parse(MODULE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedCLIPSAMParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_every_widget_the_code_uses_exists_with_the_right_class(ui_widgets):
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    assert used, "the widget code uses no .ui widget?"
    missing = sorted(used - set(ui_widgets))
    assert not missing, f"widgets used in MedCLIPSAM.py but absent from the .ui: {missing}"
    for name, cls in EXPECTED_CLASSES.items():
        assert ui_widgets[name].get("class") == cls, f"{name} should be a {cls}"
    assert ui_widgets["promptComboBox"].find("property[@name='editable']/bool").text == "true"


# Which parameter types each widget class can represent, by the connectors of Slicer's
# parameterNodeWrapper (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py, canRepresent; the same
# in 5.10.0 and main). Widget classes must match exactly; combo boxes need a Choice (or an Enum).
CONNECTOR_TYPES = {
    "QCheckBox": {"bool"}, "ctkCheckBox": {"bool"},
    "QSpinBox": {"int"}, "QSlider": {"int"},
    "QDoubleSpinBox": {"float", "int"}, "ctkSliderWidget": {"float", "int"}, "ctkDoubleSpinBox": {"float", "int"},
    "QComboBox": {"str+Choice", "int+Choice", "float+Choice", "bool+Choice"},
    "ctkComboBox": {"str+Choice", "int+Choice", "float+Choice", "bool+Choice"},
    "QLineEdit": {"str"}, "QLabel": {"str"}, "QTextEdit": {"str"},
    "ctkPathLineEdit": {"Path", "pathlib.Path"}, "ctkDirectoryButton": {"Path", "pathlib.Path"},
    "qMRMLNodeComboBox": {"vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"},
}


def connector_key(annotation: str) -> str:
    """'Annotated[str, Choice([...])]' -> 'str+Choice'; 'Annotated[int, WithinRange(0, 1)]' -> 'int'."""
    match = re.match(r"^Annotated\[([\w.]+),\s*(.*)\]$", annotation)
    if not match:
        return annotation
    base, extras = match.groups()
    return f"{base}+Choice" if extras.startswith("Choice(") else base


def test_parameter_node_fields_are_all_bound_to_widgets_slicer_can_connect(ui_widgets):
    bound = {}
    for name, widget in ui_widgets.items():
        prop = widget.find("property[@name='SlicerParameterName']/string")
        if prop is not None:
            bound[prop.text] = widget.get("class")
    fields = parameter_fields()
    assert set(bound) == set(fields), f"unbound: {set(fields) - set(bound)}, unknown: {set(bound) - set(fields)}"
    for field, annotation in fields.items():
        key = connector_key(annotation)
        assert key in CONNECTOR_TYPES[bound[field]], f"{field}: {annotation} cannot bind to a {bound[field]}"


def test_connector_rules_refuse_what_slicer_refuses():
    """The rules above are the ones that made setup() raise before: str paths, a combo without Choice."""
    assert "str" not in CONNECTOR_TYPES["ctkPathLineEdit"]
    assert connector_key("Annotated[str, Choice(['a'])]") == "str+Choice"
    assert "str" not in CONNECTOR_TYPES["QComboBox"]
    assert connector_key("Annotated[int, WithinRange(0, 10)]") in CONNECTOR_TYPES["QSpinBox"]


def test_folder_pickers_open_folder_dialogs(ui_widgets):
    """ctkPathLineEdit browses for files whenever its filters include Files."""
    for name in ("clipModelPathLineEdit", "nnunetRawFolderLineEdit", "reviewDatasetPathLineEdit",
                 "reviewPredictionsPathLineEdit"):
        filters = ui_widgets[name].find("property[@name='filters']/set").text
        assert "Files" not in filters and "Dirs" in filters, name
        assert "ShowDirsOnly" in ui_widgets[name].find("property[@name='options']/set").text
    for name in ("samCheckpointPathLineEdit", "predictionMaskPathLineEdit"):
        assert "Files" in ui_widgets[name].find("property[@name='filters']/set").text


def widget_method(name: str) -> ast.FunctionDef:
    tree = ast.parse(MODULE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedCLIPSAMWidget")
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_setup_connects_the_prompt_handler_before_adding_items_and_enter_never_cancels():
    setup = ast.unparse(widget_method("setup"))
    assert setup.index("onPromptChanged") < setup.index("addItems"), "the first prompt's preset would be lost"
    assert "returnPressed.connect(self.onPromptReturn)" in setup
    assert "self.onPromptChanged(self.ui.promptComboBox.currentText)" in setup
    enter = ast.unparse(widget_method("onPromptReturn"))
    assert "if not self.logic.isRunning()" in enter


def test_cleanup_stops_the_timer_the_engine_and_the_gui_binding():
    cleanup = ast.unparse(widget_method("cleanup"))
    for call in ("self._timer.stop()", "self.logic.shutdown()", "self.setParameterNode(None)", "self.removeObservers"):
        assert call in cleanup
    assert "except Exception" in cleanup, "one failing step must not keep the others (or Slicer's exit) from running"
    assert "disconnectGui" in ast.unparse(widget_method("setParameterNode"))


def test_module_never_imports_torch_or_the_pipeline():
    source = MODULE.read_text()
    for heavy in ("import torch", "MedCLIPSAMLib.pipeline", "MedCLIPSAMLib.models.clip",
                  "from slicer.packaging", "slicer.packaging.pip_install(", "from MedCLIPSAMLib.slicer_run",
                  "threading.Thread"):
        assert heavy not in source, heavy  # slicer.packaging (after 5.10) only as test_slicer_module_rules says


def test_review_handlers_are_thin_and_every_review_button_is_connected():
    """The widget only calls the Qt-free session (MedCLIPSAMLib.slicer.review); files are never touched here."""
    source = MODULE.read_text()
    assert "MedCLIPSAMLib.review." not in source and "os.replace" not in source
    setup = ast.unparse(widget_method("setup"))
    for button, handler in (("openReviewButton", "onOpenReview"), ("nextCaseButton", "onNextCase"),
                            ("acceptCaseButton", "onAcceptCase"), ("excludeCaseButton", "onExcludeCase"),
                            ("undoExcludeButton", "onUndoExclude")):
        assert f"self.ui.{button}.connect('clicked(bool)', self.{handler})" in setup, button
    assert "self.logic.review.forget_nodes()" in ast.unparse(widget_method("onSceneStartClose"))


def test_export_dicom_seg_is_connected_and_goes_through_the_file_worker_with_slicers_dicom_database():
    """The widget only asks for a file name; the SEG is written by a child process (no highdicom in Slicer)."""
    source = MODULE.read_text()
    assert "import highdicom" not in source and "pydicom" not in source
    setup = ast.unparse(widget_method("setup"))
    assert "self.ui.exportSegButton.connect('clicked(bool)', self.onExportDicomSeg)" in setup
    handler = ast.unparse(widget_method("onExportDicomSeg"))
    assert handler.index("self.logic.dicomSourceFiles(") < handler.index("getSaveFileName")
    assert "self.logic.startDicomSegExport(p, path)" in handler and "self._startFileJob(job" in handler
    assert "database.fileForInstance" in source and "start_seg_export(self.pythonExecutable()" in source


def test_module_source_parses_on_python_3_9():
    """Slicer 5.8 (Python 3.9) must get the 'needs 5.10' message, not a SyntaxError."""
    ast.parse(MODULE.read_text(), feature_version=(3, 9))


def test_choice_lists_match_combo_box_items(ui_widgets):
    source = MODULE.read_text()
    for combo, constant in (("samModelComboBox", "SAM_MODELS"), ("scopeComboBox", "SCOPES"),
                            ("engineModeComboBox", "ENGINE_MODES")):
        items = [i.find("property/string").text for i in ui_widgets[combo].findall("item")]
        values = ast.literal_eval(re.search(rf"^{constant} = (\[.*\])$", source, re.M).group(1))
        assert items == values


def cmake_listed(path: Path) -> set[str]:
    return set(re.findall(r"^\s+([\w/${}.]+\.(?:py|png|ui|json))\s*$", path.read_text(), re.M))


def test_cmake_ships_every_engine_and_module_file():
    module_cmake = ROOT / "MedCLIPSAM" / "CMakeLists.txt"
    listed = {entry.replace("${MODULE_NAME}", "MedCLIPSAM") for entry in cmake_listed(module_cmake)}
    engine = {p.relative_to(ROOT).as_posix() for p in (ROOT / "MedCLIPSAMLib").rglob("*.py")}
    module = {p.relative_to(ROOT / "MedCLIPSAM").as_posix() for p in (ROOT / "MedCLIPSAM").rglob("*.py")}
    assert engine - listed == set(), "engine files missing from MedCLIPSAM/CMakeLists.txt"
    assert module - listed == set(), "module files missing from MedCLIPSAM/CMakeLists.txt"
    for entry in listed:
        base = ROOT if entry.startswith(("MedCLIPSAMLib/", "Resources/model", "Resources/prompt",
                                         "Resources/terminology", "Resources/install")) else ROOT / "MedCLIPSAM"
        assert (base / entry).is_file(), f"CMake lists {entry}, which does not exist"
    jsons = {p.relative_to(ROOT).as_posix() for p in (ROOT / "Resources").glob("*.json")}
    assert jsons <= listed


def test_extension_metadata_is_filled_in():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r'EXTENSION_CATEGORY "Segmentation"', text)
    assert re.search(r'EXTENSION_DEPENDS "PyTorch"', text)
    assert re.search(r'EXTENSION_HOMEPAGE "https://', text)
    assert "add_subdirectory(MedCLIPSAM)" in text


def test_module_source_compiles_and_cites_the_paper():
    source = MODULE.read_text()
    compile(source, str(MODULE), "exec")
    assert "2409.19483" in source and "class MedCLIPSAMTest" in source
