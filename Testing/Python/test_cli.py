"""`medclipsam segment` on NIfTI, NRRD and DICOM; exit codes and messages for bad input."""
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import disk_image
from test_imageio import assert_same_geometry, make_volume, write_dicom_series
from MedCLIPSAMLib import cli
from MedCLIPSAMLib.cli import build_parser, main
from MedCLIPSAMLib.setting_options import TqdmProgress, settings_from_args


def small_volume() -> sitk.Image:
    image = make_volume(shape=(4, 48, 56))
    array = np.stack([disk_image(48, 56, (20, 30), 9, seed=z) for z in range(4)]).astype(np.int16) * 4
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def run(args, tiny_clip_folder):
    return main([*args, "--clip-model", str(tiny_clip_folder), "--steps", "1", "--samples", "1",
                 "--sam", "litemedsam", "--device", "cpu", "--quiet"])


@pytest.mark.parametrize("kind", ["nii.gz", "nrrd", "dicom"])
def test_segment_writes_labels_on_the_input_grid(tmp_path, tiny_clip_folder, kind, capsys):
    image = small_volume()
    if kind == "dicom":
        source = tmp_path / "series"
        write_dicom_series(image, source)
    else:
        source = tmp_path / f"ct.{kind}"
        sitk.WriteImage(image, str(source))
    output = tmp_path / "seg.nrrd"
    assert run(["segment", str(source), "-p", "lesion", "-o", str(output), "--saliency-out",
                str(tmp_path / "sal.nii.gz")], tiny_clip_folder) == 0
    assert_same_geometry(sitk.ReadImage(str(output)), image)
    assert_same_geometry(sitk.ReadImage(str(tmp_path / "sal.nii.gz")), image)
    assert "label 1: 'lesion'" in capsys.readouterr().out


def test_two_prompts_and_2d_png(tmp_path, tiny_clip_folder, capsys):
    sitk.WriteImage(sitk.GetImageFromArray(disk_image()), str(tmp_path / "us.png"))
    code = run(["segment", str(tmp_path / "us.png"), "-p", "disk", "-p", "background", "-o",
                str(tmp_path / "m.nii.gz"), "--saliency-out", str(tmp_path / "s.nii.gz")], tiny_clip_folder)
    assert code == 0
    assert (tmp_path / "s_disk.nii.gz").exists() and (tmp_path / "s_background.nii.gz").exists()
    assert sitk.ReadImage(str(tmp_path / "m.nii.gz")).GetSize() == (128, 96)
    out = capsys.readouterr().out
    assert "label 1: 'disk'" in out and "label 2: 'background'" in out


def bad_input(tmp_path, case):
    if case == "missing":
        return tmp_path / "nope.nii.gz"
    if case == "empty":
        (tmp_path / "empty.nrrd").write_bytes(b"")
        return tmp_path / "empty.nrrd"
    if case == "4d":
        sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 9, 9), np.float32))] * 2),
                        str(tmp_path / "4d.nii.gz"))
        return tmp_path / "4d.nii.gz"
    if case == "dicom":
        (tmp_path / "dcm").mkdir()
        (tmp_path / "dcm" / "a.dcm").write_bytes(b"DICM" * 10)
        return tmp_path / "dcm"
    raise ValueError(case)


@pytest.mark.parametrize("case, message", [("missing", "does not exist"), ("empty", "empty file"),
                                           ("4d", "4D image"), ("dicom", "No readable DICOM series")])
def test_bad_inputs_exit_with_code_3_and_a_message(tmp_path, tiny_clip_folder, capsys, case, message):
    code = run(["segment", str(bad_input(tmp_path, case)), "-p", "tumor", "-o", str(tmp_path / "o.nii.gz")],
               tiny_clip_folder)
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("error: ") and message in err
    assert "Traceback" not in err and not (tmp_path / "o.nii.gz").exists()


def test_axis_out_of_range_and_existing_output(tmp_path, tiny_clip_folder, capsys):
    sitk.WriteImage(small_volume(), str(tmp_path / "v.nii.gz"))
    assert run(["segment", str(tmp_path / "v.nii.gz"), "-p", "x", "-o", str(tmp_path / "o.nii.gz"),
                "--axis", "3"], tiny_clip_folder) == 2
    assert "--axis 3 is out of range" in capsys.readouterr().err
    (tmp_path / "o.nii.gz").write_bytes(b"keep me")
    assert run(["segment", str(tmp_path / "v.nii.gz"), "-p", "x", "-o", str(tmp_path / "o.nii.gz")],
               tiny_clip_folder) == 3
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "o.nii.gz").read_bytes() == b"keep me"


