"""Write Resources/install_sizes.json: what each engine requirement pulls in, and the installed size of each package.

The Slicer panel lists the packages an install would add, with sizes, before the user agrees,
without asking the network; this table is what it reads. Made from an environment that has the
engine installed (this project's venv): each requirement's dependency closure from the package
metadata, and each package's installed size from its RECORD.

    python Testing/measure/install_sizes.py [--out Resources/install_sizes.json]
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import platform
import re
import sys
from pathlib import Path

from MedCLIPSAMLib.dependencies import REQUIREMENTS

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
EXTRA_ROOTS = ("torch", "torchvision", "light-the-torch")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_mb(dist: metadata.Distribution) -> float:
    total = 0
    for file in dist.files or []:
        try:
            total += file.size or 0
        except AttributeError:
            pass
    return round(total / 1e6, 1)


def closure(root: str) -> list[str]:
    """The root and every package it needs (markers evaluated here; extras not followed)."""
    from packaging.requirements import Requirement

    seen, todo = [], [root]
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.append(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            todo.append(requirement.name)
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "Resources" / "install_sizes.json"))
    args = parser.parse_args()
    roots = {canonical(NAME.match(req).group(0)): req for req in REQUIREMENTS.values()}
    requires = {root: closure(root) for root in [*roots, *EXTRA_ROOTS]}
    sizes = {}
    for names in requires.values():
        for name in names:
            sizes[name] = installed_mb(metadata.distribution(name))
    table = {"measured_with": f"Python {sys.version_info.major}.{sys.version_info.minor}, {platform.system()} "
                              f"{platform.machine()}, torch {metadata.version('torch')} from PyPI, with the NVIDIA libraries pip brings on Linux",
             "installed_mb": dict(sorted(sizes.items())), "requires": requires}
    Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    print(f"{len(sizes)} packages, {sum(sizes.values()):.0f} MB in all -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
