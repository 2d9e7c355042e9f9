"""`medclipsam benchmark-web`: how long a correction takes in the page, from the browser (click to overlay updated),
beside the server's own interaction latency (``server_benchmarks.interaction_benchmark``, the baseline of the same run).

A ``medclipsam web`` child process on the bundled sample (random-weight tiny CLIP, LiteMedSAM on the CPU), a
headless chromium. After Segment and one box (which encodes the shown slice), include and exclude clicks alternate
on that slice; each is timed in the page itself: from the click's mousedown to the load of the first slice-view
frame whose segment colour differs from the frame before the click.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .browser import browser_page, colour_mask, drag, view_pixels, wait_for_message, web_process

SAMPLE = Path(__file__).resolve().parents[2] / "Resources" / "Samples" / "brain1_image.nrrd"
CLICKS = [(0.47, 0.45, "Include click"), (0.55, 0.52, "Exclude click"), (0.52, 0.40, "Include click"),
          (0.45, 0.55, "Exclude click")]
"""Points on the axial view (fractions of its size) near the sample's centre, alternating include and exclude."""
FRAME_PROBE = """
() => {
  const img = document.querySelectorAll('img.image-display-area')[0];
  if (window.__mcs) return;
  const canvas = document.createElement('canvas');
  const context = canvas.getContext('2d', { willReadFrequently: true });
  window.__mcs = { frames: [], down: [] };
  img.addEventListener('mousedown', () => window.__mcs.down.push(performance.now()), true);
  img.addEventListener('load', () => {
    const t = performance.now();
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    context.drawImage(img, 0, 0);
    const d = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {  // the segment's green: G well above R and B
      if (d[i + 1] - d[i] > 25 && d[i + 1] - d[i + 2] > 25) n++;
    }
    window.__mcs.frames.push([t, n]);
  });
}
"""


def _click_latency(page, at, wait_s: float = 30.0) -> float | None:
    """ms from mousedown to the first frame whose segment colour changed; None when the click changed nothing."""
    frames_before = page.evaluate("() => window.__mcs.frames.length")
    colour_before = page.evaluate("() => { const f = window.__mcs.frames; return f.length ? f[f.length - 1][1] : -1 }")
    box = page.locator("img.image-display-area").nth(0).bounding_box()
    page.mouse.click(box["x"] + at[0] * box["width"], box["y"] + at[1] * box["height"])
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        result = page.evaluate(
            "([k, c]) => { const m = window.__mcs; const t0 = m.down[m.down.length - 1];"
            " const f = m.frames.slice(k).find(f => f[0] > t0 && f[1] !== c); return f ? f[0] - t0 : null }",
            [frames_before, colour_before])
        if result is not None:
            return float(result)
        page.wait_for_timeout(20)
    return None


def run_web_benchmark(clicks: int = 8, server_repeats: int = 8) -> dict[str, Any]:
    from ..models.random_clip import make_random_clip
    from ..server_benchmarks.interaction_benchmark import run_interaction_benchmark

    with tempfile.TemporaryDirectory(prefix="medclipsam-web-bench-") as tmp:
        clip = Path(tmp) / "clip"
        make_random_clip(clip, size="tiny", seed=0)
        args = [str(SAMPLE), "--clip-model", str(clip), "--sam", "litemedsam", "--device", "cpu", "--slices",
                "11-13", "--fast"]
        with web_process(args, Path(tmp) / "web.log") as url, browser_page(url) as page:
            page.get_by_label("Loaded volume", exact=True).wait_for()
            page.get_by_role("textbox", name="Prompt").fill("brain tumor")
            page.get_by_role("button", name="Segment", exact=True).click()
            wait_for_message(page, r"^(Done|Check the result)")
            page.get_by_label("Saliency overlay").uncheck()
            page.evaluate(FRAME_PROBE)
            page.get_by_role("button", name="Box").click()
            start = time.perf_counter()
            drag(page, (0.38, 0.33), (0.62, 0.62))  # the first interaction encodes the slice
            page.wait_for_function("() => /Corrections applied: [1-9]/.test(document.body.innerText)",
                                   timeout=120_000)
            first_ms = 1000 * (time.perf_counter() - start)
            page.wait_for_timeout(1000)
            browser_ms, unchanged = [], 0
            for i in range(clicks):
                x, y, tool = CLICKS[i % len(CLICKS)]
                page.get_by_role("button", name=tool).click()
                page.wait_for_timeout(300)
                latency = _click_latency(page, (x, y))
                if latency is None:
                    unchanged += 1
                else:
                    browser_ms.append(latency)
                page.wait_for_timeout(500)
            page_server_ms = float(page.get_by_label("Corrections applied", exact=True).inner_text()
                                   .rsplit("last: ", 1)[-1].split(" ms")[0] or 0)
            _ = view_pixels, colour_mask  # the same probes as the browser tests
    server = run_interaction_benchmark(repeats=server_repeats)
    return {"clicks": clicks, "browser_ms": browser_ms, "clicks_without_change": unchanged,
            "browser_ms_median": statistics.median(browser_ms) if browser_ms else None,
            "first_box_ms": first_ms, "page_server_last_ms": page_server_ms,
            "server_interaction_ms_median": server["interaction_ms_median"],
            "server_engine_ms_median": server["engine_ms_median"], "server_repeats": server_repeats}


def format_web_report(report: dict[str, Any]) -> str:
    median = report["browser_ms_median"]
    return "\n".join([
        f"in the page (chromium, click to overlay updated), LiteMedSAM on an encoded slice: median "
        f"{median:.0f} ms over {len(report['browser_ms'])} clicks "
        f"({', '.join(f'{v:.0f}' for v in report['browser_ms'])} ms; {report['clicks_without_change']} clicks changed "
        f"nothing); first box (encodes the slice) {report['first_box_ms']:.0f} ms" if median is not None else
        "in the page: no click changed the overlay",
        f"the page's server side (event in, segment written): last click {report['page_server_last_ms']:.0f} ms",
        f"server's own interaction latency (same machine, same run): median {report['server_interaction_ms_median']:.0f}"
        f" ms through HTTP, engine {report['server_engine_ms_median']:.0f} ms ({report['server_repeats']} interactions)",
        f"goal: under 500 ms median in the page: {'met' if median is not None and median < 500 else 'NOT met'}"])


def cmd_benchmark_web(args) -> int:
    report = run_web_benchmark(args.clicks, args.server_repeats)
    print(format_web_report(report))
    if args.json:
        print(json.dumps(report))
    return 0


def register_cli(sub) -> None:
    from ..options import at_least

    p = sub.add_parser("benchmark-web", help="correction latency in the web page (from chromium) beside the server's")
    p.add_argument("--clicks", type=at_least(1), default=8, help="clicks timed in the page (default 8)")
    p.add_argument("--server-repeats", type=at_least(1), default=8, help="interactions timed on the server")
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    p.set_defaults(func=cmd_benchmark_web)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="medclipsam benchmark-web")
    register_cli(parser.add_subparsers(dest="command", required=True))
    sys.exit(cmd_benchmark_web(parser.parse_args(["benchmark-web", *sys.argv[1:]])))
