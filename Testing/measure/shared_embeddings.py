"""What sharing SAM embeddings between text runs and correction sessions saves, on the server's own code path
(Engine, EmbeddingStore, RunEmbeddings, the session's SAM) in one process, without HTTP.

    PYTHONPATH=$PWD python Testing/measure/shared_embeddings.py [--image PNG] [--volume NRRD --slices 8-16]

For each case: a text run on a fresh store (encodes its SAM slices), the same run again (reuses them), then a
session's box on a slice the text run encoded, against the same box on a fresh store (each after one warm-up
run and box on a throwaway store, so first-call costs are not counted as savings). The tiny random CLIP
stands in for BiomedCLIP (the saliency stage is then short; SAM's encoder, what is shared, is real LiteMedSAM).
Prints one JSON line per case with per-stage seconds; compare within one run (ratios) on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from MedCLIPSAMLib.imageio import normalize_intensity, read_volume
from MedCLIPSAMLib.interactive.session import InteractionSession
from MedCLIPSAMLib.interactive.shared_embeddings import EmbeddingStore, RunEmbeddings, embedding_key
from MedCLIPSAMLib.models.random_clip import make_random_clip
from MedCLIPSAMLib.server.engine import Engine, EngineConfig

ROOT = Path(__file__).resolve().parents[2]
QUICK = {"m2ib_steps": 2, "m2ib_samples": 2, "refine_rounds": 1, "axis": 0}


def text_run(engine: Engine, store: EmbeddingStore, volume, volume_id: str, extra: dict) -> dict:
    settings = engine.settings_for(["tumour"], QUICK | extra, presets=False)
    shared = RunEmbeddings(store, volume_id, settings.sam_checkpoint, settings.bf16)
    start = time.perf_counter()
    result = engine.run(volume, ["tumour"], settings, lambda *a: None, threading.Event(), shared)
    return {"seconds": round(time.perf_counter() - start, 3),
            "sam_encoder_s": round(result.timings.get("sam_encoder", 0.0), 3),
            "sam_decoder_s": round(result.timings.get("sam_decoder", 0.0), 3), **shared.summary(),
            "stages_s": {k: round(v, 2) for k, v in result.timings.items() if k not in ("sam_encoder", "sam_decoder")},
            "_labels": result.labels, "_slice": min(result.boxes["tumour"], default=None)}


def session_box(engine: Engine, store: EmbeddingStore, volume, volume_id: str, z: int) -> dict:
    sam, settings = engine.session_sam("auto")
    key = embedding_key(volume_id, 0, None, sam, settings.sam_checkpoint, settings.bf16)
    cache = store.cache(key, sam, lambda: np.moveaxis(normalize_intensity(volume.array, None), 0, 0))
    session = InteractionSession(sam, volume, axis=0, cache=cache)
    height, width = session.slice_shape
    before, start = cache.encoded_count, time.perf_counter()
    answer = session.box(z, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return {"seconds": round(time.perf_counter() - start, 3), "encoded": cache.encoded_count - before,
            "_mask": answer.slices.get(z)}


def measure(engine: Engine, name: str, volume, extra: dict, repeats: int) -> dict:
    warm = text_run(engine, EmbeddingStore(), volume, "w" * 64, extra)  # first-call costs (model loads, ONNX
    session_box(engine, EmbeddingStore(), volume, "w" * 64, warm["_slice"])  # sessions) out of the comparison
    clean = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    pairs, identical = [], True
    for repeat in range(repeats):  # each pair on a fresh store; the median pair is reported
        store, volume_id = EmbeddingStore(), f"{name}{repeat}".ljust(64, "0")
        first = text_run(engine, store, volume, volume_id, extra)
        second = text_run(engine, store, volume, volume_id, extra)
        z = first["_slice"]
        after_run = session_box(engine, store, volume, volume_id, z)
        alone = session_box(engine, EmbeddingStore(), volume, volume_id + "x", z)
        identical &= bool(np.array_equal(first["_labels"], second["_labels"])) and (
            after_run["_mask"] is None and alone["_mask"] is None or np.array_equal(after_run["_mask"], alone["_mask"]))
        pairs.append({"first_text_run": clean(first), "second_text_run": clean(second),
                      "saved_s": round(first["seconds"] - second["seconds"], 3),
                      "box_after_text_run": clean(after_run), "box_on_fresh_store": clean(alone)})
    median = lambda key, sub=None: float(np.median([p[key][sub] if sub else p[key] for p in pairs]))  # noqa: E731
    return {"case": name, "shape": list(volume.array.shape), "repeats": repeats, "identical_masks": identical,
            "median_first_s": median("first_text_run", "seconds"), "median_second_s": median("second_text_run", "seconds"),
            "median_saved_s": median("saved_s"),
            "median_encoder_first_s": median("first_text_run", "sam_encoder_s"),
            "median_box_after_text_run_s": median("box_after_text_run", "seconds"),
            "median_box_fresh_s": median("box_on_fresh_store", "seconds"), "pairs": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=Path("/work/shared/data/breast_ultrasound/benign_101.png"))
    parser.add_argument("--volume", type=Path, default=ROOT / "Resources" / "Samples" / "brain1_image.nrrd")
    parser.add_argument("--slices", default="8-16", help="slice range of the volume's text run (FIRST-LAST)")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of text runs per case (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        make_random_clip(Path(folder), size="tiny", seed=0)
        engine = Engine(EngineConfig(clip_model=folder, device="cpu"))
        engine.preload("litemedsam")
        first, last = (int(v) for v in args.slices.split("-"))
        cases = []
        if args.image.exists():
            cases.append(("2d", read_volume(args.image), {}))
        cases.append(("volume", read_volume(args.volume), {"slice_range": [first, last]}))
        for name, volume, extra in cases:
            print(json.dumps(measure(engine, name, volume, extra, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