def test_missing_clip_weights_exit_code_4(tmp_path, capsys):
    sitk.WriteImage(small_volume(), str(tmp_path / "v.nii.gz"))
    code = main(["segment", str(tmp_path / "v.nii.gz"), "-p", "x", "-o", str(tmp_path / "o.nii.gz"),
                 "--clip-model", str(tmp_path), "--quiet"])
    assert code == 4 and "open_clip_config.json is missing" in capsys.readouterr().err


def test_a_missing_model_is_reported_before_any_time_estimate(tmp_path, capsys):
    """A user without BiomedCLIP reads the model error, not the CPU time note followed by it."""
    array = np.stack([disk_image(48, 56, (20, 30), 9, seed=z) for z in range(12)]).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "v.nii.gz"))
    code = main(["segment", str(tmp_path / "v.nii.gz"), "-p", "x", "-o", str(tmp_path / "o.nii.gz"),
                 "--clip-model", str(tmp_path), "--device", "cpu", "--sam", "litemedsam"])
    err = capsys.readouterr().err
    assert code == 4 and "open_clip_config.json is missing" in err
    assert "seconds each" not in err


def test_presets_fill_in_unless_the_user_set_the_option():
    parser = build_parser()
    args = parser.parse_args(["segment", "x.nii", "-p", "brain tumor", "-o", "y.nii"])
    assert settings_from_args(args, "brain tumor").beta == 2.0
    args = parser.parse_args(["segment", "x.nii", "-p", "Lungs", "-o", "y.nii", "--beta", "0.5"])
    lungs = settings_from_args(args, "Lungs")
    assert (lungs.beta, lungs.max_components, lungs.prompt_mode) == (0.5, 2, "points")
    args = parser.parse_args(["segment", "x.nii", "-p", "lungs", "-o", "y.nii", "--no-preset", "--slices", "3-7"])
    plain = settings_from_args(args, "lungs")
    assert plain.max_components == 1 and plain.slice_range == (3, 7)


def test_fast_option_sets_the_cheap_shortcuts_and_explicit_options_win():
    parser = build_parser()
    plain = settings_from_args(parser.parse_args(["segment", "x.nii", "-p", "a", "-o", "y.nii"]), "a")
    assert (plain.saliency_stride, plain.m2ib_samples, plain.m2ib_steps) == (1, 10, 10)
    fast = settings_from_args(parser.parse_args(["segment", "x.nii", "-p", "a", "-o", "y.nii", "--fast"]), "a")
    assert (fast.saliency_stride, fast.m2ib_samples, fast.m2ib_steps) == (4, 3, 10)
    args = parser.parse_args(["segment", "x.nii", "-p", "a", "-o", "y.nii", "--fast", "--samples", "5"])
    assert settings_from_args(args, "a").m2ib_samples == 5


def test_a_long_cpu_run_at_paper_settings_suggests_fast_first():
    from MedCLIPSAMLib.cli import cpu_hint
    from MedCLIPSAMLib.settings import FAST_SALIENCY, Settings

    cpu = Settings(device="cpu")
    assert "25 slices" in cpu_hint(cpu, 25) and "--fast" in cpu_hint(cpu, 25) and "seconds each" in cpu_hint(cpu, 25)
    assert cpu_hint(cpu, 4) is None  # short enough as it is
    assert cpu_hint(cpu.replace(**FAST_SALIENCY), 25) is None
    assert cpu_hint(cpu.replace(m2ib_samples=5), 25) is None  # the user already traded accuracy for time
    assert cpu_hint(cpu.replace(m2ib_steps=5), 25) is None


def test_an_output_named_like_the_input_plus_its_extension_never_replaces_the_input(tmp_path, tiny_clip_folder,
                                                                                    capsys):
    """-o scan.nii.gz.nii.gz: SimpleITK alone writes scan.nii.gz, the user's image; the exact name is written.
    The same writer serves --saliency-out. A prompt over the context length gets our own note."""
    scan = tmp_path / "scan.nii.gz"
    sitk.WriteImage(small_volume(), str(scan))
    (tmp_path / "sal.nii.gz").write_bytes(b"another file of the user's")
    image_bytes = scan.read_bytes()
    long_prompt = "lesion " * 300
    code = run(["segment", str(scan), "-p", long_prompt, "-o", str(tmp_path / "scan.nii.gz.nii.gz"),
                "--saliency-out", str(tmp_path / "sal.nii.gz.nii.gz")], tiny_clip_folder)
    err = capsys.readouterr().err
    assert code == 0 and scan.read_bytes() == image_bytes
    assert (tmp_path / "sal.nii.gz").read_bytes() == b"another file of the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sal.nii.gz", "sal.nii.gz.nii.gz", "scan.nii.gz",
                                                          "scan.nii.gz.nii.gz"]
    assert_same_geometry(sitk.ReadImage(str(tmp_path / "scan.nii.gz.nii.gz")), small_volume())
    assert "note: The prompt 'lesion lesion" in err and "302 tokens" in err and "indexing errors" not in err
    # the input itself is never an output, not even with --overwrite
    assert run(["segment", str(scan), "-p", "x", "-o", str(scan), "--overwrite"], tiny_clip_folder) == 2
    assert "is an input of this command" in capsys.readouterr().err and scan.read_bytes() == image_bytes


