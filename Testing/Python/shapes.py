"""Synthetic image-caption data for the end-to-end proof: bright disks and dark squares."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

DISK_CAPTIONS = ["a bright round disk on a textured background", "one bright circular disk in the image",
                 "the image shows a round bright disk"]
SQUARE_CAPTIONS = ["a dark square block on a textured background", "one dark square shape in the image",
                   "the image shows a dark square block"]


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 3)
    return 90 + 25 * noise / (noise.std() + 1e-6)


def place(rng, size, extent, avoid=None):
    """A random centre keeping the shape inside the image and away from ``avoid``."""
    while True:
        center = rng.integers(extent + 2, size - extent - 2, size=2)
        if avoid is None or np.abs(center - avoid).max() > 2 * extent + 6:
            return center


def draw(rng, size: int, disk: bool, square: bool):
    """Image (uint8) and the disk's mask."""
    image = background(rng, size)
    yy, xx = np.mgrid[:size, :size]
    disk_mask = np.zeros((size, size), bool)
    radius = int(rng.integers(size // 9, size // 6))
    half = int(rng.integers(size // 9, size // 6))
    disk_center = place(rng, size, radius) if disk else None
    if disk:
        disk_mask = (yy - disk_center[0]) ** 2 + (xx - disk_center[1]) ** 2 <= radius ** 2
        image[disk_mask] = 225
    if square:
        c = place(rng, size, half, disk_center)
        image[c[0] - half:c[0] + half, c[1] - half:c[1] + half] = 15
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), disk_mask


def write_pairs(folder: Path, count: int, size: int = 112, seed: int = 0) -> Path:
    """Single-shape images with captions naming the shape; returns the CSV path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        is_disk = i % 2 == 0
        image, _ = draw(rng, size, disk=is_disk, square=not is_disk)
        name = f"img_{i:04d}.png"
        sitk.WriteImage(sitk.GetImageFromArray(image), str(folder / name))
        captions = DISK_CAPTIONS if is_disk else SQUARE_CAPTIONS
        rows.append({"image": name, "caption": captions[int(rng.integers(len(captions)))]})
    path = folder / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return path
