"""Model catalog, per-user cache folder and verified downloads.

Weights never go into the install folder: they live in a per-user cache
(``MEDCLIPSAM_CACHE`` or the platform's cache directory). A download is written to a
``.part`` file, checked against its sha256 where the catalog pins one, and only then
renamed, so an interrupted download never looks complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, ModelError
from ..resources import resource_path

ProgressCallback = Callable[[str, int, int], None]
"""(stage, done, total) - the same signature the pipeline uses."""


@dataclass
class ModelFile:
    url: str
    name: str
    sha256: str | None = None


@dataclass
class CatalogEntry:
    key: str
    title: str
    kind: str
    licence: str
    size_bytes: int
    files: list[ModelFile] = field(default_factory=list)
    hub_id: str | None = None


def load_catalog() -> dict[str, CatalogEntry]:
    """All downloadable models, keyed by short name (biomedclip, vit_b, vit_l, vit_h, litemedsam)."""
    raw = json.loads(resource_path("model_catalog.json").read_text())
    return {key: CatalogEntry(key=key, title=v["title"], kind=v["kind"], licence=v["licence"],
                              size_bytes=v["size_bytes"], hub_id=v.get("hub_id"),
                              files=[ModelFile(**f) for f in v["files"]])
            for key, v in raw.items()}


def cache_dir() -> Path:
    """Per-user model cache: $MEDCLIPSAM_CACHE, else the platform's user cache folder."""
    if os.environ.get("MEDCLIPSAM_CACHE"):
        return Path(os.environ["MEDCLIPSAM_CACHE"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "medclipsam"


def entry_folder(entry: CatalogEntry) -> Path:
    return cache_dir() / entry.key


def is_cached(entry: CatalogEntry) -> bool:
    return all((entry_folder(entry) / f.name).is_file() for f in entry.files)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LOCAL_OPTIONS = {"clip": " (or into any folder you then pass with --clip-model FOLDER)",
                 "sam": " (or anywhere, then pass the file with --sam-checkpoint FILE)"}
"""Where a model of each kind can be given by hand instead of from the cache."""


def offline_help(entry: CatalogEntry) -> str:
    """How to supply the weights by hand, for machines without internet."""
    names = "\n".join(f"  {f.url}" for f in entry.files)
    elsewhere = LOCAL_OPTIONS.get(entry.kind, "")
    return (f"Download these files on a machine with internet access:\n{names}\n"
            f"and put them into the folder '{entry_folder(entry)}'{elsewhere}. "
            f"Set MEDCLIPSAM_CACHE to use another cache folder.")


def server_detail(entry: CatalogEntry) -> str:
    """The one-line form of a missing model for an HTTP answer: no server paths, no URL list (the server's log and
    command line keep ``offline_help``)."""
    return (f"{entry.title} is not on this server and could not be downloaded; whoever runs the server must first put "
            "its weights into the server's model cache.")


def download_file(url: str, destination: Path, sha256: str | None = None,
                  progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                  timeout: float = 30.0) -> Path:
    """Download to ``destination`` via a ``.part`` file, verify, then rename atomically."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"Download of {destination.name} cancelled.")
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress(f"download {destination.name}", done, total)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise ModelError(f"Cannot download {url} ({getattr(exc, 'reason', exc)}).") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if sha256 is not None and digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise ModelError(f"{destination.name} from {url} failed its checksum (sha256 {digest.hexdigest()}, "
                         f"expected {sha256}). The download was corrupted; try again.")
    partial.replace(destination)
    return destination


def ensure_model(key: str, progress: ProgressCallback | None = None,
                 cancel: threading.Event | None = None) -> Path:
    """The cache folder holding every file of a catalog model, downloading what is missing."""
    catalog = load_catalog()
    if key not in catalog:
        raise ModelError(f"Unknown model '{key}'. Known: {', '.join(catalog)}.")
    entry = catalog[key]
    folder = entry_folder(entry)
    for item in entry.files:
        target = folder / item.name
        if target.is_file():
            continue
        try:
            download_file(item.url, target, item.sha256, progress, cancel)
        except ModelError as exc:
            error = ModelError(f"{entry.title} is not available offline and could not be downloaded: {exc}\n"
                               f"{offline_help(entry)}")
            error.server_detail = server_detail(entry)
            raise error from None
    return folder

