"""Benchmarks of the engine as a service: a real ``medclipsam serve`` child process timed through the client,
as Slicer uses it. They start the engine the way Slicer does (``slicer.engine_process``), so they sit on top
with the front ends, not inside ``server``."""
