"""Request latency on a kept-alive connection: the engine server's socket as ``serve`` binds it (IPPROTO_TCP, so
asyncio sets TCP_NODELAY) against the same server on a socket made with proto 0 (before: Nagle held each
answer's body until the client's delayed ACK, ~40 ms), and a new connection per request for reference.

    PYTHONPATH=. python Testing/measure/keepalive.py [--requests 50]
"""
from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

TOKEN = "keepalive-token-0123456789"


def serve(app, proto: int):
    import uvicorn

    from MedCLIPSAMLib.server.connections import GuardedH11Protocol

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http=GuardedH11Protocol))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, sock.getsockname()[1]


def timings(port: int, count: int, keep_alive: bool) -> list[float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    seconds = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(count):
        if not keep_alive:
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start = time.perf_counter()
        connection.request("GET", "/info", headers=headers)
        answer = connection.getresponse()
        answer.read()
        seconds.append(time.perf_counter() - start)
        assert answer.status == 200, answer.status
    connection.close()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    from MedCLIPSAMLib.models.random_clip import make_random_clip
    from MedCLIPSAMLib.server.app import create_app
    from MedCLIPSAMLib.server.engine import Engine, EngineConfig

    clip = tempfile.mkdtemp(prefix="medclipsam_tiny_clip_")
    make_random_clip(Path(clip), size="tiny", seed=0)
    engine = Engine(EngineConfig(clip_model=clip, device="cpu"))
    for label, proto in (("serve's socket (IPPROTO_TCP, TCP_NODELAY)", socket.IPPROTO_TCP),
                         ("before: socket proto 0 (no TCP_NODELAY)", 0)):
        server, port = serve(create_app(engine, TOKEN), proto)
        timings(port, 5, True)  # warm-up
        kept = timings(port, args.requests, keep_alive=True)
        fresh = timings(port, args.requests, keep_alive=False)
        print(f"{label}: GET /info median {statistics.median(kept) * 1e3:.1f} ms kept alive "
              f"(max {max(kept) * 1e3:.1f}), {statistics.median(fresh) * 1e3:.1f} ms on a new connection each",
              flush=True)
        server.should_exit = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
