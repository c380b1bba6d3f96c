"""What the gateway's hostile-input tests share: a digit PNG that must get through, and how they post."""

from __future__ import annotations

import numpy as np
import requests

from tests.hostile_images import encode

TIMEOUT = 60  # per request: far beyond any honest answer; a hang fails the test instead of stalling it
DIGIT = np.zeros((28, 28), np.uint8)
DIGIT[6:22, 12:16] = 255  # a "1", enough for requests that must get through
PNG = encode(DIGIT)


def predict(url, name="mnist", query="", **kwargs):
    return requests.post(f"{url}/v1/models/{name}:predict{query}", timeout=TIMEOUT, **kwargs)


def raw(payload, content_type="image/png"):
    return {"data": payload, "headers": {"Content-Type": content_type}}

