"""A variant's perplexity change against the base, in the layout the evaluate stage records it.

One layout, written by the evaluate stage and read by the gate, the card and the benchmarks:
`change.<metric>_pct` (e.g. change.ppl.news.token_perplexity_pct) with its 95 % interval over the held-out
windows in `…_pct_ci95_low` and `…_pct_ci95_high` (evaluate._perplexity.paired_change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Change:
    pct: float
    ci95_low_pct: float | None = None   # None: fewer than two windows, so no interval
    ci95_high_pct: float | None = None

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.ci95_low_pct is None or self.ci95_high_pct is None:
            return None
        return self.ci95_low_pct, self.ci95_high_pct


def change_key(metric: str) -> str:
    return f"change.{metric}_pct"


def finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite (True and False are not figures)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite_or_none(value: Any) -> float | None:
    return value if finite(value) else None


def change_metrics(metric: str, change: Change) -> dict[str, float | None]:
    """The evaluate stage's metrics entries for one change; a non-finite figure is recorded as null (JSON has
    no NaN), which the gate reads as "not measured" rather than as a pass."""
    key = change_key(metric)
    return {key: _finite_or_none(change.pct), key + "_ci95_low": _finite_or_none(change.ci95_low_pct),
            key + "_ci95_high": _finite_or_none(change.ci95_high_pct)}


def change_of(metrics: dict[str, Any], metric: str) -> Change | None:
    """The recorded change of `metric` (e.g. "ppl.news.token_perplexity"); None where none was recorded."""
    key = change_key(metric)
    pct = _finite_or_none(metrics.get(key))
    if pct is None:
        return None
    low, high = (_finite_or_none(metrics.get(key + suffix)) for suffix in ("_ci95_low", "_ci95_high"))
    return Change(pct, low, high) if low is not None and high is not None else Change(pct)
