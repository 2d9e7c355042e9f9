"""One job at a time on the engine's device; the others wait in a queue and can see their place.

A job is a function of (progress, cancel). One thread takes jobs in order, records their
progress, stops them between batches on cancel (the pipeline checks the event), and keeps the
outcome until it is collected or expires. Nothing here knows about HTTP or models.

``medclipsam serve`` runs the jobs on the process's main thread (``run_forever``) and HTTP on a
side thread: measured on this 2-core CPU, LiteMedSAM in a non-main thread kept both cores busy only
~1.7 of 2 (CPU/wall), against 1.97 on the main thread, and the whole run took ~30% longer.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import Cancelled, MedCLIPSAMError

log = logging.getLogger("medclipsam.server")


class ShuttingDown(MedCLIPSAMError):
    """The queue takes no more jobs: the server is stopping (HTTP 503)."""

    status = 503

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
Work = Callable[[Callable[[str, int, int], None], threading.Event], Any]


@dataclass
class Job:
    id: str
    work: Work
    state: str = QUEUED
    stage: str = ""
    done: int = 0
    total: int = 0
    finished_stages: list[tuple[str, int]] = field(default_factory=list)
    """Stages already left behind, with their totals, so a client polling slower than a short stage still sees it."""
    result: Any = None
    error: str = ""
    error_kind: str = ""
    """Name of the MedCLIPSAMError subclass (InputError, ModelError, ...) so a client can raise the same."""
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    touched: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU time of the whole server process while the job ran (all threads: compute and request handling)."""
    summary: dict[str, Any] = field(default_factory=dict)
    """What the work reports besides its result bytes (per-prompt faithfulness), shown in the job's status."""
    seen_finished: bool = False
    """A client has asked about the job since it finished (so a stopping server may go)."""


class JobQueue:
    """FIFO of jobs run by one worker thread; finished jobs expire ``ttl`` seconds after last use."""

    def __init__(self, ttl: float = 3600.0, worker_thread: bool = True):
        """``worker_thread=False``: the caller runs the jobs itself with ``run_forever`` (the main thread)."""
        self.ttl = ttl
        self._jobs: dict[str, Job] = {}
        self._waiting: deque[Job] = deque()
        self._lock = threading.Condition()
        self._stopped = False
        self._stop_reason = ""
        if worker_thread:
            threading.Thread(target=self.run_forever, name="medclipsam-jobs", daemon=True).start()

    def submit(self, work: Work) -> Job:
        with self._lock:
            if self._stopped:
                raise ShuttingDown(f"The server takes no new jobs: {self._stop_reason or 'it is stopping'}.")
            self._expire()
            job = Job(id=secrets.token_hex(8), work=work)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._lock.notify_all()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
            if job is not None:
                job.touched = time.monotonic()
                job.seen_finished = job.seen_finished or job.state in FINISHED
            return job

    def position(self, job: Job) -> int:
        """0 while running or finished; 1 for the next job to run, and so on."""
        with self._lock:
            return next((i + 1 for i, waiting in enumerate(self._waiting) if waiting is job), 0)

    def cancel(self, job: Job) -> None:
        with self._lock:
            job.cancel.set()
            if job.state == QUEUED:
                self._waiting.remove(job)
                self._finish(job, CANCELLED, error=self._cancelled_because("Cancelled before it started."),
                             kind="Cancelled")

    def drop_result(self, job: Job) -> None:
        """The client has the result: free its memory now, keep the job's status until it expires."""
        with self._lock:
            job.result = None
            job.touched = time.monotonic()

    def forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            running = sum(job.state == RUNNING for job in self._jobs.values())
            return {"queued": len(self._waiting), "running": running}

    def expire(self) -> None:
        """Drop finished jobs (and their results) unused for ``ttl`` (run by the server's sweeper)."""
        with self._lock:
            self._expire()

    def stop(self, reason: str = "") -> None:
        """Take no more jobs, cancel the waiting and the running ones (``reason`` goes into their error)."""
        with self._lock:
            self._stopped = True
            self._stop_reason = self._stop_reason or reason
            for job in list(self._waiting):
                self.cancel(job)
            for job in self._jobs.values():
                job.cancel.set()
            self._lock.notify_all()

    def wait_until_seen(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until the clients of jobs that ended while stopping have asked how."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while time.monotonic() < deadline and any(
                    job.state in FINISHED and not job.seen_finished and job.error.startswith("Cancelled: ")
                    for job in self._jobs.values()):
                self._lock.wait(0.05)

    def _cancelled_because(self, message: str) -> str:
        if self._stop_reason:
            return f"Cancelled: {self._stop_reason}; nothing was changed. Run it again once the server is back."
        return message

    def _finish(self, job: Job, state: str, result: Any = None, error: str = "", kind: str = "") -> None:
        job.state, job.result, job.error, job.error_kind = state, result, error, kind
        job.touched = time.monotonic()

    def _expire(self) -> None:
        now = time.monotonic()
        for job_id, job in list(self._jobs.items()):
            if job.state in FINISHED and now - job.touched > self.ttl:
                del self._jobs[job_id]

    def _next(self) -> Job | None:
        with self._lock:
            while not self._waiting and not self._stopped:
                self._lock.wait()
            if self._stopped:
                return None
            job = self._waiting.popleft()
            job.state = RUNNING
            return job

    def run_forever(self) -> None:
        """Run jobs in order until ``stop()``."""
        while (job := self._next()) is not None:
            start, cpu_start = time.monotonic(), time.process_time()

            def progress(stage: str, done: int, total: int, job: Job = job) -> None:
                if job.stage and stage != job.stage:
                    job.finished_stages.append((job.stage, job.total))
                job.stage, job.done, job.total = stage, int(done), int(total)

            try:
                result = job.work(progress, job.cancel)
                outcome = (CANCELLED, None, "Cancelled.", "Cancelled") if job.cancel.is_set() else (DONE, result, "", "")
            except Cancelled as exc:
                outcome = (CANCELLED, None, str(exc) or "Cancelled.", "Cancelled")
            except MedCLIPSAMError as exc:  # a missing model's one-line form for clients (no server paths)
                outcome = (FAILED, None, getattr(exc, "server_detail", None) or str(exc), type(exc).__name__)
            except Exception as exc:  # a bug: keep serving, tell the client, log the traceback here
                log.exception("job %s failed", job.id)
                outcome = (FAILED, None, f"Internal engine error ({type(exc).__name__}: {exc}); see the server log.",
                           "MedCLIPSAMError")
            job.seconds, job.cpu_seconds = time.monotonic() - start, time.process_time() - cpu_start
            with self._lock:
                if outcome[0] == CANCELLED:
                    outcome = (CANCELLED, None, self._cancelled_because(outcome[2]), "Cancelled")
                self._finish(job, *outcome)
