"""Loaded by Orthanc's Python plugin (``PythonScript``), not by pytest: bearer-token authorisation for the test PACS.

Orthanc has no bearer-token check of its own. This filter lets a request in only when its ``Authorization``
header is ``Bearer <token>`` for a token in the configuration's ``MedCLIPSAMBearerTokens`` ({token: "read" or
"write"}): a "read" token may GET (QIDO-RS, WADO-RS) but not POST (STOW-RS). Orthanc answers a refused request
with HTTP 403. Tokens are never logged.
"""
import json

import orthanc  # only inside Orthanc

TOKENS = json.loads(orthanc.GetConfiguration()).get("MedCLIPSAMBearerTokens", {})


def allowed(uri, **request):
    header = request.get("headers", {}).get("authorization", "")
    scheme, _, token = header.partition(" ")
    scope = TOKENS.get(token) if scheme.lower() == "bearer" else None
    ok = scope == "write" or (scope == "read" and request.get("method") == orthanc.HttpMethod.GET)
    if not ok:
        orthanc.LogWarning(f"bearer filter refused {uri} ({'no token' if not header else 'token not accepted'})")
    return ok


orthanc.RegisterIncomingHttpRequestFilter(allowed)
