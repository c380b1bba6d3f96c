"""Explanations (explain=true): which signature of a version answers a saliency map (its assets/explain.json),
and each map as the answer carries it: rounded floats and a colour heatmap PNG (numpy and Pillow only).
"""

from __future__ import annotations

import base64
import io
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

ASSET = "explain.json"
SIGNATURE = "explain"  # the signature and output when explain.json does not name them
OUTPUT_KEY = "saliency"
SIGNIFICANT_DIGITS = 4  # of a map's largest value: the JSON stays small, nothing visible is lost

# Inferno-like: dark (no evidence) through purple and orange to pale yellow (the strongest).
_ANCHORS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], np.float64)
_PALETTE = np.stack([np.interp(np.linspace(0, 1, 256), _ANCHORS, _COLOURS[:, channel])
                     for channel in range(3)], axis=1).round().astype(np.uint8)


@dataclass(frozen=True)
class ExplanationSignature:
    """The signature of a version that answers saliency maps [N, H, W] for its input images."""

    name: str
    input_key: str
    output_key: str
    method: str


def find(signatures: Mapping[str, Any], asset: Any, input_key: str,
         where: str) -> ExplanationSignature | None:
    """The explanation signature among a version's `signatures` (SignatureDefs by name), as its
    explain.json (`asset`, {} when absent) describes it; None for a version exported without one."""
    values = asset if isinstance(asset, dict) else {}
    name, output_key = values.get("signature", SIGNATURE), values.get("output_key", OUTPUT_KEY)
    if not isinstance(name, str) or name not in signatures:
        if values:
            logger.warning("%s: %s names signature %r, which the model server does not serve",
                           where, ASSET, name)
        return None
    signature = signatures[name]
    inputs = list(signature.inputs)
    if input_key not in inputs:
        if len(inputs) != 1:
            logger.warning("%s: signature %r has inputs %s: no explanations", where, name, sorted(inputs))
            return None
        input_key = inputs[0]
    if not isinstance(output_key, str) or output_key not in signature.outputs:
        logger.warning("%s: signature %r has no output %r: no explanations", where, name, output_key)
        return None
    method = values.get("method")
    method = method if isinstance(method, str) else "saliency"
    return ExplanationSignature(name, input_key, output_key, method)


def explanation(saliency: np.ndarray, method: str) -> dict[str, Any]:
    """One image's `explanation`: the H×W map, rounded, and the same as a base64 heatmap PNG."""
    values = np.nan_to_num(np.asarray(saliency, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    values = np.maximum(values, 0.0)  # the maps show evidence for the label; none against it is 0
    peak = float(values.max(initial=0.0))
    if peak > 0:
        values = np.round(values, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(peak)))
    return {"method": method, "saliency": values.tolist(),
            "heatmap_png": base64.b64encode(heatmap_png(values, peak)).decode("ascii")}


def heatmap_png(values: np.ndarray, peak: float) -> bytes:
    """An H×W map of values in [0, peak] as an RGB PNG of the same size, the palette's brightest at `peak`."""
    levels = np.zeros(values.shape, np.uint8)
    if peak > 0:
        levels = np.rint(np.clip(values / peak, 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(_PALETTE[levels]).save(buffer, format="PNG")
    return buffer.getvalue()
