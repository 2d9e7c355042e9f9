"""Review queue: a radiologist fixes the pseudo-labels that need it most, and the fixes go back into the
nnU-Net dataset.

The persisted review state inside the dataset (``medclipsam_review.json``) is ``MedCLIPSAMLib.review_state``,
one layer down, because ``medclipsam label`` (``weak``) reads it too. ``queue`` reads
labels.csv / uncertainty.csv and orders the cases, ``actions`` accepts, excludes and restores cases on disk
(never losing a file), ``status`` is ``medclipsam review-status``. The Slicer-node side is in
``MedCLIPSAMLib.slicer.review``.
"""
