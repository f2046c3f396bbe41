"""/docs: a self-contained HTML reference rendered from the OpenAPI document.

No script or CDN: it works on an air-gapped cluster; tools that want the machine-readable
form read /v1/openapi.json (Swagger UI, Redoc and code generators take it as is).
"""

from __future__ import annotations

from html import escape
from typing import Any


def render(openapi: dict[str, Any]) -> str:
    info = openapi.get("info", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape(info.get('title', 'API'))}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}code{background:#f3f3f3;padding:0 .2rem}h3{margin-bottom:.2rem}"
        ".m{font-weight:bold;display:inline-block;width:4.5rem}</style></head><body>",
        f"<h1>{escape(info.get('title', 'API'))} <small>{escape(info.get('version', ''))}</small></h1>",
        "<p>Authenticate with <code>Authorization: Bearer &lt;API key&gt;</code>. "
        "Errors are <code>application/problem+json</code>. POSTs accept <code>Idempotency-Key</code>; "
        "updates and deletes accept <code>If-Match</code>. The machine-readable document is "
        "<a href='/v1/openapi.json'>/v1/openapi.json</a>.</p>",
    ]
    for path, item in openapi.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            params = ", ".join(
                f"<code>{escape(p['name'])}</code> ({escape(p['in'])})"
                for p in op.get("parameters", [])
                if "name" in p
            )
            parts.append(
                f"<h3><span class='m'>{escape(method.upper())}</span><code>{escape(path)}</code></h3>"
                f"<p>{escape(op.get('summary') or op.get('description') or '')}</p>"
                f"<p>Scope: <code>{escape(str(op.get('x-required-scope', '')))}</code>"
                + (f"; parameters: {params}" if params else "")
                + "</p>"
            )
    parts.append("</body></html>")
    return "".join(parts)
