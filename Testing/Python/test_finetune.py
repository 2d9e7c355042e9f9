"""Fine-tuning end to end, and the proof that saliency finds what the prompt names.

A tiny open_clip model (tiny ViT at 112 px + tiny BERT, random init, offline) is trained with
DHN-NCE on synthetic images of a bright disk or a dark square with captions naming the shape.
Retrieval must improve over the untrained model; then, on held-out images showing both
shapes, the M2IB map for the disk must peak in the disk and the one for the square in the
square, and the full pipeline with the real LiteMedSAM must segment the disk. A random-weight
model cannot pass this, so it shows the saliency, prompt and SAM stages are wired right.
"""
import json

import numpy as np
import pytest
import torch

from shapes import draw, write_pairs
from MedCLIPSAMLib.errors import InputError, OptionError
from MedCLIPSAMLib.finetune.data import clean_caption, read_pairs, split_pairs
from MedCLIPSAMLib.finetune.retrieval import caption_groups, evaluate_retrieval, recall_at_k
from MedCLIPSAMLib.finetune.train import FinetuneConfig, finetune, lr_factor
from MedCLIPSAMLib.metrics import dice
from MedCLIPSAMLib.models.clip import load_clip
from MedCLIPSAMLib.models.random_clip import make_random_clip
from MedCLIPSAMLib.pipeline import segment_image
from MedCLIPSAMLib.saliency import M2IB, M2IBConfig
from MedCLIPSAMLib.settings import Settings

CPU = torch.device("cpu")
DISK, SQUARE = "a bright round disk", "a dark square block"
PROOF_LAYER = 3  # the 12-block toy model localises best early; BiomedCLIP's scripts use 9


def test_caption_cleaning_and_pair_reading(tmp_path):
    assert clean_caption("CT: <b>large</b> mass   in the #liver!!") == "CT: b large /b mass in the liver"
    (tmp_path / "pairs.csv").write_text("image,caption\na.png,short\nb.png,A long enough caption about a liver mass\n"
                                        "c.png,Another caption that is long enough here\n")
    with pytest.raises(InputError, match=r"2 image file\(s\) listed in .* do not exist \('.*b.png', '.*c.png'\)"):
        read_pairs(tmp_path / "pairs.csv")  # a.png's caption is too short, so it is not checked
    for name in ("b.png", "c.png", "x.png"):
        (tmp_path / name).write_bytes(b"")
    pairs = read_pairs(tmp_path / "pairs.csv")
    assert [p.image.name for p in pairs] == ["b.png", "c.png"] and pairs[0].image.parent == tmp_path
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"path": "x.png", "text": "a caption of twenty chars+"}) + "\n")
    with pytest.raises(InputError, match="Only 1 usable pairs"):
        read_pairs(tmp_path / "pairs.jsonl")
    (tmp_path / "bad.csv").write_text("file_name,label\na.png,x\n")
    with pytest.raises(InputError, match="needs an image column"):
        read_pairs(tmp_path / "bad.csv")
    train, val = split_pairs(pairs * 10, 0.1)
    assert len(train) == 18 and len(val) == 2


def test_recall_and_schedule_helpers():
    image = torch.eye(4)
    text = torch.eye(4)[[0, 1, 3, 2]] + torch.tensor([[0, .2, .1, 0], [.1, 0, .3, 0], [0, .2, .3, 0], [.3, 0, 0, .1]])
    # similarity rows (image->text): 0 -> [1, .1, 0, .3]; 1 -> [.2, 1, .2, 0]; 2 -> [.1, .3, .3, 1] (tie
    # below the top); 3 -> [0, 0, 1, .1]: top-1 hits for images 0 and 1 only; top-2 adds image 3
    scores = recall_at_k(image, text)
    assert scores["i2t_top1"] == 0.5 and scores["t2i_top1"] == 0.5
    groups = caption_groups(["a", "b", "c", "c"])
    assert recall_at_k(torch.eye(4), torch.eye(4)[[0, 1, 3, 2]], groups=groups)["i2t_top1"] == 1.0  # identical captions are equivalent
    assert lr_factor(0, 100, 10) == pytest.approx(0.1) and lr_factor(9, 100, 10) == 1.0
    assert lr_factor(55, 100, 10) == pytest.approx(0.5) and lr_factor(100, 100, 10) == pytest.approx(0.0)


def class_accuracy(bundle, images_and_labels) -> float:
    text = torch.stack([bundle.encode_text([DISK], CPU), bundle.encode_text([SQUARE], CPU)])
    from MedCLIPSAMLib.saliency import clip_inputs
    correct = 0
    for image, is_disk in images_and_labels:
        pixels, _ = clip_inputs(image[None], bundle, CPU)
        with torch.no_grad():
            embedding = torch.nn.functional.normalize(bundle.model.encode_image(pixels).float(), dim=-1)
        correct += int((embedding @ text.T).argmax().item() == (0 if is_disk else 1))
    return correct / len(images_and_labels)


