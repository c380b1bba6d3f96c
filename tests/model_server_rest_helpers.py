"""Helpers shared by the embedded model server's REST tests."""

from __future__ import annotations

import json

import requests


def post(url: str, body: object) -> requests.Response:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return requests.post(url, data=data, timeout=30)
