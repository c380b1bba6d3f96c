"""The open-loop schedule both load generators share: request i is due at start + i / rate,
for `seconds`, whether or not earlier ones have been answered (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

Request = TypeVar("Request")


async def paced(
    requests: Sequence[Request], rate: float, seconds: float
) -> AsyncIterator[tuple[Request, float]]:
    """Yield (request, scheduled start) at each one's scheduled time, cycling through `requests`."""
    start = time.perf_counter()
    for index, request in enumerate(itertools.cycle(requests)):
        scheduled = start + index / rate
        if scheduled >= start + seconds:
            return
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        yield request, scheduled