def saliency_hits(bundle, images, steps: int = 10, samples: int = 10) -> tuple[int, int]:
    m2ib = M2IB(bundle, M2IBConfig(layer=PROOF_LAYER, beta=1.0, steps=steps, samples=samples), CPU)
    disk_text, square_text = bundle.encode_text([DISK], CPU), bundle.encode_text([SQUARE], CPU)
    disk_hits = square_hits = 0
    for image, disk in images:
        for text, inside in ((disk_text, disk), (square_text, image < 40)):
            saliency = m2ib.saliency(image[None], text)[0]
            y, x = np.unravel_index(np.argmax(saliency), saliency.shape)
            hit = bool(inside[y, x])
            disk_hits += hit and text is disk_text
            square_hits += hit and text is square_text
    return disk_hits, square_hits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("proof")
    pairs = write_pairs(root / "train", 256, size=112, seed=0)
    torch.manual_seed(0)
    bundle = make_random_clip(root / "model", size="tiny", image_size=112)
    rng = np.random.default_rng(7)
    held_out = [(draw(rng, 112, disk=i % 2 == 0, square=i % 2 == 1)[0], i % 2 == 0) for i in range(40)]
    both = [draw(rng, 112, disk=True, square=True) for _ in range(10)]
    val_pairs = read_pairs(write_pairs(root / "val", 50, size=112, seed=1))
    before = {"accuracy": class_accuracy(bundle, held_out), "hits": saliency_hits(bundle, both),
              "recall": evaluate_retrieval(bundle, val_pairs, CPU, batch=50, runs=1)}
    config = FinetuneConfig(clip=str(root / "model"), lr=3e-3, epochs=6, batch_size=32, weight_decay=0.0,
                            warmup_fraction=0.1, validation_fraction=0.0, device="cpu")
    history = finetune(pairs, root / "out", config, bundle=bundle, show_progress=False)
    after = {"accuracy": class_accuracy(bundle, held_out), "hits": saliency_hits(bundle, both),
             "recall": evaluate_retrieval(bundle, val_pairs, CPU, batch=50, runs=1)}
    return root, bundle, history, before, after, both


def test_training_writes_checkpoints_and_improves_retrieval(trained):
    root, bundle, history, before, after, _ = trained
    out = root / "out"
    assert len(history) == 6 and history[-1]["train_loss"] < history[0]["train_loss"] - 0.3
    assert {p.name for p in out.glob("*.pt")} >= {"best.pt", "last.pt", "epoch_001.pt", "epoch_006.pt"}
    assert (out / "training.png").stat().st_size > 1000 and json.loads((out / "history.json").read_text())
    assert torch.load(out / "best.pt", weights_only=False)["epoch"] == 6, "no validation set: the newest is best"
    print(f"\nretrieval before {before['recall']}\nafter {after['recall']}\n"
          f"class accuracy {before['accuracy']:.2f} -> {after['accuracy']:.2f}")
    assert after["accuracy"] >= 0.9 > before["accuracy"]
    assert after["recall"]["i2t_top1"] > before["recall"]["i2t_top1"]
    assert after["recall"]["t2i_top1"] > before["recall"]["t2i_top1"]
    reloaded = load_clip(str(out / "best.pt"))  # what `--clip best.pt` does
    assert reloaded.source.endswith("best.pt")


def test_refuses_to_overwrite_checkpoints_without_resume(trained):
    root, bundle, *_ = trained
    before = {p.name: p.stat().st_mtime_ns for p in (root / "out").iterdir()}
    with pytest.raises(InputError, match="already holds an earlier run"):
        finetune(root / "train" / "pairs.csv", root / "out", FinetuneConfig(clip=str(root / "model")), bundle=bundle)
    with pytest.raises(OptionError, match="Nothing to train: .* already has 6 epochs; raise --epochs"):
        finetune(root / "train" / "pairs.csv", root / "out", FinetuneConfig(clip=str(root / "model"), epochs=6),
                 resume=True, bundle=bundle)
    assert {p.name: p.stat().st_mtime_ns for p in (root / "out").iterdir()} == before


