"""Optional bearer-token authentication: tokens from GATEWAY_TOKENS and/or GATEWAY_TOKENS_FILE.

With no token configured every request passes. Otherwise each request but the open ones
(health, readiness, metrics, API docs, the try-it page) needs `Authorization: Bearer <token>`.
Tokens are compared in constant time, and a refusal never says which part was wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serving.gateway.errors import UnauthorizedError

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})
OPEN_PREFIXES = ("/static/",)
_RECHECK_SECONDS = 1.0  # how often the token file's modification time is looked at


def _digest(token: str) -> bytes:
    # Equal-length digests: compare_digest then takes the same time whatever the token's length.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_tokens(text: str, separator: str = ",") -> list[str]:
    tokens = []
    for item in text.split(separator):
        item = item.strip()
        if item and not item.startswith("#"):
            tokens.append(item)
    return tokens


class TokenAuthenticator:
    """Holds the accepted tokens' digests; re-reads the token file when it changes (rotation)."""

    def __init__(self, tokens: str = "", tokens_file: str = ""):
        self._inline = [_digest(token) for token in parse_tokens(tokens)]
        self._file = Path(tokens_file) if tokens_file else None
        self._file_digests: list[bytes] = []
        self._file_stamp: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        if self._file is not None:
            self._reload_file(required=True)

    @property
    def enabled(self) -> bool:
        return bool(self._inline) or self._file is not None

    def _reload_file(self, required: bool = False) -> None:
        assert self._file is not None
        try:
            stat = self._file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._file_stamp:
                return
            digests = [_digest(token) for token in parse_tokens(self._file.read_text(), "\n")]
        except OSError as error:
            if required:
                raise ValueError(f"GATEWAY_TOKENS_FILE={self._file} cannot be read: {error}") from error
            logger.error("keeping the previous tokens: %s cannot be read: %s", self._file, error)
            return
        self._file_digests, self._file_stamp = digests, stamp
        logger.info("read %d bearer token(s) from %s", len(digests), self._file)

    def _digests(self) -> list[bytes]:
        if self._file is not None and time.monotonic() - self._checked_at > _RECHECK_SECONDS:
            with self._lock:
                self._checked_at = time.monotonic()
                self._reload_file()
        return self._inline + self._file_digests

    def is_valid(self, token: str) -> bool:
        presented = _digest(token)
        matched = False
        for accepted in self._digests():  # no early exit: the time does not depend on which token matched
            matched |= hmac.compare_digest(presented, accepted)
        return matched

    def check(self, path: str, authorization: str | None) -> None:
        """Raise UnauthorizedError unless `path` is open or `authorization` carries an accepted token."""
        if not self.enabled or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return
        scheme, _, token = (authorization or "").partition(" ")
        # One answer for a missing header, another scheme and a wrong token alike.
        if not (scheme.lower() == "bearer" and self.is_valid(token.strip())):
            raise UnauthorizedError(
                "authentication required: send a valid token as 'Authorization: Bearer <token>'"
            )


def from_config(config: Mapping[str, Any]) -> TokenAuthenticator:
    return TokenAuthenticator(
        config.get("GATEWAY_TOKENS", ""), os.fspath(config.get("GATEWAY_TOKENS_FILE", ""))
    )
