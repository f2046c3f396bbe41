"""/docs: Swagger UI over /v1/openapi.json, from the swagger-ui-bundle-v2 package's files.

Everything the page loads comes from the gateway itself, so it works on an air-gapped cluster,
and its Content-Security-Policy lets the browser fetch nothing from anywhere else. "Authorize"
takes an API key (the bearerAuth scheme) for "Try it out".
"""

from __future__ import annotations

import importlib
from html import escape
from pathlib import Path
from typing import Any

# The package ships no type information; all it holds is where its files are.
_BUNDLE_DIR = Path(importlib.import_module("swagger_ui_bundle").swagger_ui_path)

PREFIX = "/docs/"
OPENAPI_URL = "/v1/openapi.json"
ASYNCAPI_URL = "/v1/asyncapi.json"

# The bundle's files the page uses (the standalone preset and its top bar, which loads any URL
# typed into it, are left out), and the page's own start-up script.
_BUNDLED = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
_SCRIPT = "start.js"
_START = f"""window.ui = SwaggerUIBundle({{
  url: "{OPENAPI_URL}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
}});
"""

# Swagger UI sets inline styles and shows inline SVG and data: images; nothing else is allowed.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def page(openapi: dict[str, Any]) -> str:
    """The explorer, with the operations listed for a browser or client that runs no script."""
    operations = "".join(
        f"<li><code>{escape(method.upper())} {escape(path)}</code> {escape(op.get('summary', ''))}</li>"
        for path, item in openapi.get("paths", {}).items()
        for method, op in item.items()
    )
    title = escape(openapi.get("info", {}).get("title", "API"))
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{PREFIX}swagger-ui.css">
<link rel="icon" type="image/png" href="{PREFIX}favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="{PREFIX}favicon-16x16.png" sizes="16x16">
</head>
<body>
<nav class="swagger-ui"><div class="wrapper"><p>
REST API: <a href="{OPENAPI_URL}">OpenAPI document</a> &middot;
Events: <a href="{ASYNCAPI_URL}">AsyncAPI document</a>
</p></div></nav>
<div id="swagger-ui"><noscript><ul>{operations}</ul></noscript></div>
<script src="{PREFIX}swagger-ui-bundle.js"></script>
<script src="{PREFIX}{_SCRIPT}"></script>
</body>
</html>
"""


def asset(name: str) -> tuple[Path | str, str] | None:
    """(a bundled file or the script's text, its content type) of an asset, None if unknown."""
    if name == _SCRIPT:
        return _START, "text/javascript; charset=utf-8"
    if name in _BUNDLED:
        return _BUNDLE_DIR / name, _BUNDLED[name]
    return None
