"""Shared entry for stages/*.py: one-line errors and a non-zero exit, never a traceback for user errors."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from ._progress import fmt_seconds, log
from .errors import ConfigError, QuantbuildError


def report(exc: QuantbuildError) -> int:
    lines = exc.lines() if isinstance(exc, ConfigError) else [str(exc)]
    for line in lines:
        print(f"error: {line}", file=sys.stderr, flush=True)
    return exc.exit_code


def run_stage(name: str, work: Callable[[], Any]) -> None:
    start = time.monotonic()
    log(name, "started")
    try:
        work()
    except QuantbuildError as exc:
        sys.exit(report(exc))
    except KeyboardInterrupt:
        print(f"error: {name}: interrupted; no partial output was kept", file=sys.stderr)
        sys.exit(130)
    log(name, f"done in {fmt_seconds(time.monotonic() - start)}")
