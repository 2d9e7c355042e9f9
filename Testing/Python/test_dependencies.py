"""Dependency checks for the Slicer install: what is missing (pins: test_install_plan.py)."""

from MedCLIPSAMLib.dependencies import REQUIREMENTS, missing_requirements, torch_missing


def test_missing_lists_only_uninstalled_requirements():
    absent = {"open_clip", "skimage"}
    found = missing_requirements(lambda name: None if name in absent else object())
    assert found == [REQUIREMENTS["open_clip"], REQUIREMENTS["skimage"]]
    assert missing_requirements() == []  # this environment has everything
    assert torch_missing(lambda name: None) and not torch_missing()
