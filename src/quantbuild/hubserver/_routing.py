"""Route registry and the HTTP error type shared by the read and write routes."""

from __future__ import annotations

import re
from typing import Callable

REPO = r"(?P<org>[^/]+)/(?P<name>[^/]+)"
API = rf"^/api/(?P<plural>models|datasets|spaces)/{REPO}"


class HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


ROUTES: list[tuple[str, re.Pattern, str]] = []


def route(method: str, pattern: str) -> Callable:
    def register(fn: Callable) -> Callable:
        ROUTES.append((method, re.compile(pattern), fn.__name__))
        return fn
    return register
