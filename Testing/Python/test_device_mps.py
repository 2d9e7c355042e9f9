"""Apple's Metal (``--device mps``): chosen by auto where torch has it, refused with one clear line where it has not."""
import pytest
import torch

from MedCLIPSAMLib.cli import main
from MedCLIPSAMLib.errors import SettingError
from MedCLIPSAMLib.pipeline import auto_device, mps_problem, resolve_device


def fake_mps(monkeypatch, built: bool, available: bool, cuda: bool = False) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: built)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)


def test_auto_prefers_cuda_then_mps_then_cpu():
    assert auto_device(cuda=True, mps=True) == "cuda"
    assert auto_device(cuda=False, mps=True) == "mps"
    assert auto_device(cuda=False, mps=False) == "cpu"


@pytest.mark.parametrize("built, available, cuda, expected", [(True, True, False, "mps"), (True, True, True, "cuda"),
                                                              (True, False, False, "cpu"), (False, False, False, "cpu")])
def test_auto_resolves_to_what_torch_can_run(monkeypatch, built, available, cuda, expected):
    fake_mps(monkeypatch, built, available, cuda)
    assert resolve_device("auto").type == expected


def test_mps_is_taken_where_torch_has_it(monkeypatch):
    fake_mps(monkeypatch, built=True, available=True)
    assert mps_problem() is None and resolve_device("mps") == torch.device("mps")


@pytest.mark.parametrize("built, reason", [(False, "this torch was built without it"),
                                           (True, "torch has it, but this Mac cannot run it")])
def test_mps_without_metal_is_one_clear_line(monkeypatch, built, reason):
    fake_mps(monkeypatch, built=built, available=False)
    with pytest.raises(SettingError) as error:
        resolve_device("mps")
    message = str(error.value)
    assert "'mps' needs Apple's Metal (MPS): " + reason in message and message.endswith("; use cpu or auto.")
    assert "\n" not in message


@pytest.mark.skipif(mps_problem() is None, reason="this machine has MPS")
def test_the_cli_refuses_mps_here_before_loading_any_model(capsys, monkeypatch):
    from MedCLIPSAMLib import benchmark

    monkeypatch.setattr(benchmark, "run_benchmark", lambda *a: pytest.fail("the benchmark ran"))
    assert main(["benchmark", "--device", "mps", "--slices", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs Apple's Metal (MPS)" in err and "use cpu or auto" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.skipif(mps_problem() is not None, reason="needs a Mac with MPS")
def test_m2ib_runs_on_mps(tiny_clip):
    import numpy as np

    from MedCLIPSAMLib.saliency import M2IB, M2IBConfig

    device = torch.device("mps")
    images = np.random.default_rng(0).integers(0, 255, (1, 64, 64)).astype(np.uint8)
    maps = M2IB(tiny_clip, M2IBConfig(layer=9, steps=2, samples=1), device).saliency(
        images, tiny_clip.encode_text(["disk"], device))
    assert maps.shape == (1, 64, 64) and np.isfinite(maps).all()
