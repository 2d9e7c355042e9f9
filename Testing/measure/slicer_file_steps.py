"""How long Slicer's main thread waits in the review and training-set file steps on a CT-sized case (slicer-core).

A 300x512x512 int16 case in a review dataset (review_cases.py layout). Timed in one run, on the same files:
the review load in one go, Accept in one go (the old way) against
Accept through a child process (``file_jobs.start_accept``: only the segment export and an .npy write on the
main thread), Add to training set and Load prediction the same two ways, and the review load through a child
process (``CaseLoad``; the longest single timer step is what the window waits for).

    PYTHONPATH=. python Testing/measure/slicer_file_steps.py [--slices 300]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Python"))


def timed(label: str, action):
    start, cpu = time.perf_counter(), time.thread_time()
    result = action()
    print(f"{label}: {time.perf_counter() - start:.3f} s wall, {time.thread_time() - cpu:.3f} s main-thread CPU",
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args()
    import slicer

    from review_cases import make_dataset
    from slicer_gui_steps import empty_scene
    from test_slicer_review import replace_segment
    from MedCLIPSAMLib.slicer.file_jobs import CaseLoad, PredictionLoad, start_accept, start_add_to_training_set
    from MedCLIPSAMLib.slicer.mrml import add_to_training_set, load_prediction
    from MedCLIPSAMLib.slicer.review import ReviewSession, show_case

    scene, colors = empty_scene()
    scene.RegisterNodeClass(slicer.vtkMRMLSegmentEditorNode())
    root = Path(tempfile.mkdtemp(prefix="medclipsam-file-steps-"))
    folder = make_dataset(root, predictions=False)
    shape = (args.slices, 512, 512)
    rng = np.random.default_rng(0)
    array = (rng.integers(-20, 20, size=shape, dtype=np.int16) + 40)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.7, 1.25))
    label = np.zeros(shape, np.uint8)
    label[shape[0] // 3:shape[0] // 2, 150:300, 100:250] = 1
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(image)
    sitk.WriteImage(image, str(folder / "imagesTr" / "b_low_0000.nii.gz"))
    sitk.WriteImage(label_image, str(folder / "labelsTr" / "b_low.nii.gz"))
    entropy = sitk.GetImageFromArray(rng.random(shape, dtype=np.float32))
    entropy.CopyInformation(image)
    sitk.WriteImage(entropy, str(root / "entropy.nii.gz"))
    print(f"case {shape} int16 ({array.nbytes / 1e6:.0f} MB), label and float32 entropy map", flush=True)

    session = ReviewSession.open(scene, folder)
    loaded = timed("review load (one go, main thread)", lambda: session.load("b_low"))
    timed("show_case", lambda: show_case(scene, loaded))
    edited = label.copy()
    edited[shape[0] // 2, 100:120, 100:120] = 1
    replace_segment(session, edited)
    timed("Accept in one go (before)", session.accept)
    edited[shape[0] // 2, 130:140, 100:120] = 1
    replace_segment(session, edited)
    job = timed("Accept through a child process: main-thread part", lambda: start_accept(session, sys.executable))
    start = time.perf_counter()
    job.wait(600)
    print(f"  the child process then took {time.perf_counter() - start:.1f} s (Slicer responsive meanwhile)")
    volume = scene.GetNodeByID(loaded.volume_node_id)
    segmentation = scene.GetNodeByID(loaded.segmentation_node_id)
    timed("Add to training set in one go (before)", lambda: add_to_training_set(
        volume, segmentation, loaded.segment_id, root / "raw" / "Dataset020_A", "case1", "brain tumor"))
    job = timed("Add to training set through a child process: main-thread part", lambda: start_add_to_training_set(
        sys.executable, volume, segmentation, loaded.segment_id, root / "raw" / "Dataset021_B", "case1",
        "brain tumor"))
    start = time.perf_counter()
    job.wait(600)
    print(f"  the child process then took {time.perf_counter() - start:.1f} s (Slicer responsive meanwhile)")
    record = timed("Load prediction with entropy in one go (before)", lambda: load_prediction(
        scene, volume, folder / "labelsTr" / "b_low.nii.gz", root / "entropy.nii.gz"))
    record.undo()
    stepped("Load prediction through a child process, applied a part per tick", PredictionLoad(
        sys.executable, scene, volume, folder / "labelsTr" / "b_low.nii.gz", root / "entropy.nii.gz"))
    session.load("c_mid", discard_edits=True)
    stepped("Review load through a child process, placed a part per tick", CaseLoad(session, sys.executable, "b_low"))


def stepped(label: str, job) -> None:
    """What the panel's timer does: the longest single step is what Slicer's window waits for."""
    longest = cpu_longest = 0.0
    start = time.perf_counter()
    while True:
        tick, cpu = time.perf_counter(), time.thread_time()
        finished = job.step()
        longest = max(longest, time.perf_counter() - tick)
        cpu_longest = max(cpu_longest, time.thread_time() - cpu)
        if finished:
            break
        time.sleep(0.05)
    print(f"{label}: longest main-thread step {longest:.3f} s wall, {cpu_longest:.3f} s CPU; "
          f"{time.perf_counter() - start:.1f} s in all{' (' + job.error + ')' if job.error else ''}", flush=True)


if __name__ == "__main__":
    main()
