"""Console progress a person can read in a DVC log: stage, step i of n, elapsed, time left."""

from __future__ import annotations

import sys
import time


def log(stage: str, message: str) -> None:
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Prints `[stage] what i/n, elapsed Xs, ~Ys left` at most every `every` seconds, and at the end."""

    def __init__(self, stage: str, what: str, total: int, every: float = 5.0):
        self.stage, self.what, self.total, self.every = stage, what, max(total, 0), every
        self.start = time.monotonic()
        self.last = 0.0
        self.done = 0

    def update(self, done: int | None = None, note: str = "") -> None:
        self.done = self.done + 1 if done is None else done
        now = time.monotonic()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        tail = f", ~{fmt_seconds(left)} left" if self.done < self.total else ""
        log(self.stage, f"{self.what} {self.done}/{self.total}, elapsed {fmt_seconds(elapsed)}{tail}"
            + (f" ({note})" if note else ""))
