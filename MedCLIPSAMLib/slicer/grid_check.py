"""Is a file's image on a volume's grid? Numbers only (no MRML), so a child process can check it too."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def check_on_grid(image, expected_shape: Sequence[int], geometry, volume_name: str, what: str,
                  tolerance_mm: float = 1e-3) -> None:
    """Refuse a SimpleITK image that is not on the volume's grid: ``expected_shape`` in (k, j, i) order and
    ``geometry`` = (spacing, origin, direction) in LPS (``mrml.lps_geometry``); raises ValueError in one line."""
    shape = tuple(reversed(image.GetSize()))
    expected_shape = tuple(expected_shape)
    if shape != expected_shape:
        raise ValueError(f"{what} has shape {shape} but volume '{volume_name}' has {expected_shape}: it belongs to "
                         "another volume; load the prediction made for this one.")
    spacing, origin, direction = geometry
    checks = (("spacing", image.GetSpacing(), spacing, tolerance_mm), ("origin", image.GetOrigin(), origin,
              tolerance_mm * max(1.0, max(abs(v) for v in origin))), ("direction", image.GetDirection(), direction, 1e-4))
    for label, found, wanted, tolerance in checks:
        if not np.allclose(found, wanted, rtol=0, atol=tolerance):
            found_text = ", ".join(f"{v:.4g}" for v in found)
            wanted_text = ", ".join(f"{v:.4g}" for v in wanted)
            raise ValueError(f"{what} has {label} ({found_text}) but volume '{volume_name}' has ({wanted_text}) in "
                             "LPS: it was made for another case or orientation; load the prediction made for this "
                             "volume.")
