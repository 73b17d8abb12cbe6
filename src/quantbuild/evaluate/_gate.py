"""Recovery against the baseline and the quality gate."""

from __future__ import annotations

from typing import Any

from ..config import EvalConfig
from ._tasks import LOWER_IS_BETTER


def recovery(metric: str, base: float | None, variant: float | None) -> float | None:
    """variant / baseline, inverted where lower is better, so 1.0 means nothing lost."""
    if base is None or variant is None:
        return None
    name = metric.rsplit(".", 1)[-1]
    if name in LOWER_IS_BETTER:
        return base / variant if variant > 0 else None
    return variant / base if base > 0 else None


def thresholds(cfg: EvalConfig, variant: str, metrics: list[str]) -> dict[str, float]:
    """Gated metrics and their minimum recovery: global, then per metric, then per variant."""
    gate = cfg.gate
    chosen = dict.fromkeys(metrics, gate.min_recovery) if not gate.metrics else dict(gate.metrics)
    chosen.update(gate.variants.get(variant, {}))
    return chosen


def apply_gate(cfg: EvalConfig, variant: str, recoveries: dict[str, float | None]) -> dict[str, Any]:
    wanted = thresholds(cfg, variant, [m for m, r in recoveries.items() if r is not None])
    failures = []
    for metric, minimum in sorted(wanted.items()):
        got = recoveries.get(metric)
        if got is None:
            failures.append({"metric": metric, "recovery": None, "minimum": minimum, "reason": "not measured"})
        elif got < minimum:
            failures.append({"metric": metric, "recovery": round(got, 4), "minimum": minimum,
                             "short_by": round(minimum - got, 4)})
    return {"passed": not failures, "thresholds": wanted, "failures": failures}


def describe_failures(variant: str, gate: dict[str, Any]) -> list[str]:
    lines = []
    for f in gate["failures"]:
        if f["recovery"] is None:
            lines.append(f"{variant}: gate metric {f['metric']} was not measured (add its task or drop it from "
                         "eval.gate.metrics)")
        else:
            lines.append(f"{variant}: {f['metric']} recovery {f['recovery']:.3f} is below the gate {f['minimum']} "
                         f"by {f['short_by']:.3f}")
    return lines
