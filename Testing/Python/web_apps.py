"""The web page's app for tests, built in-process on its own trame server (no browser): what ``medclipsam web``
builds from its options, so a test reads the page's state (``app.panel``) directly."""
from __future__ import annotations

import pytest


def make_app(tmp_path, name: str, **config):
    pytest.importorskip("trame_slicer")
    from trame.app import get_server

    from MedCLIPSAMLib.web.app import WebApp, WebConfig
    from MedCLIPSAMLib.web.engine import EngineHolder

    server = get_server(name=f"web-pacs-{name}-{tmp_path.name}", client_type="vue3")
    return WebApp(WebConfig(EngineHolder(local_args=["--device", "cpu"]), **config), server)
