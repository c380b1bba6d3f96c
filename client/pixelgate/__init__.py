"""pixelgate's Python SDK: classify images through a pixelgate gateway, no TensorFlow needed.

`Client` and `AsyncClient` send paths, bytes, files, PIL images or NumPy arrays and return
dataclasses; every failure is one `PixelgateError` carrying the gateway's `code` and status.
"""

from typing import TYPE_CHECKING

from pixelgate._client import Client
from pixelgate._errors import PixelgateError
from pixelgate._types import (
    ClassScore,
    Explanation,
    FileResult,
    Health,
    ModelDetail,
    ModelInfo,
    OutOfDistribution,
    Prediction,
    PredictResult,
    VersionStatus,
)

__all__ = [
    "AsyncClient",
    "ClassScore",
    "Client",
    "Explanation",
    "FileResult",
    "Health",
    "ModelDetail",
    "ModelInfo",
    "OutOfDistribution",
    "PixelgateError",
    "PredictResult",
    "Prediction",
    "VersionStatus",
]
__version__ = "0.3.0"

if TYPE_CHECKING:
    from pixelgate._async_client import AsyncClient


def __getattr__(name: str) -> object:
    # AsyncClient pulls in asyncio (the larger part of the import time): only when asked for.
    if name == "AsyncClient":
        from pixelgate._async_client import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'pixelgate' has no attribute {name!r}")
