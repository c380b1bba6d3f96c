"""The synchronous client of the pixelgate gateway: predict, models, health, and whole folders
with a thread pool. Every call takes `timeout=`; 503s and dropped connections are retried.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from pixelgate import _folder, _protocol
from pixelgate._errors import PixelgateError
from pixelgate._images import ImageInput
from pixelgate._protocol import DEFAULT_URL, RetryPolicy
from pixelgate._types import FileResult, Health, ModelDetail, ModelInfo, PredictResult


class Client:
    """`Client("http://localhost:8000").predict("seven.png", model="mnist")`.

    `timeout` bounds each attempt in seconds; `retries` more attempts follow a 503 or a failed
    connection, `backoff` seconds apart, doubling. Use it as a context manager to close it.
    """

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
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=_protocol.client_headers(token)
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def _request(self, method: str, path: str, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        call_timeout = _protocol.timeout_option(timeout)
        for attempt in range(self.retry_policy.retries + 1):
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self._http.request(method, path, timeout=call_timeout, **kwargs)
            except httpx.TransportError as error:
                outcome = error
            settled = _protocol.answer_or_delay(
                self.retry_policy, attempt, outcome, self.base_url, f"{method} {path}"
            )
            if isinstance(settled, httpx.Response):
                return settled
            time.sleep(settled)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def predict(
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
        """Classify one image, or a list of them in one request (one Prediction each, in order).
        `version` or `label` picks a model version; `debug=True` asks for the preprocessed images;
        `explain=True` for each prediction's `explanation` (saliency map and heatmap), which costs
        more: the gateway takes only a few images per explained request (MAX_IMAGES_PER_EXPLAIN)."""
        path, files, params, count = _protocol.predict_request(
            images, model, top_k, version, label, debug, explain
        )
        response = self._request("POST", path, timeout, files=files, params=params)
        return _protocol.predict_result(response, count)

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        return _protocol.models_list(self._request("GET", "/v1/models", timeout))

    def model(self, name: str, *, timeout: float | None = None) -> ModelDetail:
        response = self._request("GET", _protocol.model_path(name), timeout)
        return _protocol.parse(response, ModelDetail.from_json)

    def health(self, *, timeout: float | None = None) -> Health:
        """`/readyz` with each model's state. Raises PixelgateError only when there is no usable answer."""
        try:
            response = self._http.get("/readyz", timeout=_protocol.timeout_option(timeout))
        except httpx.TransportError as transport_error:
            raise _protocol.transport_error(transport_error, self.base_url)[0] from None
        return _protocol.health(response)

    def ready(self, *, timeout: float | None = None) -> bool:
        """True when the gateway answers and every model is AVAILABLE; False otherwise, never raises."""
        try:
            return self.health(timeout=timeout).ready
        except PixelgateError:
            return False

    def predict_folder(
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
        """Classify every image under `path` (a folder, a file, or a list of them), `concurrency`
        requests at a time, with a progress bar on stderr. Results come back in file order; a file the
        gateway refuses (say, not an image) gets `code` set instead of stopping the run. `output`
        (`.csv` or `.json`) also writes them there. `explain=True` asks for each file's explanation;
        `heatmap_dir` also writes its heatmap PNG there (`FileResult.heatmap`): the file's path below
        the files' common folder, plus `.heatmap.png`."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if heatmap_dir is not None and not explain:
            raise ValueError("heatmap_dir= writes explanations: give explain=True too")
        files = _folder.find_images(
            [path] if isinstance(path, (str, os.PathLike)) else path, recursive=recursive
        )
        heatmaps = _folder.heatmap_paths(files, heatmap_dir) if heatmap_dir is not None else {}
        bar = _folder.progress_bar(len(files), progress, model)

        def one(file: Path) -> FileResult:
            try:
                result = self.predict(
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

        try:
            with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pixelgate") as pool:
                futures = [pool.submit(one, file) for file in files]
                try:
                    results = [future.result() for future in futures]
                except BaseException:
                    for future in futures:  # stop what has not started; the pool waits for the rest
                        future.cancel()
                    raise
        finally:
            bar.close()
        if output is not None:
            _folder.write_results(results, output)
        return results
