"""Exported ONNX models in the model cache: written atomically, checked on every load.

An export is named after what it was made from (the weights' fingerprint), so other weights
(a fine-tuned CLIP, another bottleneck layer) never reuse a stale file. It is written under a
temporary name in the cache folder and renamed only when complete, so a crash or a full disk
never leaves a file under the final name; its manifest (size and sha256 of the file) is written
the same way. On load a file without a manifest, or whose bytes differ from it (a copy cut
short, a disk error, an edit), counts as broken and is exported again.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .catalog import cache_dir, file_sha256

EXPORT_FORMAT = 1
"""Bumped when the exported graphs change, so older exports are not reused."""
KEEP_PER_KIND = 3
"""Exports kept per kind (fine-tuned CLIPs each get their own); older ones are deleted."""


def export_folder() -> Path:
    return cache_dir() / "onnx"


def fingerprint(module: torch.nn.Module, *details: object) -> str:
    """sha256 of the module's tensors (names, shapes, dtypes, values), ``details`` and the torch version."""
    digest = hashlib.sha256(f"{EXPORT_FORMAT}|{torch.__version__}|{details!r}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(value.shape)}|{value.dtype}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def export_path(kind: str, print_: str) -> Path:
    return export_folder() / f"{kind}-{print_[:24]}.onnx"


def manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def problem(path: Path) -> str | None:
    """Why the export at ``path`` cannot be used (None: it is whole); 'missing' when there is none."""
    if not path.is_file():
        return "missing"
    try:
        manifest = json.loads(manifest_path(path).read_text())
    except (OSError, ValueError):
        return "its manifest is missing or unreadable"
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        return "its manifest is of another format"
    if path.stat().st_size != manifest.get("size"):
        return f"it has {path.stat().st_size} bytes instead of {manifest.get('size')} (half-written)"
    if file_sha256(path) != manifest.get("sha256"):
        return "its content differs from its checksum (damaged)"
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def store(path: Path, model: bytes, details: dict) -> None:
    """Write the model, then its manifest (each atomically), and prune older exports of its kind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path(path).unlink(missing_ok=True)  # a model without a manifest is never trusted
    _write_atomic(path, model)
    manifest = {"format": EXPORT_FORMAT, "size": len(model), "sha256": hashlib.sha256(model).hexdigest(),
                "torch": torch.__version__, "details": details}
    _write_atomic(manifest_path(path), json.dumps(manifest, indent=1).encode())
    prune(path)


def prune(keep: Path) -> None:
    """Delete all but the newest ``KEEP_PER_KIND`` exports of ``keep``'s kind (never ``keep`` itself)."""
    kind = keep.name.rsplit("-", 1)[0]
    others = sorted((p for p in keep.parent.glob(f"{kind}-*.onnx") if p != keep and p.name.rsplit("-", 1)[0] == kind),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[KEEP_PER_KIND - 1:]:
        old.unlink(missing_ok=True)
        manifest_path(old).unlink(missing_ok=True)
