# Slicer-like build tree: nothing to generate.
