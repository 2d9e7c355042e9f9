"""Outputs: checked before any work, written atomically under the exact name given, never over an input; and,
for every command and every output option, an existing file is never modified without --overwrite."""
import argparse
import re
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import disk_image, disk_mask
from MedCLIPSAMLib.cli import build_parser, main
from MedCLIPSAMLib.errors import InputError, OptionError
from MedCLIPSAMLib.outputs import (OUTPUT_ATTRIBUTE, check_distinct, check_output, extension, replacing,
                                   write_image)


def test_extension_keeps_compound_extensions_whole():
    assert extension("scan.nii.gz") == ".nii.gz" and extension("scan.nii.gz.nii.gz") == ".nii.gz"
    assert extension("a.b.NRRD") == ".nrrd" and extension("seg.seg.nrrd") == ".seg.nrrd"
    assert extension("scan") == "" and extension(".nii.gz") == ".gz" and extension("x.") == ""


def test_check_output_refuses_before_any_work(tmp_path):
    with pytest.raises(OptionError, match=r"-o '.*scan' has no extension; use one of \.nii\.gz"):
        check_output(tmp_path / "scan", "-o")
    with pytest.raises(OptionError, match="unknown extension '.xyz'"):
        check_output(tmp_path / "scan.xyz", "-o")
    with pytest.raises(OptionError, match="unknown extension '.nhdr'"):  # two files: not atomic
        check_output(tmp_path / "scan.nhdr", "-o")
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"input")
    with pytest.raises(InputError, match="already exists"):
        check_output(source, "-o")
    with pytest.raises(OptionError, match="is an input of this command"):  # even with --overwrite
        check_output(tmp_path / "." / "scan.nii.gz", "-o", overwrite=True, inputs=[source])
    assert check_output(tmp_path / "scan.nii.gz.nii.gz", "-o", inputs=[source]).name == "scan.nii.gz.nii.gz"
    (tmp_path / "folder.nrrd").mkdir()
    with pytest.raises(OptionError, match="is a folder"):
        check_output(tmp_path / "folder.nrrd", "-o", overwrite=True)
    with pytest.raises(InputError, match="is a file, so"):
        check_output(source / "under.nrrd", "-o")
    with pytest.raises(OptionError, match="-o and --saliency-out both name"):
        check_distinct([("-o", tmp_path / "a.nrrd"), ("--saliency-out", tmp_path / "." / "a.nrrd")])
    assert source.read_bytes() == b"input"


def test_the_exact_name_is_written_and_never_the_name_the_writer_would_pick(tmp_path):
    """SimpleITK alone writes 'scan.nii.gz.nii.gz' as 'scan.nii.gz', replacing the user's image."""
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"the user's image")
    label = sitk.GetImageFromArray(np.ones((3, 8, 8), np.uint8))
    written = write_image(label, tmp_path / "scan.nii.gz.nii.gz")
    assert written.name == "scan.nii.gz.nii.gz" and scan.read_bytes() == b"the user's image"
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(written))).sum() == 3 * 8 * 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz", "scan.nii.gz.nii.gz"]


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path, failure):
    target = tmp_path / "seg.nrrd"
    target.write_bytes(b"old result")
    with pytest.raises(type(failure)):
        with replacing(target, overwrite=True) as temp:
            temp.write_bytes(b"half a new res")
            raise failure
    assert target.read_bytes() == b"old result" and [p.name for p in tmp_path.iterdir()] == ["seg.nrrd"]


def test_an_output_that_appears_during_the_run_is_not_replaced(tmp_path):
    target = tmp_path / "seg.nrrd"
    with pytest.raises(InputError, match="appeared while this command ran"):
        with replacing(target) as temp:
            temp.write_bytes(b"new")
            target.write_bytes(b"someone else's")
    assert target.read_bytes() == b"someone else's" and len(list(tmp_path.iterdir())) == 1


# --- the property: every output option of every command, found from the parser ---------------------------

