"""The engine process Slicer starts for itself, and the choice between it and a remote server."""
import sys
import time

import pytest

from MedCLIPSAMLib.client import EngineClient, EngineError
from MedCLIPSAMLib.errors import InputError
from MedCLIPSAMLib.slicer.engine_process import EngineChoice, RemoteEngine


def wait_ready(engine, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not engine.ready():
        assert engine.failure() is None, engine.failure()
        assert time.monotonic() < deadline, engine.log_tail()
        time.sleep(0.1)


def test_the_local_engine_is_reused_while_its_options_stay_and_restarted_when_they_change(tiny_clip_folder, tmp_path):
    choice = EngineChoice(lambda: sys.executable, tmp_path)
    args = ["--clip-model", str(tiny_clip_folder), "--sam", "litemedsam", "--device", "cpu"]
    try:
        first = choice.get("local", args)
        assert choice.get("local", list(args)) is first
        wait_ready(first)
        assert EngineClient(first.url, first.token).info()["clip_model"] == str(tiny_clip_folder)
        second = choice.get("local", args[:-1] + ["auto"])
        assert second is not first and not first.running(), "the old engine must stop"
        wait_ready(second)
        assert EngineClient(second.url, second.token).info()["device"] == "cpu"
        with pytest.raises(EngineError) as refused:
            EngineClient(second.url, first.token).info()  # each engine has its own token
        assert refused.value.status == 401
    finally:
        choice.stop()
    assert choice.local is None and not second.running()


def test_a_remote_engine_needs_a_url_and_a_token():
    choice = EngineChoice(lambda: pytest.fail("no local engine should start"))
    remote = choice.get("remote", url=" http://gpu:8765/ ", token=" abc ")
    assert remote == RemoteEngine("http://gpu:8765", "abc") and remote.ready() and remote.failure() is None
    with pytest.raises(InputError, match="is not a URL"):
        choice.get("remote", url="gpu:8765", token="abc")
    with pytest.raises(InputError, match="token"):
        choice.get("remote", url="http://gpu:8765", token=" ")


def test_replacing_or_stopping_the_engine_in_the_background_never_waits(tiny_clip_folder, tmp_path):
    """What the panel does (a device or SAM change, Stop the engine): the old engine gets SIGTERM and is polled, so
    Slicer's main thread does not wait for it; it is gone within its grace period."""
    from MedCLIPSAMLib.slicer.engine_process import STOP_GRACE_S

    choice = EngineChoice(lambda: sys.executable, tmp_path, background_stop=True)
    args = ["--clip-model", str(tiny_clip_folder), "--sam", "litemedsam", "--device", "cpu"]
    try:
        first = choice.get("local", args)
        wait_ready(first)
        start = time.monotonic()
        second = choice.get("local", args + ["--ttl", "60"])
        assert time.monotonic() - start < 0.5 and second is not first
        deadline = time.monotonic() + STOP_GRACE_S + 5
        while choice.reap():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not first.running() and first.url is None
        wait_ready(second)
        start = time.monotonic()
        choice.stop(wait=False)
        assert time.monotonic() - start < 0.5 and choice.local is None and choice.stopping
    finally:
        choice.stop()
    assert not choice.stopping and not second.running()
