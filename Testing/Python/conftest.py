"""Shared fixtures: tiny offline CLIP, real LiteMedSAM, synthetic images, optional shared data."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

try:  # Load torchvision (and with it triton's LLVM) before any test renders a VTK view: triton imported after
    import torchvision  # noqa: F401  Mesa's llvmpipe has put its own LLVM in the process segfaults (seen when
except ImportError:  # test_web_browser's random CLIP came after test_web's in-process page)
    pass

# No test may reach a model hub: any accidental lookup fails loudly instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(os.environ.get("MEDCLIPSAM_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test when a user's checkout lacks it."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared evaluation data not available ({path})")
    return path


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory) -> Path:
    """A tiny BiomedCLIP-shaped model (vit_tiny + 2-layer BERT) written in the hub layout."""
    from MedCLIPSAMLib.models.random_clip import make_random_clip

    folder = tmp_path_factory.mktemp("tiny_clip")
    make_random_clip(folder, size="tiny", seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_folder):
    from MedCLIPSAMLib.models.clip import load_clip_folder

    return load_clip_folder(tiny_clip_folder)


@pytest.fixture(scope="session")
def litemedsam():
    from MedCLIPSAMLib.models.sam import load_sam

    return load_sam("litemedsam", None, "cpu")


@pytest.fixture
def fast_settings(tiny_clip_folder):
    """Pipeline settings cheap enough for CPU tests (fewer M2IB steps and samples)."""
    from MedCLIPSAMLib.settings import Settings

    return Settings(clip_model=str(tiny_clip_folder), sam_backend="litemedsam", device="cpu",
                    bottleneck_layer=9, m2ib_steps=2, m2ib_samples=2, refine_rounds=1)


def disk_image(height: int = 96, width: int = 128, center=(40, 70), radius: int = 18, seed: int = 0) -> np.ndarray:
    """A bright disk on a textured dark background (uint8), and nothing else."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = 40 + 15 * rng.standard_normal((height, width))
    image[(yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2] = 200
    return np.clip(image, 0, 255).astype(np.uint8)


def disk_mask(height: int = 96, width: int = 128, center=(40, 70), radius: int = 18) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2


ENGINE_TOKEN = "test-token-0123456789abcdef"
ENGINE_MAX_UPLOAD = 5_000_000


class LiveServer:
    """uvicorn serving the real engine app on a free loopback port, in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        from MedCLIPSAMLib.server.connections import GuardedH11Protocol

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # as serve binds
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.token = ENGINE_TOKEN
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http=GuardedH11Protocol))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    def ready(self) -> bool:  # the engine interface the Slicer run uses
        return True

    def failure(self):
        return None

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def engine_server(tiny_clip_folder):
    """A real engine server (tiny random CLIP, LiteMedSAM) on 127.0.0.1 for the whole test session."""
    from MedCLIPSAMLib.server.app import Limits, create_app
    from MedCLIPSAMLib.server.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(clip_model=str(tiny_clip_folder), device="cpu"))
    engine.preload("litemedsam")
    live = LiveServer(create_app(engine, ENGINE_TOKEN, Limits(max_upload_bytes=ENGINE_MAX_UPLOAD)))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def text_ignoring_clip_folder(tiny_clip_folder, tmp_path_factory) -> Path:
    """The tiny CLIP with a text tower whose output ignores the text (degenerate.py), saved as a model folder."""
    import shutil

    import torch

    from degenerate import ignore_text
    from MedCLIPSAMLib.models.clip import WEIGHT_NAMES, load_clip_folder

    folder = tmp_path_factory.mktemp("text_ignoring_clip")
    shutil.copytree(tiny_clip_folder, folder, dirs_exist_ok=True)
    model = ignore_text(load_clip_folder(folder).model)
    torch.save(model.state_dict(), folder / WEIGHT_NAMES[0])
    return folder


@pytest.fixture(scope="session")
def text_ignoring_server(text_ignoring_clip_folder):
    """A real engine server on 127.0.0.1 serving that degenerate model (LiteMedSAM)."""
    from MedCLIPSAMLib.server.app import create_app
    from MedCLIPSAMLib.server.engine import Engine, EngineConfig

    live = LiveServer(create_app(Engine(EngineConfig(clip_model=str(text_ignoring_clip_folder), device="cpu")),
                                 ENGINE_TOKEN))
    yield live
    live.stop()
