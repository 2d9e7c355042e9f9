"""The panel's values as the engine sees them (MedCLIPSAMLib.slicer.panel), without Qt."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from MedCLIPSAMLib.presets import load_presets
from MedCLIPSAMLib.settings import Settings, settings_from_dict
from MedCLIPSAMLib.slicer.panel import (local_engine_args, path_or_none, preset_parameters, recent_prompts,
                                        remember_prompt, run_settings)


def panel(**changes) -> SimpleNamespace:
    """The parameter node's defaults (MedCLIPSAMParameterNode), unset paths as Slicer stores them."""
    values = dict(scope="Whole volume", firstSlice=0, lastSlice=0, samModel="auto", device="auto", bottleneckLayer=9,
                  beta=1.0, maxComponents=1, promptMode="boxes", refineRounds=2, fastSaliency=False,
                  checkFaithfulness=True,
                  useLocalModels=False, clipModelPath=Path(), samCheckpointPath=Path())
    values.update(changes)
    return SimpleNamespace(**values)


def test_unset_paths_read_as_none():
    assert path_or_none(Path()) is None and path_or_none(Path("")) is None and path_or_none("") is None
    assert path_or_none(None) is None and path_or_none(Path("/models/clip")) == "/models/clip"


def test_run_settings_are_valid_engine_settings_and_follow_the_scope():
    settings = run_settings(panel(beta=2.0, maxComponents=2, refineRounds=0))
    assert settings_from_dict(settings).beta == 2.0
    assert settings == {"bottleneck_layer": 9, "beta": 2.0, "max_components": 2, "prompt_mode": "boxes",
                        "refine_rounds": 0, "sam_backend": "auto"}
    ranged = run_settings(panel(scope="Slice range", firstSlice=12, lastSlice=4))
    assert ranged["axis"] == 0 and ranged["slice_range"] == [4, 12]
    current = run_settings(panel(scope="Current slice"), slice_scope=(1, 37))
    assert current["axis"] == 1 and current["slice_range"] == [37, 37]
    with pytest.raises(ValueError, match="point at a slice view"):
        run_settings(panel(scope="Current slice"), slice_scope=None)
    fast = settings_from_dict(run_settings(panel(fastSaliency=True)))
    assert (fast.saliency_stride, fast.m2ib_samples, fast.m2ib_steps) == (4, 3, Settings().m2ib_steps)


def test_the_faithfulness_checkbox_switches_the_check_off_in_the_job():
    assert "faithfulness_slices" not in run_settings(panel())  # on: the engine's default
    off = run_settings(panel(checkFaithfulness=False))
    assert off["faithfulness_slices"] == 0 and settings_from_dict(off).faithfulness_slices == 0


def test_model_files_and_device_go_to_the_local_engine_not_the_job():
    assert local_engine_args(panel()) == ["--device", "auto", "--sam", "auto", "--ttl", "300"]
    files = panel(useLocalModels=True, clipModelPath=Path("/m/clip"), samCheckpointPath=Path(), device="cpu",
                  samModel="vit_b")
    assert local_engine_args(files) == ["--device", "cpu", "--sam", "vit_b", "--ttl", "300", "--clip-model", "/m/clip"]
    assert "--clip-model" not in local_engine_args(panel(useLocalModels=False, clipModelPath=Path("/m/clip")))
    assert not {"clip_model", "sam_checkpoint", "device"} & set(run_settings(files))


def test_recent_prompts_survive_slicer_ini_settings():
    assert recent_prompts("brain tumor") == ["brain tumor"]  # one item reads back as a str
    assert recent_prompts(("lungs", "liver", "")) == ["lungs", "liver"]
    assert recent_prompts(None) == []
    assert remember_prompt("Liver", ("lungs", "liver")) == ["Liver", "lungs"]
    assert len(remember_prompt("x", [str(i) for i in range(20)])) == 10


def test_a_preset_reaches_the_panel_with_the_values_that_run():
    shown = preset_parameters("Brain Tumor ", load_presets())
    assert shown == {"bottleneckLayer": 9, "beta": 2.0, "maxComponents": 3, "promptMode": "boxes"}
    assert preset_parameters("spleen", load_presets()) == {}
    p = panel(**shown)
    assert settings_from_dict(run_settings(p)).beta == 2.0