def output_options() -> list[tuple[str, str]]:
    """(command, option) for every option marked as naming an output file or folder."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [(command, max(action.option_strings, key=len))
            for command, sub_parser in sub.choices.items() for action in sub_parser._actions
            if getattr(action, OUTPUT_ATTRIBUTE, None)]


def test_every_option_that_looks_like_an_output_is_marked_as_one():
    """An output option added with plain add_argument would escape the property below; this finds it."""
    looks_like_output = re.compile(r"\b(writes?|save|output|folder for)\b", re.IGNORECASE)
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    unmarked = [f"{command} {action.option_strings}" for command, sub_parser in sub.choices.items()
                for action in sub_parser._actions
                if action.nargs != 0 and action.option_strings and not getattr(action, OUTPUT_ATTRIBUTE, None)
                and (action.dest in ("out", "output", "json", "results") or action.dest.endswith("_out")
                     or looks_like_output.search(action.help or ""))]
    assert not unmarked, f"mark these with outputs.add_output_option (and give them a scenario below): {unmarked}"


def write_volume(path, shape=(4, 24, 24)):
    array = np.stack([disk_image(shape[1], shape[2], (12, 12), 5, seed=z) for z in range(shape[0])])
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def evaluate_scenario(tmp):
    from MedCLIPSAMLib.evaluate import OUTPUT_FILES

    data = tmp / "data"
    data.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(disk_image(32, 32, (16, 16), 6)), str(data / "c0.png"))
    sitk.WriteImage(sitk.GetImageFromArray(disk_mask(32, 32, (16, 16), 6).astype(np.uint8) * 255),
                    str(data / "c0_mask.png"))
    out = tmp / "out"
    argv = ["evaluate", str(data), "--oracle-boxes", "--out", str(out), "--sam", "litemedsam", "--device", "cpu", "-q"]
    return argv, [out / name for name in OUTPUT_FILES] + [out / "overlays" / "c0.png"]


def segment_scenario(tmp, saliency: bool):
    volume = write_volume(tmp / "ct.nrrd")
    argv = ["segment", str(volume), "-p", "liver", "-p", "spleen", "-o", str(tmp / "seg.nii.gz"), "--quiet",
            "--clip-model", str(tmp), "--device", "cpu"]
    if not saliency:
        return argv, [tmp / "seg.nii.gz"]
    return argv + ["--saliency-out", str(tmp / "sal.nrrd")], [tmp / "sal_liver.nrrd", tmp / "sal_spleen.nrrd"]


def pairs_file(tmp):
    for name in ("a.png", "b.png"):
        sitk.WriteImage(sitk.GetImageFromArray(disk_image(32, 32, (16, 16), 6)), str(tmp / name))
    (tmp / "pairs.csv").write_text("image,caption\na.png,a bright round disk in the middle\n"
                                   "b.png,another bright round disk in the middle\n")
    return tmp / "pairs.csv"


def finetune_scenario(tmp):
    from MedCLIPSAMLib.finetune.train import OUTPUT_FILES

    out = tmp / "run"
    argv = ["finetune", "--data", str(pairs_file(tmp)), "--out", str(out), "--clip", str(tmp), "--device", "cpu",
            "--validation-fraction", "0"]
    return argv, [out / name for name in OUTPUT_FILES] + [out / "epoch_001.pt"]


def export_scenario(tmp):
    volume = write_volume(tmp / "ct.nrrd")
    label = sitk.GetImageFromArray((sitk.GetArrayFromImage(sitk.ReadImage(str(volume))) > 100).astype(np.uint8))
    sitk.WriteImage(label, str(tmp / "label.nrrd"))
    dataset = tmp / "raw" / "Dataset501_Liver"
    argv = ["nnunet-export", "--raw", str(tmp / "raw"), "--dataset-id", "501", "--name", "Liver", "--label-name",
            "liver", "--image", str(volume), "--label", str(tmp / "label.nrrd"), "--case-id", "c1"]
    return argv, [dataset / "imagesTr" / "c1_0000.nii.gz", dataset / "labelsTr" / "c1.nii.gz"]


def train_scenario(tmp):
    (tmp / "raw" / "Dataset501_Liver").mkdir(parents=True)
    (tmp / "raw" / "Dataset501_Liver" / "dataset.json").write_text("{}")
    fold = tmp / "res" / "Dataset501_Liver" / "nnUNetTrainerCyclicLR__nnUNetPlans__2d" / "fold_0"
    argv = ["nnunet-train", "501", "--raw", str(tmp / "raw"), "--preprocessed", str(tmp / "pre"), "--results",
            str(tmp / "res"), "--device", "cpu"]
    return argv, [fold / "checkpoint_final.pth", fold / "checkpoint_cycle1_epoch0001.pth"]


def predict_scenario(tmp):
    fold = tmp / "model" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_cycle1_epoch0001.pth").write_bytes(b"weights")
    image = write_volume(tmp / "c0_0000.nii.gz")
    out = tmp / "pred"
    argv = ["nnunet-predict", str(tmp / "model"), str(image), "--out", str(out), "--device", "cpu"]
    return argv, [out / name for name in ("c0.nii.gz", "c0_probability.nii.gz", "c0_entropy.nii.gz",
                                          "uncertainty.csv")]


def label_scenario(tmp):
    cohort = tmp / "cohort"
    cohort.mkdir()
    write_volume(cohort / "c1.nrrd")
    dataset = tmp / "raw" / "Dataset501_Liver"
    argv = ["label", str(cohort), "-p", "liver", "--raw", str(tmp / "raw"), "--dataset-id", "501", "--name", "Liver",
            "--device", "cpu", "-q", "--clip-model", str(tmp)]
    return argv, [dataset / "imagesTr" / "c1_0000.nii.gz", dataset / "labelsTr" / "c1.nii.gz"]


def json_scenario(command):
    def build(tmp):
        extra = ["--data", str(pairs_file(tmp)), "--clip", str(tmp)] if command == "retrieval-eval" else []
        return [command, "--device", "cpu", *extra, "--json", str(tmp / "figures.json")], [tmp / "figures.json"]
    return build


def review_status_scenario(tmp):
    from review_cases import make_dataset

    folder = make_dataset(tmp, predictions=False)
    return ["review-status", str(folder), "--json", str(tmp / "status.json")], [tmp / "status.json"]


SCENARIOS = {
    ("segment", "--output"): lambda tmp: segment_scenario(tmp, saliency=False),
    ("segment", "--saliency-out"): lambda tmp: segment_scenario(tmp, saliency=True),
    ("evaluate", "--out"): evaluate_scenario,
    ("benchmark", "--json"): json_scenario("benchmark"),
    ("benchmark-server", "--json"): json_scenario("benchmark-server"),
    ("retrieval-eval", "--json"): json_scenario("retrieval-eval"),
    ("finetune", "--out"): finetune_scenario,
    ("nnunet-export", "--raw"): export_scenario,
    ("label", "--raw"): label_scenario,
    ("nnunet-train", "--results"): train_scenario,
    ("nnunet-predict", "--out"): predict_scenario,
    ("review-status", "--json"): review_status_scenario,
}
"""(command, output option) -> a valid command line whose outputs are the listed files."""
SKIPS_PER_CASE = {"label"}
"""Cohort commands: a case whose files exist is left alone and named (exit 0), the other cases go on."""


@pytest.fixture
def no_work(monkeypatch):
    """Any model load or long computation fails the test: the refusal must come before it."""
    from MedCLIPSAMLib import benchmark
    from MedCLIPSAMLib.models import clip, sam
    from MedCLIPSAMLib.server_benchmarks import benchmark as server_benchmark
    from MedCLIPSAMLib.weak import train

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    for module, name in ((clip, "load_clip_folder"), (clip, "load_clip_checkpoint"), (sam, "_build_backend"),
                         (benchmark, "run_benchmark"), (server_benchmark, "run_server_benchmark"),
                         (train.NnunetPaths, "export")):
        monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setitem(sys.modules, "nnunetv2.inference.predict_from_raw_data", None)


@pytest.mark.parametrize("command, option", output_options())
def test_an_existing_output_is_never_modified_without_overwrite(command, option, tmp_path, no_work, capsys):
    scenario = SCENARIOS.get((command, option))
    assert scenario is not None, f"'{command} {option}' writes files but has no scenario in SCENARIOS: add one"
    argv, outputs = scenario(tmp_path)
    for index, existing in enumerate(outputs):
        existing.parent.mkdir(parents=True, exist_ok=True)
        content = f"the user's file {index}".encode()
        existing.write_bytes(content)
        before = set(tmp_path.rglob("*"))
        code = main(argv)
        err = capsys.readouterr().err
        if command in SKIPS_PER_CASE:
            assert code == 0 and f"note: {existing.name.split('.')[0].removesuffix('_0000')}: already" in err, err
        else:
            assert code in (2, 3) and err.startswith("error: ") and "already" in err, (existing, code, err)
        assert "Traceback" not in err and existing.read_bytes() == content
        created = set(tmp_path.rglob("*")) - before
        assert not created, f"{command} {option} created {created} although it refused"
        existing.unlink()
