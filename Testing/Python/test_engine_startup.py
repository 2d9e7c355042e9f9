"""What a starting engine reports while it loads models, and how the panel shows it (no torch in the reader)."""
import io
import sys
import time

from MedCLIPSAMLib.models.catalog import download_file
from MedCLIPSAMLib.server.startup import last_loading, loading_reporter
from MedCLIPSAMLib.slicer.engine_process import LocalEngine
from MedCLIPSAMLib.slicer.run import starting_progress


def test_a_real_download_is_reported_in_lines_the_panel_reads_back_in_mb(tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(bytes(range(256)) * 12_000)  # 3 MB: three 1 MB blocks
    stream = io.StringIO()
    download_file(source.as_uri(), tmp_path / "cache" / "sam_vit_x.pth", progress=loading_reporter(stream, every_s=0))
    lines = stream.getvalue().splitlines()
    assert lines[-1] == "MedCLIP-SAM loading: 3072000 3072000 download sam_vit_x.pth" and len(lines) == 3
    assert last_loading("noise\n" + stream.getvalue() + "a warning\n") == ("download sam_vit_x.pth", 3072000, 3072000)
    assert last_loading("MedCLIP-SAM loading: x y z\n") is None


def test_reporting_is_throttled_but_the_end_always_shows():
    stream = io.StringIO()
    report = loading_reporter(stream, every_s=60)
    for done in range(0, 101, 10):
        report("download clip", done, 100)
    assert stream.getvalue().splitlines() == ["MedCLIP-SAM loading: 0 100 download clip",
                                              "MedCLIP-SAM loading: 100 100 download clip"]


def test_the_panel_shows_a_download_in_mb_else_the_engines_newest_log_line(tmp_path):
    engine = LocalEngine(sys.executable, log_folder=tmp_path)
    engine.log_path.write_text("Loading models on cuda (CLIP: hub; SAM: vit_h ('auto' on cuda); pid 1)...\n")
    assert starting_progress(engine).text.startswith("Starting the engine: Loading models on cuda")
    with engine.log_path.open("a") as log:
        log.write("MedCLIP-SAM loading: 1280000000 2564550879 download sam_vit_h_4b8939.pth\n")
    progress = starting_progress(engine)
    assert progress.text == "Download sam_vit_h_4b8939.pth 1280 of 2565 MB"
    assert progress.bar_format == "Download sam_vit_h_4b8939.pth: 1280/2565 MB"


def test_a_starting_engine_says_which_sam_auto_chose_before_loading(tiny_clip_folder, tmp_path):
    engine = LocalEngine(sys.executable, ["--clip-model", str(tiny_clip_folder), "--sam", "auto", "--device", "cpu"],
                         log_folder=tmp_path)
    engine.start()
    try:
        deadline = time.monotonic() + 180
        while not engine.ready():
            assert engine.failure() is None and time.monotonic() < deadline, engine.log_tail()
            time.sleep(0.1)
        assert "SAM: litemedsam ('auto' on cpu)" in engine.log_path.read_text()
        assert engine.startup_progress() is None, "a ready engine reports no loading"
    finally:
        engine.stop()
