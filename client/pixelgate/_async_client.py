"""The asyncio client of the pixelgate gateway: the same calls as `Client`, awaited, and
`predict_folder` with a semaphore bounding the requests in flight.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from pixelgate import _folder, _protocol
from pixelgate._errors import PixelgateError
from pixelgate._images import ImageInput
from pixelgate._protocol import DEFAULT_URL, RetryPolicy
from pixelgate._types import FileResult, Health, ModelDetail, ModelInfo, PredictResult


class AsyncClient:
    """`async with AsyncClient(url) as client: await client.predict("seven.png", model="mnist")`.
    Same arguments, timeouts and retries as `Client`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        retries: int = 2,
        backoff: float = 0.25,
        max_backoff: float = 4.0,
    ):
        self.base_url = _protocol.gateway_url(base_url)
        self.retry_policy = RetryPolicy(retries, backoff, max_backoff)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=_protocol.client_headers(token)
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    async def _request(
        self, method: str, path: str, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        call_timeout = _protocol.timeout_option(timeout)
        for attempt in range(self.retry_policy.retries + 1):
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = await self._http.request(method, path, timeout=call_timeout, **kwargs)
            except httpx.TransportError as error:
                outcome = error
            settled = _protocol.answer_or_delay(
                self.retry_policy, attempt, outcome, self.base_url, f"{method} {path}"
            )
            if isinstance(settled, httpx.Response):
                return settled
            await asyncio.sleep(settled)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    async def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        model: str,
        top_k: int | None = None,
        version: int | None = None,
        label: str | None = None,
        debug: bool = False,
        explain: bool = False,
        timeout: float | None = None,
    ) -> PredictResult:
        """Classify one image, or a list of them in one request (one Prediction each, in order);
        `explain=True` adds each prediction's `explanation`, as with `Client.predict`."""
        path, files, params, count = _protocol.predict_request(
            images, model, top_k, version, label, debug, explain
        )
        response = await self._request("POST", path, timeout, files=files, params=params)
        return _protocol.predict_result(response, count)

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        return _protocol.models_list(await self._request("GET", "/v1/models", timeout))

    async def model(self, name: str, *, timeout: float | None = None) -> ModelDetail:
        response = await self._request("GET", _protocol.model_path(name), timeout)
        return _protocol.parse(response, ModelDetail.from_json)

    async def health(self, *, timeout: float | None = None) -> Health:
        try:
            response = await self._http.get("/readyz", timeout=_protocol.timeout_option(timeout))
        except httpx.TransportError as transport_error:
            raise _protocol.transport_error(transport_error, self.base_url)[0] from None
        return _protocol.health(response)

    async def ready(self, *, timeout: float | None = None) -> bool:
        try:
            return (await self.health(timeout=timeout)).ready
        except PixelgateError:
            return False

    async def predict_folder(
        self,
        path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        model: str,
        top_k: int | None = None,
        version: int | None = None,
        label: str | None = None,
        concurrency: int = 4,
        output: str | os.PathLike[str] | None = None,
        progress: bool = True,
        recursive: bool = True,
        explain: bool = False,
        heatmap_dir: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
    ) -> list[FileResult]:
        """Like `Client.predict_folder`, with at most `concurrency` requests in flight."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if heatmap_dir is not None and not explain:
            raise ValueError("heatmap_dir= writes explanations: give explain=True too")
        files = _folder.find_images(
            [path] if isinstance(path, (str, os.PathLike)) else path, recursive=recursive
        )
        heatmaps = _folder.heatmap_paths(files, heatmap_dir) if heatmap_dir is not None else {}
        bar = _folder.progress_bar(len(files), progress, model)
        slots = asyncio.Semaphore(concurrency)

        async def one(file: Path) -> FileResult:
            async with slots:
                try:
                    result = await self.predict(
                        file,
                        model=model,
                        top_k=top_k,
                        version=version,
                        label=label,
                        explain=explain,
                        timeout=timeout,
                    )
                    return _folder.file_result(file, model, result, heatmaps.get(file))
                except OSError as error:
                    return _folder.failed_file(file, model, error)
                except PixelgateError as error:
                    if not _folder.is_per_file(error):
                        raise
                    return _folder.failed_file(file, model, error)
                finally:
                    bar.update(1)

        tasks = [asyncio.ensure_future(one(file)) for file in files]
        try:
            results = list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            bar.close()
        if output is not None:
            _folder.write_results(results, output)
        return results
