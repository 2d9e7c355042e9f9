"""Qt-free Slicer glue: MRML apply/undo (``mrml``), the local engine process (``engine_process``) and one
Segment click as a step-by-step run (``run``). Torch is never imported here: Slicer's own Python is a
client of the engine process."""
