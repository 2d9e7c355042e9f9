"""How long Slicer's GUI thread waits in one Segment run: every ``SegmentRun`` step, timed, over the slicer-core MRML classes.

A 512x512x300 int16 CT-like volume in a slicer-core scene; the engine is the real server process
(``python -m MedCLIPSAMLib.server``, tiny random CLIP or --clip-model, LiteMedSAM, CPU). The run
segments one slice (the compute is not what is measured) but the result is full-size, so the
upload, the result transfer, the decode, the overlay and the segment import are the real sizes.

Printed per run: the longest step per state (s) and the longest of all; for comparison, in the same
run, the old way (whole result with labels and 16-bit saliency read and applied in one tick); the
import of a lung-sized segment alone; then the same run through a loopback proxy throttled to
--mbps (a remote engine on a slow link), whose longest step should stay under one poll (0.25 s);
(--rss-runs) the engine's resident memory after 1 and after N runs; and (--corrections) box corrections of a
lung-sized segment as the Correct section's timer drives them.

    PYTHONPATH=. python Testing/measure/slicer_gui_steps.py [--mbps 5] [--rss-runs 10] [--corrections 4]
"""
from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SHAPE = (300, 512, 512)
QUICK = {"m2ib_steps": 2, "m2ib_samples": 2, "refine_rounds": 1, "slice_range": [150, 150]}


def empty_scene():
    """A scene as Slicer's would be for segments: the segmentation converters registered, a colour logic."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                 slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        factory.RegisterConverterRule(rule())
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    return scene, colors


def ct_scene(shape=SHAPE):
    """A scene holding a CT-like int16 volume: a body ellipse, two dark lungs, a bright lesion."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    scene, colors = empty_scene()
    z, y, x = shape
    yy, xx = np.mgrid[:y, :x]
    body = ((yy - y / 2) / (0.42 * y)) ** 2 + ((xx - x / 2) / (0.47 * x)) ** 2 <= 1
    lungs = (((yy - y / 2) / (0.3 * y)) ** 2 + ((np.abs(xx - x / 2) - 0.2 * x) / (0.15 * x)) ** 2) <= 1
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[lungs] = -850
    rng = np.random.default_rng(0)
    array = np.repeat(plane[None], z, axis=0)
    array += rng.integers(-20, 20, size=array.shape, dtype=np.int16)
    array[140:170, int(y * 0.45):int(y * 0.52), int(x * 0.3):int(x * 0.36)] = 120
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    image = vtk.vtkImageData()
    image.SetDimensions(x, y, z)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.ravel()
    node.SetAndObserveImageData(image)
    node.SetSpacing(0.7, 0.7, 1.25)
    return scene, node, lungs


def drive(run, poll_s: float = 0.25, quick_s: float = 0.01) -> float:
    """What the panel's QTimer does; returns the wall time."""
    start = time.perf_counter()
    while not run.finished:
        run.step()
        time.sleep(quick_s if run.uploading else poll_s)
    return time.perf_counter() - start


def report(label: str, run, wall: float) -> None:
    steps = ", ".join(f"{state} {seconds:.3f}/{run.step_cpu_seconds.get(state, 0):.3f}"
                      for state, seconds in run.step_seconds.items())
    print(f"{label}: {run.state} in {wall:.1f} s wall; longest step {run.longest_step_s:.3f} s wall, "
          f"{max(run.step_cpu_seconds.values(), default=0):.3f} s GUI-thread CPU (per state wall/CPU: {steps})",
          flush=True)
    if run.error:
        print(f"  error: {run.error}", flush=True)


class ThrottledProxy:
    """A TCP proxy on 127.0.0.1 that passes at most ``rate`` bytes/s each way per connection (a slow link)."""

    def __init__(self, target: tuple[str, int], rate: float):
        self.target, self.rate = target, rate
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        start, sent = time.perf_counter(), 0
        try:
            while data := source.recv(16384):
                sink.sendall(data)
                sent += len(data)
                ahead = sent / self.rate - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()


