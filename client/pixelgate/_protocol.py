"""What the sync and async clients share: building requests, reading answers and errors,
and the retry policy (which failures to retry, how long to wait). No I/O happens here.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlsplit

import httpx

from pixelgate._errors import PixelgateError
from pixelgate._images import ImageInput, encode_image
from pixelgate._types import Health, ModelInfo, PredictResult

DEFAULT_URL = "http://localhost:8000"
# 503: the model server is down, restarting or overloaded; 502: a proxy in front could not reach
# the gateway. Both mean "nothing was done, try again"; 504 (deadline) is not retried, to add no load.
RETRY_STATUSES = frozenset({502, 503})
logger = logging.getLogger("pixelgate")


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `retries` more attempts after the first, waiting about `backoff` * 2**n seconds
    (jittered, at most `max_backoff`, or the server's Retry-After when it is shorter than that)."""

    retries: int = 2
    backoff: float = 0.25
    max_backoff: float = 4.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must not be negative")

    def delay(self, retry_number: int, response: httpx.Response | None = None) -> float:
        ceiling: float = min(self.max_backoff, self.backoff * 2**retry_number)
        retry_after = _retry_after(response)
        if retry_after is not None:
            return min(self.max_backoff, retry_after)
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter spreads clients that failed together


def _retry_after(response: httpx.Response | None) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def timeout_option(timeout: float | None) -> float | httpx._client.UseClientDefault:
    """A call's own timeout, or the client's."""
    return httpx.USE_CLIENT_DEFAULT if timeout is None else timeout


# 503s that another attempt cannot change: the model's export is unusable until someone fixes it.
PERMANENT_ERROR_CODES = frozenset({"model_misconfigured"})


def should_retry(response: httpx.Response) -> bool:
    if response.status_code not in RETRY_STATUSES:
        return False
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):  # not JSON, or not an object: a proxy's page
        return True
    return code not in PERMANENT_ERROR_CODES


