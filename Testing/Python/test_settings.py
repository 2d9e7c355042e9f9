"""Settings checks: one rule, named as the caller knows it (the server's field, the command line's option)."""
import pytest

from MedCLIPSAMLib.setting_options import option_name
from MedCLIPSAMLib.errors import InputError, SettingError
from MedCLIPSAMLib.settings import Settings, check_device, settings_from_dict


@pytest.mark.parametrize("changes, field, plain, option", [
    ({"max_components": 0}, "max_components", "'max_components' must be between 1 and 20 (got 0).", "--k"),
    ({"saliency_stride": 0}, "saliency_stride", "'saliency_stride' must be between 1 and 64 (got 0).", "--stride"),
    ({"slice_range": (5, 2)}, "slice_range", "Slice range 5-2 is invalid", "--slices"),
    ({"axis": 4}, "axis", "Axis 4 is out of range", "--axis"),
    ({"device": "tpu9"}, "device", "Unknown device 'tpu9': use auto, cpu, cuda or cuda:N.", "--device"),
    ({"beta": float("nan")}, "beta", "'beta' must be a finite number >= 0 (got nan).", "--beta"),
    ({"beta": float("inf")}, "beta", "'beta' must be a finite number >= 0 (got inf).", "--beta"),
    ({"seed": 2 ** 70}, "seed", "'seed' must be between 0 and 2**63 - 1", "--seed"),
    ({"m2ib_lr": float("nan")}, "m2ib_lr", "'m2ib_lr' must be above 0 and at most 100", "'m2ib_lr'"),
    ({"min_body_fraction": 2.0}, "min_body_fraction", "'min_body_fraction' must be between 0 and 1", "'min_body"),
    ({"min_component_fraction": -1.0}, "min_component_fraction", "must be between 0 and 1", "'min_component"),
    ({"m2ib_steps": 10 ** 9}, "m2ib_steps", "'m2ib_steps' must be between 1 and 100 (got 1000000000).", "--steps"),
    ({"m2ib_samples": 21}, "m2ib_samples", "'m2ib_samples' must be between 1 and 20 (got 21).", "--samples"),
    ({"clip_batch_size": 33}, "clip_batch_size", "'clip_batch_size' must be between 1 and 32", "--clip-batch-size"),
    ({"sam_batch_size": 17}, "sam_batch_size", "'sam_batch_size' must be between 1 and 16", "--sam-batch-size"),
    ({"points_per_component": 11}, "points_per_component", "must be between 1 and 10", "--points-per-component"),
    ({"window": "foo"}, "window", "Unknown CT window 'foo' ('window')", "Unknown CT window"),
])
def test_a_bad_setting_names_the_field_for_python_and_the_option_for_the_cli(changes, field, plain, option):
    with pytest.raises(SettingError) as error:
        Settings(**changes)
    assert isinstance(error.value, InputError)  # the server answers 400, as for any bad input
    assert error.value.field == field and plain in str(error.value)
    assert error.value.named(option_name(field)).startswith((option, "Unknown " + option))
    assert error.value.exit_code == 2


def test_server_requests_are_checked_field_by_field():
    with pytest.raises(SettingError, match="'max_components' must be between 1 and 20"):
        settings_from_dict({"max_components": 0})
    with pytest.raises(InputError, match="'beta' must be a number"):
        settings_from_dict({"beta": "high"})
    with pytest.raises(InputError, match="Unknown setting 'flavour'") as unknown:
        settings_from_dict({"flavour": 1}, hidden=("device", "clip_model"))
    assert "beta" in str(unknown.value) and "clip_model" not in str(unknown.value)  # not offered where refused
    with pytest.raises(InputError, match="'zoom_below' is too large"):
        settings_from_dict({"zoom_below": 10 ** 400})  # a JSON integer no float holds


def test_device_names_are_checked_without_torch():
    for name in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert check_device(name) == name
    for name in ("foo", "cuda:", "CPU", "gpu0", ""):
        with pytest.raises(SettingError, match="Unknown device"):
            check_device(name)


def test_a_device_this_machine_lacks_is_an_option_error_not_a_torch_traceback():
    from MedCLIPSAMLib.pipeline import resolve_device

    with pytest.raises(SettingError, match="Device 'cuda:99' needs a CUDA GPU") as error:
        resolve_device("cuda:99")
    assert error.value.named("--device").startswith("--device 'cuda:99'")
    assert resolve_device("cpu").type == "cpu"