@pytest.mark.parametrize("option, value, message", [
    ("--batch-size", "0", "--batch-size must be at least 1 (got 0)"),
    ("--lr", "-1", "--lr must be above 0 (got -1.0)"),
    ("--epochs", "0", "--epochs must be at least 1 (got 0)"),
    ("--validation-fraction", "1", "--validation-fraction must be at least 0 and below 1"),
    ("--device", "foo", "Unknown --device 'foo'"),
])
def test_finetune_option_errors_exit_2_before_anything_is_read(tmp_path, capsys, option, value, message):
    from MedCLIPSAMLib.cli import main

    code = main(["finetune", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "run"), option, value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_pairs_file_in_another_encoding_is_one_line(tmp_path, capsys):
    from MedCLIPSAMLib.cli import main

    (tmp_path / "pairs.csv").write_bytes("image,caption\na.png,Läsion im rechten Leberlappen\n".encode("latin-1"))
    code = main(["finetune", "--data", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 3 and "is not UTF-8 text (byte 0xe4 at position 21); save it as UTF-8" in err
    assert "Traceback" not in err
    (tmp_path / "pairs.jsonl").write_text('{"image": "a.png", "caption": "a caption long enough to count"}\n{"image"\n')
    assert main(["finetune", "--data", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "run")]) == 3
    assert "Line 2 of" in capsys.readouterr().err


def test_ctrl_c_in_finetune_says_what_can_be_resumed(tmp_path, capsys, monkeypatch):
    from MedCLIPSAMLib.cli import main
    from MedCLIPSAMLib.finetune import train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "finetune", interrupted)
    assert main(["finetune", "--data", "pairs.csv", "--out", str(tmp_path / "run")]) == 130
    assert "interrupted before the first epoch finished" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    assert main(["finetune", "--data", "pairs.csv", "--out", str(tmp_path / "run")]) == 130
    assert "continue with --resume" in capsys.readouterr().err


def test_saliency_finds_what_the_prompt_names(trained):
    _, _, _, before, after, _ = trained
    print(f"\nM2IB argmax inside the named shape (disk, square) of 10: before {before['hits']}, after {after['hits']}")
    assert after["hits"][0] >= 8 and after["hits"][1] >= 8
    assert sum(after["hits"]) >= sum(before["hits"]) + 4


def test_fewer_m2ib_samples_cost_little_but_fewer_steps_do(trained):
    """The CPU shortcuts' measured effect where saliency means something (hits out of 10 per shape).

    Measured: 10 steps x 10 samples (10, 9); 10 x 5 (10, 10); 10 x 3 (10, 8); 10 x 1 (10, 8);
    7 x 5 (3, 8); 5 x 10 (2, 8); 5 x 5 (2, 8). From alpha = 5 with lr 1, fewer than 10 Adam steps
    leave the bottleneck half open, so the map has not converged; the noise samples only average.
    """
    _, bundle, _, _, after, both = trained
    fast = {combo: saliency_hits(bundle, both, *combo) for combo in ((10, 3), (5, 5))}
    print(f"\nM2IB hits (disk, square) of 10: 10 steps x 10 samples {after['hits']}, "
          + ", ".join(f"{k[0]} x {k[1]} {v}" for k, v in fast.items()))
    assert min(fast[(10, 3)]) >= 8
    assert fast[(5, 5)][0] <= after["hits"][0] - 4


def test_pipeline_with_litemedsam_segments_the_named_disk(trained, litemedsam):
    """Box refinement is off here: the toy's 7 x 7 token grid yields boxes just inside the disk, and
    re-prompting with the box of a too-small mask shrinks it further (measured: mean Dice 0.61 with
    0 rounds, 0.46 with 1, 0.31 with 2 on these 10 images). Real saliency boxes are loose, where
    refinement helps (README, Results)."""
    _, bundle, _, _, _, both = trained
    settings = Settings(sam_backend="litemedsam", device="cpu", bottleneck_layer=PROOF_LAYER, beta=1.0,
                        refine_rounds=0)
    scores = [dice(segment_image(image, DISK, settings, clip=bundle, sam=litemedsam).mask, disk)
              for image, disk in both]
    print(f"\nDice against the disk: {np.round(scores, 3)} mean {np.mean(scores):.3f}")
    assert np.mean(scores) >= 0.5
    assert sum(score > 0.3 for score in scores) >= 8  # the named shape, not the other one, is segmented


def test_the_faithfulness_check_scores_a_right_prompt_above_a_wrong_one(trained):
    """Where saliency means something: on single-shape images the crop around what the saliency found looks like
    the named shape, so the shape shown passes the check and the other shape is flagged; a text tower that
    ignores the text is flagged for both (figures: Testing/measure/faithfulness_match.py, README)."""
    import copy

    from degenerate import ignore_text
    from MedCLIPSAMLib.faithfulness import UNFAITHFUL_BELOW, is_unfaithful
    from MedCLIPSAMLib.pipeline import Pipeline

    _, bundle, *_ = trained
    settings = Settings(device="cpu", bottleneck_layer=PROOF_LAYER, m2ib_samples=3)
    deaf = copy.copy(bundle)
    deaf.model = ignore_text(copy.deepcopy(bundle.model))
    rng = np.random.default_rng(11)
    for i in range(4):
        image, _ = draw(rng, 112, disk=i % 2 == 0, square=i % 2 == 1)
        right, wrong = (DISK, SQUARE) if i % 2 == 0 else (SQUARE, DISK)
        located = Pipeline(settings, clip=bundle).locate(image[None], [right, wrong])
        scores = {t.name: t.faithfulness for t in located.targets}
        assert scores[right] > UNFAITHFUL_BELOW > scores[wrong], (i, scores)
        if i < 2:
            flat = [t.faithfulness for t in Pipeline(settings, clip=deaf).locate(image[None], [right, wrong]).targets]
            assert all(is_unfaithful(v) and abs(v) < 1e-6 for v in flat), flat