@pytest.fixture
def no_models(monkeypatch):
    """A model load fails the test: the refusal under test must come before it."""
    from MedCLIPSAMLib.models import catalog, clip, sam

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the problem was reported")

    for module, name in ((clip, "load_clip_folder"), (sam, "_build_backend"), (catalog, "download_file")):
        monkeypatch.setattr(module, name, forbidden)


@pytest.mark.parametrize("output, saliency, message", [
    ("seg.xyz", None, "-o '{tmp}/seg.xyz' has the unknown extension '.xyz'"),
    ("seg", None, "-o '{tmp}/seg' has no extension"),
    ("seg.png", None, ".png holds one 2D image, but the input is a volume"),
    ("seg.nrrd", "sal.nhdr", "--saliency-out '{tmp}/sal.nhdr' has the unknown extension '.nhdr'"),
    ("seg.nrrd", "seg.nrrd", "-o and --saliency-out both name"),
])
def test_output_names_are_refused_before_any_model_loads(tmp_path, no_models, capsys, output, saliency, message):
    sitk.WriteImage(small_volume(), str(tmp_path / "v.nrrd"))
    args = ["segment", str(tmp_path / "v.nrrd"), "-p", "x", "-o", str(tmp_path / output), "--quiet"]
    assert main(args + (["--saliency-out", str(tmp_path / saliency)] if saliency else [])) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nrrd"]


def test_an_existing_saliency_output_is_refused_before_the_label_is_written(tmp_path, no_models, capsys):
    sitk.WriteImage(small_volume(), str(tmp_path / "v.nrrd"))
    (tmp_path / "sal_b.nrrd").write_bytes(b"keep")
    code = main(["segment", str(tmp_path / "v.nrrd"), "-p", "a", "-p", "b", "-o", str(tmp_path / "seg.nrrd"),
                 "--saliency-out", str(tmp_path / "sal.nrrd"), "--quiet"])
    assert code == 3 and f"'{tmp_path / 'sal_b.nrrd'}' already exists" in capsys.readouterr().err
    assert not (tmp_path / "seg.nrrd").exists() and (tmp_path / "sal_b.nrrd").read_bytes() == b"keep"


def test_an_empty_prompt_is_reported_before_the_sam_download(tmp_path, no_models, capsys):
    sitk.WriteImage(small_volume(), str(tmp_path / "v.nrrd"))
    code = main(["segment", str(tmp_path / "v.nrrd"), "-p", "", "--sam", "vit_b", "-o", str(tmp_path / "o.nrrd")])
    assert code == 3 and "A prompt is empty" in capsys.readouterr().err


def test_a_truncated_nifti_is_refused_not_segmented(tmp_path, no_models, capsys):
    scan = tmp_path / "scan.nii.gz"
    sitk.WriteImage(small_volume(), str(scan))
    scan.write_bytes(scan.read_bytes()[:-200])
    assert main(["segment", str(scan), "-p", "x", "-o", str(tmp_path / "o.nrrd"), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert f"error: '{scan}' is incomplete" in err and "Traceback" not in err
    assert not (tmp_path / "o.nrrd").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--k", "0", "--k must be between 1 and 20 (got 0)"),
    ("--beta", "-1", "--beta must be a finite number >= 0 (got -1.0)"),
    ("--axis", "3", "--axis 3 is out of range"),
    ("--stride", "0", "--stride must be between 1 and 64 (got 0)"),
    ("--refine-rounds", "9", "--refine-rounds must be between 0 and 5 (got 9)"),
    ("--slices", "7-2", "--slices 7-2 is invalid"),
    ("--slices", "50-60", "--slices 50-60 is outside the 4 slices along this axis"),
    ("--device", "foo", "Unknown --device 'foo': use auto, cpu, cuda or cuda:N"),
    ("--layer", "-1", "--layer must be between 0 and 47 (got -1)"),
    ("--steps", "1000000000", "--steps must be between 1 and 100 (got 1000000000)"),
    ("--samples", "21", "--samples must be between 1 and 20 (got 21)"),
    ("--clip-batch-size", "33", "--clip-batch-size must be between 1 and 32 (got 33)"),
    ("--sam-batch-size", "17", "--sam-batch-size must be between 1 and 16 (got 17)"),
    ("--slices", "0-100000", "--slices 0-100000 is invalid: give FIRST-LAST with 0 <= FIRST <= LAST <= 99999"),
    ("--sam-input-size", "100", "--sam-input-size must be a multiple of 16"),
])
def test_option_errors_exit_2_and_name_the_option(tmp_path, no_models, capsys, option, value, message):
    sitk.WriteImage(small_volume(), str(tmp_path / "v.nrrd"))
    code = main(["segment", str(tmp_path / "v.nrrd"), "-p", "x", "-o", str(tmp_path / "o.nrrd"), option, value])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err
    assert not any(name in err for name in ("max_components", "saliency_stride", "slice_range", "bottleneck_layer"))


