"""The text run in the page: Segment, its progress with stage names, Cancel, and the result in the scene.

The run is the Slicer module's own ``slicer.run.SegmentRun``: each ``step()`` does one short request or one
short piece of scene work, so an asyncio task steps it between the page's websocket messages the way the
module's Qt timer does between repaints; a cancelled or failed run leaves the scene as it was.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from ..errors import MedCLIPSAMError
from ..slicer.run import APPLIED, FAILED, SegmentRun, finished_text
from .engine import EngineHolder
from .state import PanelState
from .workspace import Workspace

UPLOAD_TICK_S = 0.005
POLL_S = 0.1
SAVED_PROMPT_SEPARATORS = ("\n", ";")


def split_prompts(text: str) -> list[str]:
    """Several prompts, as the CLI's repeated --prompt: one per line (or separated by ';'), blanks dropped."""
    for separator in SAVED_PROMPT_SEPARATORS[1:]:
        text = text.replace(separator, SAVED_PROMPT_SEPARATORS[0])
    seen, prompts = set(), []
    for line in text.split(SAVED_PROMPT_SEPARATORS[0]):
        prompt = " ".join(line.split())
        if prompt and prompt.casefold() not in seen:
            seen.add(prompt.casefold())
            prompts.append(prompt)
    return prompts


class SegmentLogic:
    """Segment / Cancel for the panel; ``on_applied(record)`` runs once a result is in the scene."""

    def __init__(self, panel: PanelState, workspace: Workspace, engine: EngineHolder, settings: dict[str, Any],
                 presets: bool, flush: Callable[[], Any], on_applied: Callable[[Any], None],
                 busy_elsewhere: Callable[[], str | None] = lambda: None):
        self.panel, self.workspace, self.engine = panel, workspace, engine
        self.settings, self.presets, self.flush = dict(settings), presets, flush
        self.on_applied, self.busy_elsewhere = on_applied, busy_elsewhere
        self.run: SegmentRun | None = None
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self.run is not None and not self.run.finished

    def say(self, text: str, kind: str = "info") -> None:
        self.panel.message, self.panel.message_kind = text, kind

    def segment(self) -> None:
        """Start a run, or say in the page why not (nothing loaded, no prompt, one already running)."""
        if self.running:
            return self.say("A segmentation is already running: wait for it, or press Cancel first.", "warning")
        if self.workspace.volume_node is None:
            return self.say("Load an image or volume first (Open image or volume).", "error")
        prompts = split_prompts(self.panel.prompt or "")
        if not prompts:
            return self.say("Type what to segment in Prompt (several structures: one per line).", "error")
        other = self.busy_elsewhere()
        if other:
            return self.say(other, "warning")
        gone = self.engine.gone()
        if gone:
            self.panel.engine_gone = True
            return self.say(f"The engine is not running ({gone.splitlines()[0]}); press Restart the engine.", "error")
        try:
            self.run = SegmentRun(self.engine.get(), self.workspace.scene, self.workspace.volume_node, prompts,
                                  self.settings, segmentation_node=self.workspace.segmentation_node,
                                  show_saliency=True, presets=self.presets)
        except (MedCLIPSAMError, ValueError) as exc:
            return self.say(str(exc), "error")
        self.panel.running, self.panel.progress, self.panel.stage = True, -1, self.run.progress.text
        self.say(f"Segmenting {', '.join(prompts)}...")
        self._task = asyncio.ensure_future(self._drive(self.run))

    def cancel(self) -> None:
        if not self.running:
            return self.say("Nothing is running to cancel.")
        self.run.cancel()
        self._finish(self.run)

    async def _drive(self, run: SegmentRun) -> None:
        while not run.finished:
            run.step()
            if run.finished:
                break
            progress = run.progress
            self.panel.stage = progress.text
            self.panel.progress = 100.0 * progress.done / progress.total if progress.total else -1
            self.flush()
            await asyncio.sleep(UPLOAD_TICK_S if run.uploading else POLL_S)
        if self.run is run and self.panel.running:
            self._finish(run)
            self.flush()

    def _finish(self, run: SegmentRun) -> None:
        self.panel.running, self.panel.progress = False, 0
        self.panel.stage = run.progress.text
        text, kind = finished_text(run)
        if run.state == FAILED and self.engine.gone():
            self.panel.engine_gone = True
            text = f"{text} The engine stopped: press Restart the engine."
        self.say(text, kind)
        if run.state == APPLIED:
            for segment_id, name in zip(run.record.segment_ids, run.result.names):
                self.workspace.note(segment_id, name, run.result.faithfulness.get(name))
            try:
                self.on_applied(run)
            except Exception:  # the result is in the scene; a display problem must not hide it
                logging.exception("Showing the result failed")
