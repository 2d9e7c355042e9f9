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


def test_parameter_node_fields_are_all_bound_to_widgets_of_a_fitting_class(ui_widgets):
    bound = {}
    for name, widget in ui_widgets.items():
        prop = widget.find("property[@name='SlicerParameterName']/string")
        if prop is not None:
            bound[prop.text] = widget.get("class")
    fields = parameter_fields()
    assert set(bound) == set(fields), f"unbound: {set(fields) - set(bound)}, unknown: {set(bound) - set(fields)}"
    fitting = {"int": {"QSpinBox"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"}, "bool": {"QCheckBox"},
               "str": {"QComboBox", "ctkPathLineEdit", "QLineEdit"},
               "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"}, "vtkMRMLSegmentationNode": {"qMRMLNodeComboBox"}}
    for field, annotation in fields.items():
        base = re.sub(r"^Annotated\[(\w+),.*$", r"\1", annotation)
        assert bound[field] in fitting[base], f"{field}: {base} bound to {bound[field]}"


def test_choice_lists_match_combo_box_items(ui_widgets):
    source = MODULE.read_text()
    for combo, constant in (("samModelComboBox", "SAM_MODELS"), ("scopeComboBox", "SCOPES")):
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
                                         "Resources/terminology")) else ROOT / "MedCLIPSAM"
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
