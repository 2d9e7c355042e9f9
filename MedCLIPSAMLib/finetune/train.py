"""`medclipsam finetune`: adapt BiomedCLIP (or any open_clip model) to image-caption pairs.

AdamW with linear warm-up and cosine decay, DHN-NCE by default, bf16 autocast on CUDA,
gradient accumulation (negatives stay within each micro-batch), validation recall every
epoch, checkpoints every epoch plus ``best.pt`` (loads with ``--clip best.pt``) and a
resumable ``last.pt``, a progress bar and a loss/recall plot.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import InputError, OptionError
from ..figures import save_figure
from ..models.clip import ClipBundle, load_clip
from ..outputs import check_folder, replacing, write_json
from .config import OUTPUT_FILES, FinetuneConfig
from .data import PairDataset, collate, embed_pairs, read_pairs, split_pairs
from .losses import contrastive_loss
from .retrieval import batched_recall, caption_groups


def check_out_folder(out: Path, resume: bool) -> None:
    """An earlier run's files are continued with --resume, never replaced without it."""
    check_folder(out, "--out")
    existing = [out / name for name in OUTPUT_FILES if (out / name).exists()] + sorted(out.glob("epoch_*.pt"))
    if existing and not resume:
        raise InputError(f"'{out}' already holds an earlier run ({existing[0].name}); pass --resume to continue it "
                         "or choose another --out.")
    if resume and existing and not (out / "last.pt").exists():
        raise InputError(f"'{out}' holds no last.pt to resume from; choose another --out to start afresh.")


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _save(payload: dict, path: Path) -> None:
    """Write atomically, so an interrupted save never leaves a broken checkpoint."""
    with replacing(path, overwrite=True) as temp:
        torch.save(payload, temp)


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="training loss")
    for key in ("i2t_top1", "t2i_top1"):
        right.plot(epochs, [100 * h.get(key, float("nan")) for h in history], marker="o", label=key)
    right.set(xlabel="epoch", ylabel="validation recall (%)")
    right.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def _resume_state(out: Path, epochs: int) -> dict | None:
    """last.pt of the run being resumed (None: nothing to resume), read before the model loads so a run that
    has nothing left to do says so at once."""
    if not (out / "last.pt").exists():
        return None
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    if state["epoch"] >= epochs:
        raise OptionError(f"Nothing to train: '{out / 'last.pt'}' already has {state['epoch']} epochs; raise "
                          "--epochs to train longer.")
    return state


def finetune(data: str | Path, out: str | Path, config: FinetuneConfig, resume: bool = False,
             bundle: ClipBundle | None = None, show_progress: bool = True) -> list[dict]:
    """Train and return the per-epoch history (also written to ``history.json``)."""
    from tqdm import tqdm

    from ..pipeline import resolve_device

    out = Path(out)
    config.validate()
    device = resolve_device(config.device)
    train_pairs, val_pairs = split_pairs(read_pairs(data), config.validation_fraction, config.seed)
    if len(train_pairs) < 2:
        raise InputError("Too few training pairs after the validation split.")
    check_out_folder(out, resume)
    state = _resume_state(out, config.epochs) if resume else None
    torch.manual_seed(config.seed)
    bundle = bundle or load_clip(config.clip)
    out.mkdir(parents=True, exist_ok=True)
    model = bundle.model.to(device).requires_grad_(True)
    loader = torch.utils.data.DataLoader(PairDataset(train_pairs, bundle), batch_size=config.batch_size,
                                         shuffle=True, drop_last=len(train_pairs) > config.batch_size,
                                         collate_fn=collate(bundle), num_workers=config.workers)
    steps_per_epoch = math.ceil(len(loader) / config.accumulation)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup_fraction * total))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup))
    history: list[dict] = []
    best, start_epoch = -1.0, 0
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
    amp = device.type == "cuda"
    for epoch in range(start_epoch, config.epochs):
        model.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show_progress, leave=False)
        for step, (pixels, tokens) in enumerate(bar):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                image = model.encode_image(pixels.to(device))
                text = model.encode_text(tokens.to(device))
            loss = contrastive_loss(config.loss, image, text, config.tau, config.beta1, config.beta2)
            (loss / config.accumulation).backward()
            if (step + 1) % config.accumulation == 0 or step + 1 == len(loader):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
        record = {"epoch": epoch + 1, "train_loss": float(sum(losses) / len(losses)), "lr": scheduler.get_last_lr()[0]}
        if val_pairs:
            image, text = embed_pairs(bundle, val_pairs, device)
            groups = caption_groups([p.caption for p in val_pairs])
            record.update(batched_recall(image, text, batch=config.eval_batch, runs=1, seed=config.seed, groups=groups))
        history.append(record)
        score = record.get("i2t_top1", 0.0) + record.get("t2i_top1", 0.0)
        model_state = {"state_dict": model.state_dict(), "base": config.clip, "epoch": epoch + 1, "metrics": record}
        _save(model_state, out / f"epoch_{epoch + 1:03d}.pt")
        if score > best or not val_pairs:  # no validation set: nothing to rank epochs by, the newest is best
            best = score
            _save(model_state, out / "best.pt")
        _save({**model_state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "history": history, "best": best, "config": asdict(config)}, out / "last.pt")
        write_json(out / "history.json", history, overwrite=True)
        _plot(history, out / "training.png")
    model.eval().requires_grad_(False)
    return history
