"""``medclipsam web [IMAGE | VOLUME | DICOM-FOLDER]``: the page on 127.0.0.1 with a local engine (default) or a
running ``medclipsam serve`` (``--engine URL --token-file F``). Only argparse at import: trame and slicer-core
load when the command runs, so the CLI starts (and lists this command) without the ``web`` extra."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import InputError, MedCLIPSAMError, OptionError

SERVER_OPTIONS = {"clip_model": "--clip-model", "sam_checkpoint": "--sam-checkpoint", "device": "--device"}
"""Options of the segment command that become options of the local engine process (they name its files and
hardware); the other method options are sent with every Segment."""
WEB_EXTRA_HINT = 'The web page needs the "web" extra: pip install -e ".[web]" (trame-slicer).'


def split_options(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """(local engine's ``serve`` options, job settings) from the segment command's model options."""
    from ..setting_options import SETTING_OPTIONS
    from ..settings import FAST_SALIENCY, SERVER_FIELDS

    explicit = {field: getattr(args, dest) for dest, field in SETTING_OPTIONS.items()
                if getattr(args, dest, None) is not None}
    engine_args: list[str] = []
    for field, option in SERVER_OPTIONS.items():
        if field in explicit:
            engine_args += [option, str(explicit[field])]
    if explicit.get("compile"):
        engine_args.append("--compile")
    if "sam_backend" in explicit:
        engine_args += ["--sam", str(explicit["sam_backend"])]
    job = {k: v for k, v in explicit.items() if k not in SERVER_FIELDS}
    if args.fast:
        job = {**FAST_SALIENCY, **job}
    return engine_args, job


def cmd_web(args: argparse.Namespace) -> int:
    from ..options import read_token
    from ..server.serve import check_token_strength, is_loopback
    from ..slicer.panel import LOCAL_TTL_S

    engine_args, job = split_options(args)
    token, chosen = read_token(args.token_file)
    page_token = None
    if not is_loopback(args.host):
        check_token_strength(token, chosen, args.host, args.token_file)
        page_token = token  # beyond this computer, only a browser that knows the token gets the page's state
    if args.engine:
        from ..client import is_server_url

        if not is_server_url(args.engine):
            raise InputError(f"--engine '{args.engine}' is not an engine address: write it like "
                             "http://127.0.0.1:8765.")
        if not chosen:
            raise InputError("--engine needs the server's token: --token-file FILE or MEDCLIPSAM_TOKEN.")
        owned = [option for field, option in SERVER_OPTIONS.items() if field in job or option in engine_args]
        if owned:
            raise InputError(f"{', '.join(owned)} cannot be used with --engine: the server chose its models and "
                             "device when it started (medclipsam serve --clip-model ... --device ...).")
    if args.input:
        from ..imageio import read_size

        from pathlib import Path

        if not Path(args.input).is_dir():
            read_size(args.input)  # a missing or unreadable file is one line now, before anything starts
    if args.pacs_token_file:
        from ..dicom.dicomweb import read_token as read_pacs_token

        if not args.dicomweb:
            raise OptionError("--pacs-token-file needs --dicomweb URL (the PACS the token is for).")
        read_pacs_token(args.pacs_token_file)  # an empty or unreadable token file: one line now, not in the page
    try:
        from .app import WebApp, WebConfig
        from .engine import EngineHolder
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("trame", "trame_slicer", "trame_server", "slicer", "vtk"):
            raise MedCLIPSAMError(f"{WEB_EXTRA_HINT} ({exc.name} is missing)") from None
        raise
    engine = (EngineHolder(url=args.engine, token=token) if args.engine
              else EngineHolder(local_args=[*engine_args, "--ttl", str(LOCAL_TTL_S)]))
    config = WebConfig(engine, job, presets=not args.no_preset, input_path=args.input,
                       max_upload_mb=args.max_upload_mb, export_folder=args.export_folder or "",
                       dicomweb_url=args.dicomweb, pacs_token_file=args.pacs_token_file, pacs_cache=args.pacs_cache)
    app = WebApp(config)

    def ready(port: int) -> None:
        print(f"listening on http://{args.host}:{port}/", flush=True)
        if page_token:
            print(f"open http://{args.host}:{port}/?secret=<the token> (the page refuses other connections)",
                  flush=True)

    argv, sys.argv = sys.argv, [sys.argv[0], "--timeout", "0", *(["--authKey", page_token] if page_token else [])]
    try:
        app.start(args.host, args.port, ready)
    finally:
        sys.argv = argv
    return 0


def register_cli(sub) -> None:
    from ..setting_options import add_setting_options
    from ..options import at_least, number

    p = sub.add_parser("web", help="the workflow in a browser: load, prompt, Segment, correct, export, review")
    p.add_argument("input", nargs="?", help="image file, volume file (NIfTI, NRRD, MHA) or DICOM series folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer "
                   "only; any other needs --token-file)")
    p.add_argument("--port", type=at_least(0, 65535), default=8080, help="port (0: a free port, printed on start)")
    p.add_argument("--engine", metavar="URL", help="use a running 'medclipsam serve' (default: start a local engine)")
    p.add_argument("--token-file", help="the engine's token with --engine; the page's too, beyond loopback")
    p.add_argument("--max-upload-mb", type=number(0, low_open=True), default=512.0,
                   help="largest upload the page accepts (MB)")
    # Not an output to refuse: Export gives a taken name the next number, so nothing there is ever replaced.
    p.add_argument("--export-folder", help="where the page's Export puts its files by default (a taken name gets "
                   "the next number)")
    p.add_argument("--dicomweb", metavar="URL", help="a DICOMweb root (PACS) whose studies the page lists and opens, "
                   "e.g. http://127.0.0.1:8042/dicom-web")
    p.add_argument("--pacs-token-file", help="file holding a bearer token for the --dicomweb server")
    p.add_argument("--pacs-cache", help="folder the opened series are retrieved into (default: a folder in the "
                   "system's temporary folder)")
    add_setting_options(p)
    p.set_defaults(func=cmd_web)