def old_way_seconds(engine, scene, node) -> float:
    """The previous result path, in the same run: the whole result (labels, 16-bit saliency) read, decoded to float
    and applied in one tick."""
    from MedCLIPSAMLib.client import EngineClient, Upload
    from MedCLIPSAMLib.slicer.mrml import apply_result
    from MedCLIPSAMLib.slicer.run import input_array, spacing_kji

    client = EngineClient(engine.url, engine.token, timeout=120)
    upload = Upload.of(input_array(node), spacing_kji(node))
    client.upload(upload)
    job = client.submit(upload.id, ["lesion"], QUICK)
    while client.status(job["id"])["state"] not in ("done", "failed", "cancelled"):
        time.sleep(0.25)
    start, cpu = time.perf_counter(), time.thread_time()
    result = client.result(job["id"])
    record = apply_result(scene, node, result.masks, None, result.saliency)
    seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
    record.undo()
    return seconds, cpu


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def engine_pid(engine) -> int:
    """The server's own Python (the launcher's child when started through PythonSlicer; here the process itself)."""
    return engine.process.pid


def correction_steps(engine, scene, node, lungs, interactions: int) -> None:
    """Corrections on the CT as the panel's timer drives them: the longest ``Correction.step()`` (its answer is
    applied inside a step: two whole-volume exports and a whole-segment write) and the longest edit check."""
    from MedCLIPSAMLib.client import EngineClient
    from MedCLIPSAMLib.slicer.correct import Correction
    from MedCLIPSAMLib.slicer.mrml import apply_result

    while not engine.ready():  # started by an earlier part of the script, or just now
        time.sleep(0.2)
    mask = np.zeros(SHAPE, np.uint8)
    mask[20:280] = lungs  # a lung-sized segment to correct (19 M voxels)
    record = apply_result(scene, node, {"lungs": mask})
    segmentation = scene.GetNodeByID(record.segmentation_node_id)
    start = time.perf_counter()
    correction = Correction(EngineClient(engine.url, engine.token, timeout=120), scene, node, segmentation,
                            record.segment_ids[0], axis=0)
    opened_s = time.perf_counter() - start
    ticks = []
    while correction.busy:
        started, cpu = time.perf_counter(), time.thread_time()
        correction.step()
        ticks.append((time.perf_counter() - started, time.thread_time() - cpu))
        time.sleep(0.01)
    print(f"correction opened on a lung-sized segment: constructor {opened_s:.3f} s, longest step while opening "
          f"{max(t[0] for t in ticks):.3f} s wall / {max(t[1] for t in ticks):.3f} s CPU", flush=True)
    z, y, x = SHAPE
    longest = longest_cpu = check = 0.0
    for index in range(interactions):
        correction.box(150, (int(x * 0.28), int(y * 0.43), int(x * 0.38), int(y * 0.54)) if index % 2 == 0
                       else (int(x * 0.26), int(y * 0.41), int(x * 0.40), int(y * 0.56)))
        while correction.busy:
            started, cpu = time.perf_counter(), time.thread_time()
            correction.step()
            longest = max(longest, time.perf_counter() - started)
            longest_cpu = max(longest_cpu, time.thread_time() - cpu)
            time.sleep(0.01)
        started = time.perf_counter()
        correction.edited_outside()
        check = max(check, time.perf_counter() - started)
    print(f"{interactions} box corrections: longest step {longest:.3f} s wall / {longest_cpu:.3f} s GUI-thread CPU "
          f"(applying an answer), edit check {check:.3f} s; errors: {correction.error or 'none'}", flush=True)
    correction.close()
    record.undo(force=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-model", help="CLIP folder (default: a tiny random CLIP made for this run)")
    parser.add_argument("--mbps", type=float, default=5.0, help="throttled link speed in MB/s (0: skip)")
    parser.add_argument("--rss-runs", type=int, default=10, help="runs for the memory check (0: skip)")
    parser.add_argument("--ttl", type=float, default=300.0, help="the local engine's --ttl")
    parser.add_argument("--corrections", type=int, default=4, help="box corrections on a lung-sized segment (0: skip)")
    args = parser.parse_args()

    from MedCLIPSAMLib.slicer.engine_process import LocalEngine, RemoteEngine
    from MedCLIPSAMLib.slicer.run import SegmentRun

    clip = args.clip_model
    if clip is None:
        from MedCLIPSAMLib.models.random_clip import make_random_clip

        clip = tempfile.mkdtemp(prefix="medclipsam_tiny_clip_")
        make_random_clip(Path(clip), size="tiny", seed=0)
    t = time.perf_counter()
    scene, node, lungs = ct_scene()
    print(f"load average {Path('/proc/loadavg').read_text().split()[0]} on {__import__('os').cpu_count()} cores "
          "(wall times include waiting for a core; the GUI-thread CPU times do not)", flush=True)
    print(f"volume {SHAPE} int16 ({np.prod(SHAPE) * 2 / 1e6:.0f} MB) built in {time.perf_counter() - t:.1f} s",
          flush=True)
    engine = LocalEngine(sys.executable, ["--clip-model", clip, "--sam", "litemedsam", "--device", "cpu",
                                          "--ttl", str(args.ttl)])
    engine.start()
    try:
        t = time.perf_counter()
        constructor_s = 0.0
        first = None
        rss = []
        for index in range(max(1, args.rss_runs)):
            start = time.perf_counter()
            run = SegmentRun(engine, scene, node, ["lesion"], QUICK)
            constructor_s = max(constructor_s, time.perf_counter() - start)
            wall = drive(run)
            report(f"local run {index + 1}", run, wall)
            if first is None:
                first = run
            if run.record is not None:
                run.record.undo()
            rss.append(rss_kb(engine_pid(engine)))
            print(f"  engine RSS after run {index + 1}: {rss[-1] / 1024:.0f} MB", flush=True)
            if args.rss_runs == 0:
                break
        print(f"SegmentRun() constructor (a view of the voxels, no copy) longest: {constructor_s:.3f} s", flush=True)
        if len(rss) > 1:
            print(f"engine RSS after {len(rss)} runs / after 1: {rss[-1] / rss[0]:.3f} "
                  f"({rss[-1] / 1024:.0f} MB vs {rss[0] / 1024:.0f} MB)", flush=True)

        wall, cpu = old_way_seconds(engine, scene, node)
        print(f"old way, same engine: whole result (labels, 16-bit saliency) read and applied in one tick: {wall:.3f} s "
              f"wall, {cpu:.3f} s GUI-thread CPU", flush=True)

        from MedCLIPSAMLib.slicer.mrml import ResultApplier

        mask = np.zeros(SHAPE, np.uint8)
        mask[20:280] = lungs
        applier = ResultApplier(scene, node, {"lungs": mask})
        longest = longest_cpu = 0.0
        while True:
            start, cpu = time.perf_counter(), time.thread_time()
            done = applier.step()
            longest = max(longest, time.perf_counter() - start)
            longest_cpu = max(longest_cpu, time.thread_time() - cpu)
            if done:
                break
        print(f"lung-sized segment ({int(mask.sum()) / 1e6:.0f} M voxels) imported: longest step {longest:.3f} s wall, "
              f"{longest_cpu:.3f} s GUI-thread CPU", flush=True)
        applier.record.undo()

        if args.corrections:
            correction_steps(engine, scene, node, lungs, args.corrections)

        if args.mbps:
            host, port = engine.url.rsplit("/", 1)[1].split(":")
            proxy = ThrottledProxy((host, int(port)), args.mbps * 1e6)
            try:
                remote = RemoteEngine(proxy.url, engine.token)
                # the volume is new to the server (other spacing), so it is uploaded over the slow link too
                node.SetSpacing(0.7, 0.7, 1.3)
                run = SegmentRun(remote, scene, node, ["lesion"], QUICK)
                wall = drive(run)
                report(f"remote run over {args.mbps:g} MB/s", run, wall)
            finally:
                proxy.stop()
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