def transport_error(error: httpx.TransportError, base_url: object) -> tuple[PixelgateError, bool]:
    """The SDK error for a failed exchange, and whether trying again is safe and useful.
    Connections that failed or were dropped are retried; a slow answer (read timeout) is not."""
    if isinstance(error, httpx.ConnectTimeout):
        return PixelgateError(f"cannot connect to {base_url} in time: {error}", code="connection_error"), True
    if isinstance(error, httpx.TimeoutException):
        return PixelgateError(
            f"no answer from {base_url} in time ({type(error).__name__})", code="timeout"
        ), False
    if isinstance(error, (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
        return PixelgateError(
            f"cannot reach {base_url}: {error or type(error).__name__}", code="connection_error"
        ), True
    return PixelgateError(f"request to {base_url} failed: {error}", code="connection_error"), False


def answer_or_delay(
    policy: RetryPolicy,
    attempt: int,
    outcome: httpx.Response | httpx.TransportError,
    base_url: str,
    request: str,
) -> httpx.Response | float:
    """After attempt `attempt` (from 0) of `request` ("POST /path"): the call's answer, or the seconds
    to wait before the next attempt (logged). Raises what ends the call: an error answer, or a
    failed exchange that is not retried or was the last attempt."""
    if isinstance(outcome, httpx.TransportError):
        error, retryable = transport_error(outcome, base_url)
        if not retryable or attempt == policy.retries:
            raise error from None
        response, reason = None, error.code
    else:
        if not should_retry(outcome) or attempt == policy.retries:
            raise_for_error(outcome)
            return outcome
        response, reason = outcome, f"HTTP {outcome.status_code}"
    delay = policy.delay(attempt, response)
    logger.info(
        "retrying %s in %.2fs (attempt %d of %d) after %s",
        request,
        delay,
        attempt + 2,
        policy.retries + 1,
        reason,
    )
    return delay


def gateway_url(url: str) -> str:
    """The gateway's base URL, checked: a typo is a ValueError here, not a traceback at the first
    call, nor requests to another port or path than the one meant."""
    url = url.strip()
    hint = f"; did you mean http://{url}?" if _HOST_PORT.fullmatch(url) else ""
    try:
        port = urlsplit(url).port  # also refuses a port out of 0..65535, which httpx wraps around
        parsed = httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as error:
        raise ValueError(f"invalid gateway URL {url!r}: {error}{hint}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host or port == 0:
        raise ValueError(f"the gateway URL must be http(s)://host[:port][/path], got {url!r}{hint}")
    if parsed.query or parsed.fragment:
        raise ValueError(f"the gateway URL {url!r} has a query or fragment; requests add their own paths")
    return url.rstrip("/")


_HOST_PORT = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?/?")  # "localhost:8000": the scheme left out


def raise_for_error(response: httpx.Response) -> None:
    """Raise the gateway's `{"error", "code"}` answer as a PixelgateError; an error answer that is
    not that (a proxy's page, another server) is `invalid_response`, with the status it had."""
    if response.is_success:
        return
    try:
        body = response.json()
        message, code = str(body["error"]), str(body["code"])  # every gateway error has both
    except (ValueError, KeyError, TypeError):  # another server's answer: TF Serving's {"error"}, a page
        page = " ".join(response.text[:200].split())
        message, code = f"{_answered(response)}: {page or response.reason_phrase}", "invalid_response"
    raise PixelgateError(message, code=code, status=response.status_code) from None


def _answered(response: httpx.Response) -> str:
    return f"{response.request.url} answered {response.headers.get('content-type', 'no content type')}"


def invalid_response(response: httpx.Response, what: str) -> PixelgateError:
    return PixelgateError(
        f"{_answered(response)}, {what}; is this a pixelgate gateway?",
        code="invalid_response",
        status=response.status_code,
    )


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise invalid_response(response, "not JSON") from None


T = TypeVar("T")


def parse(response: httpx.Response, build: Callable[[Any], T]) -> T:
    """`build(JSON body)`; JSON in another shape (another server's, say) is `invalid_response`."""
    body = json_body(response)
    try:
        return build(body)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        shape = f"not the answer expected ({type(error).__name__}: {error})"
        raise invalid_response(response, shape) from None


def predict_result(response: httpx.Response, count: int) -> PredictResult:
    result = parse(response, PredictResult.from_json)
    if len(result.predictions) != count:
        raise invalid_response(response, f"{len(result.predictions)} predictions for {count} images")
    return result


def models_list(response: httpx.Response) -> list[ModelInfo]:
    return parse(response, lambda body: [ModelInfo.from_json(model) for model in body["models"]])


def health(response: httpx.Response) -> Health:
    """/readyz answers 200 when ready and 503 when not, both with `ready` and each model's state.
    Any other answer (a 404 from a wrong URL, a 401 from a proxy) is an error, not "not ready"."""
    if response.status_code not in (200, 503):
        raise_for_error(response)
    body = json_body(response)
    if not isinstance(body, dict) or "ready" not in body:
        raise_for_error(response)
        raise invalid_response(response, "without the readiness fields (ready, models)")
    models = parse(response, lambda body: {str(k): str(v) for k, v in dict(body.get("models") or {}).items()})
    return Health(ready=response.status_code == 200 and body["ready"] is True, models=models)


def predict_request(
    images: ImageInput | Sequence[ImageInput],
    model: str,
    top_k: int | None,
    version: int | None,
    label: str | None,
    debug: bool,
    explain: bool = False,
) -> tuple[str, list[tuple[str, tuple[str, bytes, str]]], dict[str, Any], int]:
    """(path, multipart files, query, image count). Images are read once, here: retries resend these bytes."""
    if version is not None and label is not None:
        raise ValueError("give either version= or label=, not both")
    if not model:
        raise ValueError("model= is required, e.g. model='mnist'")
    # A list or tuple is a batch; anything else is one image (a str is a Sequence too, but one path).
    batch = list(images) if isinstance(images, (list, tuple)) else [cast(ImageInput, images)]
    if not batch:
        raise ValueError("no images given")
    files = [("image", encode_image(image)) for image in batch]
    options = {
        "top_k": top_k,
        "version": version,
        "label": label,
        "debug": "true" if debug else None,
        "explain": "true" if explain else None,
    }
    params = {key: value for key, value in options.items() if value is not None}
    return f"/v1/models/{quote(model, safe='')}:predict", files, params, len(batch)


def model_path(name: str) -> str:
    return f"/v1/models/{quote(name, safe='')}"


def client_headers(token: str | None) -> dict[str, str]:
    from pixelgate import __version__

    headers = {"User-Agent": f"pixelgate-client/{__version__}", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers
