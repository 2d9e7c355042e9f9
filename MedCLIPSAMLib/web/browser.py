"""Driving the page from a real browser (Debian's chromium through playwright), for the browser tests and the
latency benchmark: start ``medclipsam web`` as a child process, open it headless, read a slice view's pixels."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+/)")
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def chromium_path() -> str | None:
    return CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")


@contextmanager
def web_process(args: Sequence[str], log_path: Path, start_timeout: float = 120.0) -> Iterator[str]:
    """``medclipsam web ARGS`` on a free port; yields its address once it prints it; stopped afterwards."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "MedCLIPSAMLib.cli", "web", *args, "--port", "0"],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            match = LISTENING.search(log_path.read_text(errors="replace"))
            if match:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"medclipsam web did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextmanager
def browser_page(url: str, width: int = 1400, height: int = 900):
    """A headless chromium page at ``url`` (a new empty profile each time)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="medclipsam-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": width, "height": height})
        try:
            page = context.new_page()
            page.goto(url)
            yield page
        finally:
            context.close()


def view_pixels(page, index: int = 0) -> np.ndarray:
    """The RGB pixels of the ``index``-th view on the page (0: the main, axial view), as the user sees them."""
    from PIL import Image

    element = page.locator("img.image-display-area").nth(index)
    return np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("RGB")).astype(np.int16)


def colour_mask(pixels: np.ndarray, rgb: Sequence[float], margin: int = 25) -> np.ndarray:
    """Pixels tinted towards a segment's colour: their channel order matches the colour's (a grey image has none).
    ``rgb`` in 0..1 like Slicer's segment colours."""
    order = np.argsort(rgb)  # weakest to strongest channel of the colour
    low, mid, high = (pixels[..., c] for c in order)
    return (high - low > margin) & (high >= mid)


def message(page) -> str:
    locator = page.get_by_label("Message", exact=True)
    return locator.inner_text() if locator.count() and locator.is_visible() else ""


def wait_for_message(page, pattern: str, timeout_s: float = 300.0) -> str:
    """The page's message once it matches ``pattern`` (a regular expression)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = message(page)
        if re.search(pattern, text):
            return text
        page.wait_for_timeout(200)
    raise AssertionError(f"no message matching {pattern!r} within {timeout_s:.0f} s; the page says: {message(page)!r}")


def applied_count(page) -> int:
    text = page.get_by_label("Corrections applied", exact=True).inner_text()
    return int(re.search(r"Corrections applied: (\d+)", text).group(1))


def drag(page, start: tuple[float, float], end: tuple[float, float], index: int = 0) -> None:
    """A left-button drag between two points given as fractions of the view's width and height."""
    box = page.locator("img.image-display-area").nth(index).bounding_box()
    x0, y0 = box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"]
    x1, y1 = box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=3)
    page.mouse.move(x1, y1, steps=3)
    page.mouse.up()


def click(page, at: tuple[float, float], index: int = 0) -> None:
    box = page.locator("img.image-display-area").nth(index).bounding_box()
    page.mouse.click(box["x"] + at[0] * box["width"], box["y"] + at[1] * box["height"])
