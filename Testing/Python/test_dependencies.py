"""Dependency checks for the Slicer install: what is missing, and pins for Slicer's own packages."""
import importlib.metadata

from MedCLIPSAMLib.dependencies import REQUIREMENTS, missing_requirements, protected_pins, torch_missing, \
    write_constraints


def test_missing_lists_only_uninstalled_requirements():
    absent = {"open_clip", "skimage"}
    found = missing_requirements(lambda name: None if name in absent else object())
    assert found == [REQUIREMENTS["open_clip"], REQUIREMENTS["skimage"]]
    assert missing_requirements() == []  # this environment has everything
    assert torch_missing(lambda name: None) and not torch_missing()


def test_constraints_pin_slicers_numpy_and_simpleitk(tmp_path):
    pins = protected_pins()
    assert f"numpy=={importlib.metadata.version('numpy')}" in pins
    assert f"SimpleITK=={importlib.metadata.version('SimpleITK')}" in pins
    text = write_constraints(tmp_path).read_text()
    assert all(pin in text.splitlines() for pin in pins)
