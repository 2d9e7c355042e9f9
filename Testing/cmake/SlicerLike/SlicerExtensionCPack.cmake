# Slicer-like build tree: no package is made.
