"""A model version's status as ModelService.GetModelStatus reports it (no TensorFlow needed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VersionStatus:
    """One version of a model: its number, its state (e.g. AVAILABLE) and the error that put it there."""

    version: int
    state: str
    error: str
