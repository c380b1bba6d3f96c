"""The gateway's API description: `openapi.json` (next to this module) at /openapi.json, and
the same as a plain HTML page at /docs, rendered here so that it needs no script or CDN.

A schemathesis run in the tests (tests/test_gateway_openapi.py) keeps the document true.
"""

from __future__ import annotations

import functools
import html
import json
from pathlib import Path
from typing import Any

from flask import Blueprint, Response

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")
blueprint = Blueprint("openapi", __name__)


@functools.cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text())
    return loaded


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    return Response(DOCUMENT_PATH.read_bytes(), content_type="application/json")


@blueprint.get("/docs")
def docs() -> Response:
    response = Response(render_page(document()), content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


def _schema_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    text = str(schema.get("type", "object"))
    if schema.get("type") == "array" and "items" in schema:
        text = f"array of {_schema_text(schema['items'])}"
    limits = [f"{key} {schema[key]}" for key in ("minimum", "maximum", "pattern", "default") if key in schema]
    return text + (f" ({', '.join(limits)})" if limits else "")


def _operation(path: str, method: str, operation: dict[str, Any], responses: dict[str, Any]) -> str:
    escape = html.escape
    parts = [
        f"<h3><code>{method.upper()} {escape(path)}</code></h3>",
        f"<p><b>{escape(operation.get('summary', ''))}</b></p>",
    ]
    if operation.get("description"):
        parts.append(f"<p>{escape(operation['description'])}</p>")
    parameters = operation.get("parameters", [])
    if parameters:
        rows = "".join(
            f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
            f"<td>{escape(_schema_text(p.get('schema', {})))}</td>"
            f"<td>{escape(p.get('description', ''))}</td></tr>"
            for p in parameters
        )
        parts.append(f"<table><tr><th>parameter</th><th>in</th><th>type</th><th></th></tr>{rows}</table>")
    body = operation.get("requestBody", {}).get("content", {})
    if body:
        parts.append("<p>Body: " + ", ".join(f"<code>{escape(kind)}</code>" for kind in body) + "</p>")
    items = []
    for status, answer in operation.get("responses", {}).items():
        if "$ref" in answer:
            answer = responses[answer["$ref"].rsplit("/", 1)[-1]]
        items.append(f"<li><code>{escape(status)}</code> {escape(answer.get('description', ''))}</li>")
    parts.append(f"<ul>{''.join(items)}</ul>")
    return "\n".join(parts)


def render_page(spec: dict[str, Any]) -> str:
    info = spec.get("info", {})
    responses = spec.get("components", {}).get("responses", {})
    sections = [
        _operation(path, method, operation, responses)
        for path, methods in spec.get("paths", {}).items()
        for method, operation in methods.items()
    ]
    title = html.escape(info.get("title", "API"))
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;"
        "text-align:left}h3{margin-top:2rem}</style></head><body>"
        f"<h1>{title} <small>{html.escape(info.get('version', ''))}</small></h1>"
        f"<p>{html.escape(info.get('description', ''))}</p>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3).</p>"
        + "\n".join(sections)
        + "</body></html>"
    )
