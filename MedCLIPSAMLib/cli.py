"""The ``medclipsam`` command line: segment, models (and more subcommands in their modules)."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import Cancelled, MedCLIPSAMError, OptionError, SettingError
from .outputs import add_output_option, add_overwrite_option, check_distinct, check_output, extension
from .setting_options import (SETTING_OPTIONS, TqdmProgress, add_setting_options, option_name, prompt_sentences,
                              settings_from_args)
from .settings import FAST_SALIENCY, Settings


class Parser(argparse.ArgumentParser):
    """argparse with our one-line ``error:`` message and exit 2, instead of a usage dump."""

    def error(self, message: str):
        message = re.sub(r"^argument (\S+): (?=must)", r"\1 ", message).removeprefix("argument ").rstrip(".")
        raise OptionError(f"{message[:1].upper()}{message[1:]}; see '{self.prog} --help'.")


def _prompts(args: argparse.Namespace) -> list:
    prompts: list = list(args.prompt or [])
    if args.prompt_file:
        prompts.append(prompt_sentences(args.prompt_file))
    if not prompts:
        raise OptionError("Give a prompt with --prompt TEXT (repeatable) or --prompt-file FILE.")
    return prompts


def _suffixed(path: Path, tag: str) -> Path:
    name = path.name
    ext = name[len(name) - len(extension(path)):] if extension(path) else ""
    slug = re.sub(r"[^a-z0-9]+", "_", tag.lower()).strip("_")
    return path.with_name(f"{name[: len(name) - len(ext)]}_{slug}{ext}")


def cpu_hint(settings: Settings, slices: int) -> str | None:
    """A note before a long CPU run at the paper's M2IB settings, so the user can choose --fast first."""
    from .pipeline import resolve_device

    paper = Settings()
    full = (settings.saliency_stride == 1 and settings.m2ib_samples == paper.m2ib_samples
            and settings.m2ib_steps == paper.m2ib_steps)
    if not full or slices < 8 or resolve_device(settings.device).type != "cpu":
        return None
    return (f"{slices} slices on the CPU at the paper's M2IB settings take several seconds each on a 2-core "
            "machine; "
            "--fast (saliency on every 4th slice, 3 noise samples) is several times quicker (docs/benchmarks.md).")


def cmd_segment(args: argparse.Namespace) -> int:
    """Everything is checked before a model loads, cheapest first (options, prompts, outputs, the input and
    what the options ask of it), so a mistake costs seconds, not a run."""
    from .dicom.seg import write_result_seg
    from .imageio import check_plain_2d, chosen_slices, read_volume, resolve_axis, write_label
    from .pipeline import check_prompts, prompt_name, resolve_device

    prompts = _prompts(args)
    settings = settings_from_args(args, prompt_name(prompts[0]) if len(prompts) == 1 else None)
    explicit = _server_options(args) if args.server else None
    names = [group[0] for group in check_prompts(prompts)]
    if not args.server:
        resolve_device(settings.device)
    label_path, saliency_paths = segment_outputs(args, names)
    volume = read_volume(args.input)
    for option, path in [("-o", label_path), *(("--saliency-out", p) for p in saliency_paths.values())]:
        check_plain_2d(path, option, volume.is_2d)
    count = volume.array.shape[resolve_axis(settings.axis, volume)]
    chosen = chosen_slices(count, settings.slice_range)
    progress = TqdmProgress(not args.quiet)
    try:
        if args.server:
            result = _segment_on_server(args, explicit, volume, prompts, progress)
        else:
            from .pipeline import Pipeline

            pipeline = Pipeline(settings, progress=progress)
            pipeline.check_model_files()  # every model file there (or downloaded) before any slow step
            pipeline.clip, pipeline.sam  # readable before any time estimate; SAM's encoder export comes last
            hint = cpu_hint(settings, len(chosen))
            if hint and not args.quiet:
                print(f"note: {hint}", file=sys.stderr)
            result = pipeline.run(volume, prompts, progress)
    finally:
        progress.close()
    for message in result.messages:
        print(f"note: {message}", file=sys.stderr)
    targets = [(label_path, result.labels, None), *((p, result.saliency[n], n) for n, p in saliency_paths.items())]
    written: list[str] = []
    try:
        for path, array, saliency_of in targets:
            if extension(path) == ".dcm":
                write_result_seg(path, array, result.names, volume, saliency_of, args.overwrite)
            else:
                write_label(array, volume.reference, path, overwrite=args.overwrite)
            written.append(str(path))
    except KeyboardInterrupt:
        raise Cancelled(f"interrupted while writing; written in full: {', '.join(written) or 'nothing'}; the "
                        "other outputs were not written.") from None
    from .faithfulness import format_score

    for index, name in enumerate(result.names, start=1):
        voxels = int(result.masks[name].sum())
        print(f"label {index}: '{name}'  voxels={voxels}  score={result.scores[name]:.3f}  "
              f"faithfulness={format_score(result.faithfulness.get(name))}  "
              f"slices_with_boxes={len(result.boxes[name])}")
    for name, path in saliency_paths.items():
        print(f"saliency '{name}' -> {path}")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"wrote {label_path} ({timing})")
    return 0


