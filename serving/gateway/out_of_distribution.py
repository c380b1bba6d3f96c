"""Whether an image is like the model's training data: the version's own `ood_score` output (computed in
the SavedModel, training/ood.py) compared with the threshold its assets/ood.json was calibrated to.
The gateway computes no score; a version exported without one answers null.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

OUTPUT_KEY = "ood_score"  # serving_default's output, unless ood.json names another
ASSET = "ood.json"


@dataclass(frozen=True)
class OutOfDistribution:
    """A version's score output and threshold: an image is flagged when its score is above it."""

    output_key: str
    threshold: float | None  # None: the version answers a score but ships no usable threshold
    method: str | None = None
    target_in_distribution_flag_rate: float | None = None

    def describe(self) -> dict[str, Any] | None:
        """The model listing's `out_of_distribution`, or None without a threshold."""
        if self.threshold is None:
            return None
        return {"threshold": self.threshold, "method": self.method,
                "target_in_distribution_flag_rate": self.target_in_distribution_flag_rate}

    def judge(self, scores: np.ndarray) -> tuple[list[float | None], list[bool | None]]:
        """Per image: its score (rounded; None if not finite) and whether it is in distribution."""
        finite = np.isfinite(scores)
        rounded = [round(float(score), 4) if ok else None for score, ok in zip(scores, finite, strict=True)]
        if self.threshold is None:
            return rounded, [None] * len(rounded)
        inside = scores <= self.threshold
        return rounded, [bool(flag) if ok else None for flag, ok in zip(inside, finite, strict=True)]


def find(outputs: Mapping[str, Any], asset: Any, where: str) -> OutOfDistribution | None:
    """The score of a version whose serving_default has `outputs`, its ood.json holding `asset`
    ({} when absent); None for a version exported without a score. `where` names it in warnings."""
    values = asset if isinstance(asset, dict) else {}
    output_key = values.get("output_key", OUTPUT_KEY)
    if not isinstance(output_key, str) or output_key not in outputs:
        if values:
            logger.warning("%s: %s names output %r, which serving_default lacks: no out-of-distribution "
                           "flag", where, ASSET, output_key)
        return None
    threshold = _number(values.get("threshold"))
    if threshold is None:
        logger.warning("%s: output %r has no usable threshold in assets/%s: scores are answered, flags are "
                       "null", where, output_key, ASSET)
    method = values.get("method")
    return OutOfDistribution(output_key, threshold, method if isinstance(method, str) else None,
                             _number(values.get("target_in_distribution_flag_rate")))


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