def test_an_axis_a_2d_image_does_not_have_is_an_option_error(tmp_path, no_models, capsys):
    sitk.WriteImage(sitk.GetImageFromArray(disk_image()), str(tmp_path / "us.png"))
    assert main(["segment", str(tmp_path / "us.png"), "-p", "x", "-o", str(tmp_path / "o.png"), "--axis", "1"]) == 2
    assert "--axis 1 is not valid for a 2D image" in capsys.readouterr().err


def test_ctrl_c_during_start_up_is_one_line_not_a_traceback(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["segment", "x.nii.gz", "-p", "x", "-o", "y.nii.gz"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("error: interrupted") and "Traceback" not in err and "none is half-written" in err


def test_progress_bars_count_cases_for_evaluate_and_slices_otherwise(capsys):
    progress = TqdmProgress()
    progress("evaluate", 1, 3)
    progress("saliency", 2, 4)
    progress.close()
    err = capsys.readouterr().err
    assert "case/s" in err.split("saliency")[0] and "slice/s" in err.split("saliency")[1]


def test_a_server_address_that_is_no_url_and_an_unknown_window_are_option_errors(tmp_path, capsys):
    import SimpleITK as sitk
    import numpy as np

    scan = tmp_path / "v.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 16, 16), np.int16)), str(scan))
    token = tmp_path / "token"
    token.write_text("secret")
    assert main(["segment", str(scan), "-p", "x", "-o", str(tmp_path / "o.nrrd"), "--server", "notaurl",
                 "--token-file", str(token), "--quiet"]) == 2
    assert "--server 'notaurl' is not an engine address" in capsys.readouterr().err
    assert main(["segment", str(scan), "-p", "x", "-o", str(tmp_path / "o.nrrd"), "--window", "foo", "--quiet"]) == 2
    assert "Unknown CT window 'foo' (--window)" in capsys.readouterr().err


def test_sam_vit_options_with_litemedsam_and_a_missing_prompt_are_option_errors(tmp_path, capsys):
    import SimpleITK as sitk
    import numpy as np

    scan = tmp_path / "v.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 16, 16), np.int16)), str(scan))
    base = ["segment", str(scan), "-o", str(tmp_path / "o.nrrd"), "--sam", "litemedsam", "--quiet"]
    assert main(base + ["-p", "x", "--sam-input-size", "512"]) == 2
    assert "--sam-input-size is for the SAM ViT models" in capsys.readouterr().err
    assert main(base + ["-p", "x", "--sam-checkpoint", str(scan)]) == 2
    assert "--sam-checkpoint is for the SAM ViT models" in capsys.readouterr().err
    assert main(base) == 2
    assert "Give a prompt with --prompt" in capsys.readouterr().err


def test_fp32_switches_bfloat16_off_and_the_default_leaves_it_on():
    parser = build_parser()
    default = settings_from_args(parser.parse_args(["segment", "x.nii", "-p", "lesion", "-o", "y.nii"]), "lesion")
    off = settings_from_args(parser.parse_args(["segment", "x.nii", "-p", "lesion", "-o", "y.nii", "--fp32"]),
                             "lesion")
    assert default.bf16 is True and off.bf16 is False


def test_the_command_line_and_the_web_page_start_without_torch():
    """torch (1 s and 0.5 GB) loads when a command runs the models, not for --help, option errors or the web
    page's own process (its engine is another process)."""
    import subprocess
    import sys

    code = ("import sys; from MedCLIPSAMLib.cli import build_parser; build_parser(); import MedCLIPSAMLib.web.app; "
            "print(sorted(m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
