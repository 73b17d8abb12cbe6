"""Retry Hub calls on transient failures (5xx, 429, dropped connections) with exponential backoff."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from ._progress import log

T = TypeVar("T")
TRANSIENT_STATUS = {429, 500, 502, 503, 504}


def is_transient(exc: BaseException) -> bool:
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return getattr(exc.response, "status_code", None) in TRANSIENT_STATUS
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


def with_retries(call: Callable[[], T], *, stage: str, what: str, attempts: int = 4, base_wait: float = 1.0) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            wait = base_wait * 2 ** (attempt - 1)
            status = getattr(getattr(exc, "response", None), "status_code", type(exc).__name__)
            log(stage, f"{what}: transient error ({status}); retry {attempt}/{attempts - 1} in {wait:.0f}s")
            time.sleep(wait)
    raise AssertionError("unreachable")