def segment_outputs(args: argparse.Namespace, names: list[str]) -> tuple[Path, dict[str, Path]]:
    """The label map's path and one saliency map's per prompt, each checked now: a known extension, not an
    input, not existing unless --overwrite, and no two the same."""
    inputs = [p for p in (args.input, args.prompt_file, args.token_file) if p]
    saliency: dict[str, Path] = {}
    if args.saliency_out:
        base = Path(args.saliency_out)
        saliency = {name: base if len(names) == 1 else _suffixed(base, name) for name in names}
    check_distinct([("-o", Path(args.output)), *(("--saliency-out", p) for p in saliency.values())])
    from .dicom.seg import RESULT_EXTENSIONS, check_dicom_output

    label = check_output(args.output, "-o", args.overwrite, inputs, RESULT_EXTENSIONS)
    maps = {name: check_output(p, "--saliency-out", args.overwrite, inputs, RESULT_EXTENSIONS)
            for name, p in saliency.items()}
    for option, path in [("-o", label), *(("--saliency-out", p) for p in maps.values())]:
        check_dicom_output(path, option, args.input)  # a SEG needs DICOM images to refer to
    return label, maps


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a --server run sends (only those given explicitly); refuses options the server owns."""
    from .settings import SERVER_FIELDS

    explicit = {field: getattr(args, dest) for dest, field in SETTING_OPTIONS.items()
                if getattr(args, dest, None) is not None}
    owned = [f"--{dest.replace('_', '-')}" for dest, field in SETTING_OPTIONS.items()
             if field in SERVER_FIELDS and field in explicit]
    if owned:
        raise OptionError(f"{', '.join(owned)} cannot be used with --server: the server chose its models and "
                          "device when it started (medclipsam serve --clip-model ... --device ...).")
    return {**FAST_SALIENCY, **explicit} if args.fast else explicit


def _segment_on_server(args: argparse.Namespace, explicit: dict[str, Any], volume, prompts: list,
                       progress: TqdmProgress):
    """The same run on a ``medclipsam serve`` engine: only the options given explicitly are sent."""
    from .client import EngineClient, is_server_url
    from .options import read_token

    if not is_server_url(args.server):
        raise OptionError(f"--server '{args.server}' is not an engine address: write it like http://127.0.0.1:8765.")
    token, chosen = read_token(args.token_file)
    if not chosen:
        raise OptionError("--server needs the server's token: --token-file FILE or MEDCLIPSAM_TOKEN.")
    client = EngineClient(args.server, token)
    return client.segment(volume, prompts, explicit, progress=progress, presets=not args.no_preset,
                          saliency=bool(args.saliency_out))


def cmd_models(args: argparse.Namespace) -> int:
    from .models.catalog import cache_dir, ensure_model, is_cached, load_catalog

    catalog = load_catalog()
    if args.download and args.download not in catalog:
        raise OptionError(f"--download '{args.download}' is not in the catalog; choose one of {', '.join(catalog)}.")
    if args.download:
        progress = TqdmProgress()
        try:
            folder = ensure_model(args.download, progress)
        finally:
            progress.close()
        print(f"{args.download}: ready in {folder}")
        return 0
    print(f"cache folder: {cache_dir()}")
    for key, entry in catalog.items():
        state = "bundled" if not entry.files else ("cached" if is_cached(entry) else "not downloaded")
        print(f"{key:11s} {entry.size_bytes / 1e6:8.0f} MB  {entry.licence:11s} {state:15s} {entry.title}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="medclipsam", description="Text-prompted medical image segmentation "
                                     "(BiomedCLIP + M2IB saliency + SAM).")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment a 2D image or a volume from a text prompt")
    seg.add_argument("input", help="image file, volume file (NIfTI, NRRD, MHA) or DICOM series folder")
    seg.add_argument("--prompt", "-p", action="append", help="what to segment; repeat for several labels")
    seg.add_argument("--prompt-file", help="text file of sentences averaged as one prompt (ensemble)")
    add_output_option(seg, "-o", "--output", required=True, help="label map (.nii.gz, .nrrd, .mha, .png; "
                      ".dcm: a DICOM SEG, for a DICOM input)")
    add_output_option(seg, "--saliency-out", help="also write the saliency map(s) here (several prompts: "
                      "NAME_<prompt>.EXT)")
    add_overwrite_option(seg)
    seg.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    seg.add_argument("--server", metavar="URL", help="run on a 'medclipsam serve' engine, e.g. http://127.0.0.1:8765 "
                     "(a GPU machine through an SSH tunnel)")
    seg.add_argument("--token-file", help="with --server: file holding the server's token (or set MEDCLIPSAM_TOKEN)")
    add_setting_options(seg)
    seg.set_defaults(func=cmd_segment)

    models = sub.add_parser("models", help="list the model catalog, or download a model into the cache")
    models.add_argument("--download", metavar="NAME", help="biomedclip, vit_b, vit_l or vit_h")
    models.set_defaults(func=cmd_models)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable]:
    """Subcommands that live with their own module (evaluation, benchmark, ...)."""
    registrars = []
    for module_name in ("evaluate", "benchmark", "finetune.commands", "weak.export",
                        "weak.train", "weak.ensemble", "weak.label", "review.status", "server.serve",
                        "server_benchmarks.benchmark", "web.cli", "web.benchmark"):
        try:
            module = __import__(f"{__package__}.{module_name}", fromlist=["register_cli"])
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{module_name}":
                raise
            continue
        registrars.append(module.register_cli)
    return registrars


THIRD_PARTY_NOISE = (r"Importing from timm\.models\.", r"`torch\.jit\.interface` is deprecated")
"""Deprecation notes that timm and torch print on every start; they are not the user's to act on."""


def quiet_third_party_warnings() -> None:
    import warnings

    for message in THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


INTERRUPTED = "interrupted; every file is written whole or not at all, so none is half-written."


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a problem the user can fix is one ``error:`` line and its exit code, never a
    traceback (Ctrl-C during start-up included)."""
    args = None
    try:
        quiet_third_party_warnings()
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SettingError as exc:  # a setting's check names the field; say the option the user typed
        return _fail(exc.named(option_name(exc.field, args)), exc.exit_code)
    except MedCLIPSAMError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail(INTERRUPTED, Cancelled.exit_code)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
