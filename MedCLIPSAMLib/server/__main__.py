"""``python -m MedCLIPSAMLib.server [options]``: the same as ``medclipsam serve`` (used by Slicer)."""
import sys

from ..cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
