"""`medclipsam serve`: load the models once and answer segmentation jobs over HTTP.

Binds 127.0.0.1 unless told otherwise; a non-loopback address needs a token chosen by the
user (``--token-file`` or ``MEDCLIPSAM_TOKEN``), never a generated one that only this console
saw, and of at least 16 characters wherever it comes from. Prints ``MedCLIP-SAM engine listening
on http://HOST:PORT`` once the socket accepts connections, so a parent process (the Slicer module)
can read where it is. SIGTERM (service managers) and SIGINT both stop it cleanly: no new jobs, the
running one cancelled and its client told so, exit 0.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from ..errors import InputError, MedCLIPSAMError
from ..options import read_token
from ..wire import READY_LINE, TOKEN_ENV

MIN_TOKEN_LENGTH = 16
SHUTDOWN_REASON = "server shutting down"
GRACE_SECONDS = 5.0
"""How long a stopping server keeps answering so the clients of cancelled jobs can read why."""


def check_token_strength(token: str, chosen: bool, host: str, token_file: str | None) -> None:
    """One rule for a token from --token-file or the environment: a non-loopback address needs one chosen by the
    user (not generated and shown on this console only) of at least MIN_TOKEN_LENGTH characters."""
    if is_loopback(host):
        return
    if not chosen:
        raise MedCLIPSAMError(f"Refusing to listen on {host} without a token of your choosing: give "
                              f"--token-file FILE (or set {TOKEN_ENV}) and hand that token to the clients.")
    if len(token) < MIN_TOKEN_LENGTH:
        where = f"The token in '{token_file}'" if token_file else f"The token in ${TOKEN_ENV}"
        raise InputError(f"{where} is shorter than {MIN_TOKEN_LENGTH} characters, too short for {host}; use a long "
                         "random string (python -c \"import secrets; print(secrets.token_urlsafe(32))\").")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, made before the models load (a taken port is said at once).

    IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for sockets whose ``proto`` says
    TCP, and without it each keep-alive answer waited 40 ms (uvicorn writes headers and body apart; Nagle held
    the body until the client's delayed ACK)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"Cannot listen on {host}:{port} ({exc.strerror}); choose another --port "
                         "(0 picks a free one).") from None
    sock.listen(64)
    return sock


def process_alive(pid: int) -> bool:
    if sys.platform == "win32":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: a zombie (exited, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def exit_with_parent(parent_pid: int) -> None:
    """Stop when Slicer (``parent_pid``) is gone, or (POSIX) the launcher between us and Slicer, even after a
    crash; started before the models load, so a Slicer closed during start-up leaves nothing behind."""
    first_parent = os.getppid()

    def watch() -> None:
        while process_alive(parent_pid) and (sys.platform == "win32" or os.getppid() == first_parent):
            time.sleep(2.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..settings import BIOMEDCLIP_HUB_ID
    from .app import Limits, create_app
    from .connections import GuardedH11Protocol, raise_file_limit
    from .engine import Engine, EngineConfig
    from .jobs import JobQueue

    token, chosen = read_token(args.token_file)
    check_token_strength(token, chosen, args.host, args.token_file)
    config = EngineConfig(clip_model=args.clip_model or BIOMEDCLIP_HUB_ID, sam_checkpoint=args.sam_checkpoint,
                          device=args.device, compile=args.compile)
    engine = Engine(config)
    if args.parent_pid:
        exit_with_parent(args.parent_pid)
    sock = bind(args.host, args.port)  # a taken port is refused before minutes of model loading
    from ..models.sam import resolve_backend
    from .startup import loading_reporter

    sam = resolve_backend(args.sam, engine.device)  # 'auto' is decided before anything is downloaded
    chosen_sam = f"{sam} ('auto' on {engine.device.type})" if args.sam == "auto" else sam
    print(f"Loading models on {engine.device} (CLIP: {config.clip_model}; SAM: {chosen_sam}; pid {os.getpid()})...",
          file=sys.stderr, flush=True)
    engine.preload(sam, progress=loading_reporter())
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1e6), ttl_seconds=args.ttl,
                    max_stored_bytes=int(args.max_stored_mb * 1e6),
                    max_unfinished_bytes=int(args.max_unfinished_mb * 1e6),
                    max_json_bytes=int(args.max_request_kb * 1e3))
    jobs = JobQueue(ttl=args.ttl, worker_thread=False)
    app = create_app(engine, token, limits, allow_shutdown=bool(args.parent_pid), jobs=jobs)
    host, port = sock.getsockname()[:2]
    raise_file_limit()
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=False, http=GuardedH11Protocol))
    app.state.request_shutdown = lambda: setattr(server, "should_exit", True)

    def serve_http() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            jobs.stop()

    http = threading.Thread(target=serve_http, name="medclipsam-http", daemon=True)
    http.start()
    while not server.started and http.is_alive():
        time.sleep(0.01)
    if not chosen:
        print(f"token: {token}", flush=True)
    shown = f"[{host}]" if ":" in host else host
    print(f"{READY_LINE} http://{shown}:{port}", flush=True)
    stop_on_signals(jobs)
    try:
        jobs.run_forever()  # compute on the main thread (see server/jobs.py for why)
    except KeyboardInterrupt:
        jobs.stop(SHUTDOWN_REASON)
    jobs.wait_until_seen(GRACE_SECONDS)  # clients polling a cancelled job read "Cancelled: server shutting down"
    server.should_exit = True
    http.join(10)
    return 0


def stop_on_signals(jobs) -> None:
    """SIGTERM and SIGINT: stop the queue (from another thread: the handler may interrupt the queue's own lock),
    so the running job is cancelled at its next check and ``run_forever`` returns."""
    def stop(signum, frame) -> None:
        threading.Thread(target=jobs.stop, args=(SHUTDOWN_REASON,), name="medclipsam-stop", daemon=True).start()

    for name in ("SIGTERM", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)


def register_cli(sub) -> None:
    from ..options import at_least, number

    p = sub.add_parser("serve", help="run the engine as a server for Slicer or other clients (local or GPU machine)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=at_least(0, 65535), default=8765, help="port (0: a free port, printed on start)")
    p.add_argument("--token-file", help="file holding the bearer token clients must send (default: "
                   f"${TOKEN_ENV}, else a random token printed on start)")
    p.add_argument("--clip-model", help="hf-hub id, local open_clip folder, or fine-tuned checkpoint")
    p.add_argument("--sam", default="auto", choices=("auto", "litemedsam", "vit_b", "vit_l", "vit_h"),
                   help="SAM backend loaded at start (jobs may ask for another)")
    p.add_argument("--sam-checkpoint", help="local SAM ViT checkpoint (.pth) instead of the cached download")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--compile", action="store_true", help="torch.compile the M2IB network")
    p.add_argument("--max-upload-mb", type=number(0, low_open=True), default=2000.0, help="largest volume upload accepted (MB)")
    p.add_argument("--max-stored-mb", type=number(0, low_open=True), default=8000.0,
                   help="memory for uploaded volumes (array and geometry; least recently used go first; default 8000)")
    p.add_argument("--max-unfinished-mb", type=number(0, low_open=True), default=4000.0,
                   help="declared size of all uploads in progress together, kept in temporary files (default 4000)")
    p.add_argument("--max-request-kb", type=number(0, low_open=True), default=1000.0,
                   help="body of a request other than volume bytes (JSON; default 1000)")
    p.add_argument("--ttl", type=number(0, low_open=True), default=3600.0,
                   help="seconds an unused volume, unfinished upload or result is kept (expired by a timer)")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=cmd_serve)
