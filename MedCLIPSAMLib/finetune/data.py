"""Image-caption pairs (MedPix/ROCO style): reading, caption cleaning, splitting, batching."""
from __future__ import annotations

import csv
import io
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from ..imageio import normalize_intensity, read_volume
from ..inputs import parse_json, read_text
from ..models.clip import ClipBundle
from ..saliency import clip_inputs

MIN_CAPTION_CHARS = 20
IMAGE_KEYS = ("image", "image_path", "path", "filepath", "file")
CAPTION_KEYS = ("caption", "text", "report")


@dataclass
class Pair:
    image: Path
    caption: str


def clean_caption(text: str) -> str:
    """Strip special characters and extra spaces (paper: MedPix captions are cleaned this way)."""
    text = re.sub(r"[^A-Za-z0-9.,;:()%/'\- ]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _rows(path: Path) -> list[dict]:
    """The rows of a CSV or JSONL pairs file; encoding and syntax errors name the file and line."""
    text = read_text(path, "Pairs file")
    if path.suffix.lower() in (".jsonl", ".json"):
        lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
        rows = [parse_json(line, f"Line {number} of '{path}'") for number, line in lines]
        if not all(isinstance(row, dict) for row in rows):
            raise InputError(f"'{path}' must hold one JSON object per line, e.g. {{\"image\": ..., \"caption\": ...}}.")
        return rows
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise InputError(f"'{path}' is not a readable CSV file ({exc}).") from None


def read_pairs(path: str | Path, min_chars: int = MIN_CAPTION_CHARS) -> list[Pair]:
    """Pairs from a CSV or JSONL file; image paths are relative to the file's folder."""
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise InputError(f"'{path}' holds no rows.")
    image_key = next((k for k in IMAGE_KEYS if k in rows[0]), None)
    caption_key = next((k for k in CAPTION_KEYS if k in rows[0]), None)
    if image_key is None or caption_key is None:
        raise InputError(f"'{path}' needs an image column ({'/'.join(IMAGE_KEYS)}) and a caption column "
                         f"({'/'.join(CAPTION_KEYS)}); found {sorted(rows[0])}.")
    pairs = []
    for row in rows:
        caption = clean_caption(str(row.get(caption_key) or ""))
        image = Path(str(row.get(image_key) or ""))
        image = image if image.is_absolute() else path.parent / image
        if len(caption) >= min_chars:
            pairs.append(Pair(image, caption))
    missing = [pair.image for pair in pairs if not pair.image.is_file()]
    if missing:  # found now, not hours into training
        shown = ", ".join(f"'{m}'" for m in missing[:3])
        raise InputError(f"{len(missing)} image file(s) listed in '{path}' do not exist ({shown}"
                         f"{', ...' if len(missing) > 3 else ''}); fix the paths (relative ones are read from the "
                         "file's folder) or remove those rows.")
    if len(pairs) < 2:
        raise InputError(f"Only {len(pairs)} usable pairs in '{path}' (captions under {min_chars} characters "
                         "are dropped); need at least 2.")
    return pairs


def split_pairs(pairs: list[Pair], validation_fraction: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    count = max(2, int(round(validation_fraction * len(pairs)))) if validation_fraction > 0 else 0
    return [pairs[i] for i in order[count:]], [pairs[i] for i in order[:count]]


class PairDataset(torch.utils.data.Dataset):
    """Images as the segmentation pipeline sees them (grey, padded square, CLIP-normalised)."""

    def __init__(self, pairs: list[Pair], bundle: ClipBundle):
        self.pairs, self.bundle = pairs, bundle

    def __len__(self) -> int:
        return len(self.pairs)

    def image(self, index: int) -> torch.Tensor:
        volume = read_volume(self.pairs[index].image)
        middle = normalize_intensity(volume.array)[volume.array.shape[0] // 2]
        return clip_inputs(middle[None], self.bundle, torch.device("cpu"))[0][0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        return self.image(index), self.pairs[index].caption


def collate(bundle: ClipBundle):
    def apply(batch):
        images = torch.stack([b[0] for b in batch])
        return images, bundle.tokenize([b[1] for b in batch])
    return apply


def embed_pairs(bundle: ClipBundle, pairs: list[Pair], device: torch.device, batch_size: int = 50
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text embeddings of every pair (eval mode, no gradients)."""
    dataset = PairDataset(pairs, bundle)
    images, texts = [], []
    model = bundle.model.to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = [dataset[i] for i in range(start, min(start + batch_size, len(pairs)))]
            pixels, tokens = collate(bundle)(batch)
            images.append(torch.nn.functional.normalize(model.encode_image(pixels.to(device)).float(), dim=-1))
            texts.append(torch.nn.functional.normalize(model.encode_text(tokens.to(device)).float(), dim=-1))
    model.train(was_training)
    return torch.cat(images).cpu(), torch.cat(texts).cpu()

