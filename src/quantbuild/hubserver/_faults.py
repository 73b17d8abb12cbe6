"""Fault injection for reliability tests: the Nth matching request gets a 500, a 429 or a dropped body."""

from __future__ import annotations

import re
import threading
from typing import Any

ACTIONS = ("500", "502", "503", "429", "drop")


class Faults:
    """Rules: {"nth": N, "action": "500"|"429"|"drop", "method"?: "GET", "path"?: regex,
    "times"?: 1, "retry_after"?: seconds, "fraction"?: 0.5 (share of the body sent before a drop)}.

    Each rule counts the requests it matches; requests nth .. nth+times-1 get the fault.
    """

    def __init__(self, rules: list[dict[str, Any]] | None = None):
        self.lock = threading.Lock()
        self.rules: list[dict[str, Any]] = []
        self.counts: list[int] = []
        self.fired: list[dict[str, Any]] = []
        self.set_rules(rules or [])

    def set_rules(self, rules: list[dict[str, Any]]) -> None:
        for rule in rules:
            if str(rule.get("action")) not in ACTIONS:
                raise ValueError(f"fault action {rule.get('action')!r} must be one of {', '.join(ACTIONS)}")
            if int(rule.get("nth", 1)) < 1:
                raise ValueError("fault nth counts from 1")
        with self.lock:
            self.rules = [dict(r, action=str(r["action"])) for r in rules]
            self.counts = [0] * len(rules)

    def add(self, action: str, nth: int = 1, **kwargs: Any) -> None:
        self.set_rules(self.rules + [{"action": action, "nth": nth, **kwargs}])

    def clear(self) -> None:
        self.set_rules([])
        self.fired.clear()

    def check(self, method: str, path: str) -> dict[str, Any] | None:
        if path.startswith("/_admin/"):
            return None
        with self.lock:
            for i, rule in enumerate(self.rules):
                if rule.get("method") and rule["method"] != method:
                    continue
                if rule.get("path") and not re.search(rule["path"], path):
                    continue
                self.counts[i] += 1
                first = int(rule.get("nth", 1))
                if first <= self.counts[i] < first + int(rule.get("times", 1)):
                    self.fired.append({"method": method, "path": path, **rule})
                    return rule
        return None
