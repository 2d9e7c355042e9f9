"""`medclipsam finetune` and `medclipsam retrieval-eval` on the command line. Building their options needs no
torch, so every other command (and `--help`) starts without loading it; the training and retrieval modules are
imported when one of these commands runs."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import Cancelled
from ..options import at_least
from ..outputs import add_output_option, add_overwrite_option
from .config import LOSSES, FinetuneConfig


def register_cli(sub: argparse._SubParsersAction) -> None:
    _register_finetune(sub)
    _register_retrieval(sub)


def _register_finetune(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("finetune", help="fine-tune BiomedCLIP on image-caption pairs (DHN-NCE)")
    parser.add_argument("--data", required=True, help="CSV/JSONL with image path and caption columns")
    add_output_option(parser, "--out", kind="folder", required=True,
                      help="folder for checkpoints, history.json, training.png")
    defaults = FinetuneConfig()
    parser.add_argument("--clip", default=defaults.clip, help="start from: hub id, folder or checkpoint")
    parser.add_argument("--loss", default=defaults.loss, choices=LOSSES)
    for name in ("tau", "beta1", "beta2", "lr", "weight_decay", "warmup_fraction", "validation_fraction"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    for name in ("epochs", "batch_size", "accumulation", "eval_batch", "seed", "workers"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    fields = FinetuneConfig.__dataclass_fields__
    config = FinetuneConfig(**{k: getattr(args, k) for k in fields})  # option errors name the option (exit 2)
    from .train import finetune

    out = Path(args.out)
    try:
        history = finetune(args.data, out, config, resume=args.resume)
    except KeyboardInterrupt:
        done = "" if not (out / "last.pt").exists() else "; the finished epochs' checkpoints are complete: " \
            "continue with --resume"
        raise Cancelled(f"interrupted{done or ' before the first epoch finished'}.") from None
    last = history[-1]
    print(f"finished {len(history)} epochs; last: " + "  ".join(
        f"{k} {v:.4f}" for k, v in last.items() if isinstance(v, float)) + f"; best checkpoint: {out / 'best.pt'}")
    return 0


def _register_retrieval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("retrieval-eval", help="image<->text top-1/top-2 recall (ROCO protocol)")
    parser.add_argument("--data", required=True, help="CSV/JSONL of image path + caption")
    parser.add_argument("--clip", default=None, help="hub id, model folder or fine-tuned checkpoint")
    parser.add_argument("--batch", type=at_least(2), default=50)
    parser.add_argument("--runs", type=at_least(1), default=5)
    parser.add_argument("--device", default="auto")
    add_output_option(parser, "--json", help="also write the recalls to this .json file")
    add_overwrite_option(parser)
    parser.set_defaults(func=cmd_retrieval)


def cmd_retrieval(args: argparse.Namespace) -> int:
    from ..models.clip import load_clip
    from ..outputs import check_output, write_json
    from ..pipeline import resolve_device
    from ..settings import BIOMEDCLIP_HUB_ID
    from .data import read_pairs
    from .retrieval import evaluate_retrieval

    device = resolve_device(args.device)
    if args.json:
        check_output(args.json, "--json", args.overwrite, [args.data], extensions=(".json",))
    pairs = read_pairs(args.data)
    bundle = load_clip(args.clip or BIOMEDCLIP_HUB_ID)
    scores = evaluate_retrieval(bundle, pairs, device, args.batch, args.runs)
    print("  ".join(f"{k} {100 * v:.2f}" for k, v in scores.items()))
    if args.json:
        write_json(args.json, scores, overwrite=args.overwrite)
    return 0
