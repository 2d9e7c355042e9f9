"""``medclipsam web``: the radiologist's workflow in a browser, a third front end beside the CLI and the Slicer
module, on the same engine client and the same Qt-free Slicer glue (``MedCLIPSAMLib.slicer``), drawn by
Kitware's trame-slicer (slicer-core MRML, real slice views, segment editor) in a web page.

One concern per file: ``state`` (what the page shows), ``ui`` (the page), ``logic`` (runs and corrections),
``loading``, ``export``, ``review``, ``slice_input`` (drags and clicks in a slice view), ``app`` (wiring and
serving) and ``cli`` (the command). Nothing below this package imports it.
"""
