"""Resuming only the action that asked for an install; a correction that waits for a starting engine."""
import sys
import time

from MedCLIPSAMLib.slicer.engine_process import LocalEngine, RemoteEngine
from MedCLIPSAMLib.slicer.waiting import FAILED, READY, STARTING, EngineWait, Resume


def test_only_the_action_that_asked_for_the_install_resumes_and_only_after_success():
    ran = []
    resume = Resume()
    resume.ask(lambda: ran.append("correct box"), "Box correction")
    assert resume.finish(succeeded=False) is None and resume.finish(succeeded=True) is None, "handed back once"
    resume.ask(lambda: ran.append("download"), "Download models now")
    resume.finish(succeeded=True)()
    assert ran == ["download"], "never a Segment run nobody asked for"
    assert Resume().finish(True) is None


def test_a_correction_waits_for_a_starting_engine_with_its_progress_then_goes_on(tiny_clip_folder, tmp_path):
    engine = LocalEngine(sys.executable, ["--clip-model", str(tiny_clip_folder), "--sam", "litemedsam",
                                          "--device", "cpu"], tmp_path)
    engine.start()
    ran, states, texts = [], [], set()
    wait = EngineWait(engine, lambda: ran.append(engine.url))
    try:
        deadline = time.monotonic() + 180
        while wait.tick() == STARTING:
            assert time.monotonic() < deadline, engine.log_tail()
            states.append(STARTING)
            texts.add(wait.progress.text)
            time.sleep(0.05)
        assert wait.state == READY, wait.error
        assert ran == [engine.url] and engine.url.startswith("http://127.0.0.1:")
        assert states and all(text.startswith("Starting the engine") for text in texts), texts
        assert wait.tick() == READY and len(ran) == 1, "run once"
    finally:
        engine.stop()


def test_an_engine_that_fails_to_start_ends_the_wait_with_its_message(tmp_path):
    engine = LocalEngine(sys.executable, ["--no-such-option"], tmp_path)
    engine.start()
    ran = []
    wait = EngineWait(engine, lambda: ran.append(1))
    deadline = time.monotonic() + 60
    while wait.tick() == STARTING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert wait.state == FAILED and wait.error and not ran
    engine.stop()
    remote = EngineWait(RemoteEngine("http://127.0.0.1:1", "t"), lambda: ran.append(2))
    assert remote.tick() == READY and ran == [2]
    cancelled = EngineWait(engine, lambda: ran.append(3))
    cancelled.cancel()
    assert cancelled.tick() == FAILED and ran == [2]
