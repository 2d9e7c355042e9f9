"""Write the thick-slice lesion cases the correction curves are measured on: crops of the dev set's brain1
volume (25 slices of 6.5 mm) along its slice axis, so the tumour spans a few thick slices and the slices past it
hold brain that propagation can leak into.

    PYTHONPATH=$PWD python Testing/measure/thick_lesion.py --out /tmp/thick
    medclipsam evaluate /tmp/thick --out /tmp/thick_eval --simulate-interactions 5 --sam litemedsam ...

brain1's tumour label covers slices 11-17; ``brain1_z15-24`` keeps slices 15-24 (the tumour on its first three
slices, 842 / 984 / 536 px, seven tumour-free slices after), ``brain1_z7-13`` keeps slices 7-13 (a lesion on
slices 11-13 of brain1, the last three of the crop's seven, two pieces on one of them), and ``brain1_every2nd``
keeps every second slice (13 slices of 13 mm: the tumour on three slices in the middle, 524 / 247 / 984 px, with
tumour-free brain on both sides). The crops keep brain1's geometry (spacing, direction; the origin moves to the
first kept slice).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CROPS = {"brain1_z15-24": (15, 24, 1), "brain1_z7-13": (7, 13, 1), "brain1_every2nd": (0, 24, 2)}
"""Case name -> first and last slice of brain1 kept (inclusive, in the array's slice order) and the step."""


def crop(image: sitk.Image, first: int, last: int, step: int = 1) -> sitk.Image:
    """Slices first, first + step, ... last of a 3D image, with the geometry they had (spacing x step)."""
    return image[:, :, first:last + 1:step]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parents[3] / "shared" / "data" / "volumes"
    parser.add_argument("--volumes", default=str(default), help="folder with brain1_image.nrrd and brain1_label.nrrd")
    parser.add_argument("--out", required=True, help="folder to write <case>_image.nrrd + <case>_label.nrrd into")
    args = parser.parse_args()
    source = Path(args.volumes)
    if not (source / "brain1_image.nrrd").is_file() or not (source / "brain1_label.nrrd").is_file():
        raise SystemExit(f"error: '{source}' has no brain1_image.nrrd + brain1_label.nrrd; pass --volumes FOLDER.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(source / "brain1_image.nrrd"))
    label = sitk.ReadImage(str(source / "brain1_label.nrrd"))
    for name, (first, last, step) in CROPS.items():
        for kind, volume in (("image", image), ("label", label)):
            target = out / f"{name}_{kind}.nrrd"
            if target.exists():
                raise SystemExit(f"error: '{target}' already exists; choose another --out folder.")
            sitk.WriteImage(crop(volume, first, last, step), str(target), True)
        kept = crop(label, first, last, step)
        array = sitk.GetArrayFromImage(kept) > 0
        areas = {z: int(array[z].sum()) for z in range(array.shape[0]) if array[z].any()}
        print(f"{name}: {array.shape[0]} slices of {kept.GetSpacing()[2]:.1f} mm, lesion px per slice {areas}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
