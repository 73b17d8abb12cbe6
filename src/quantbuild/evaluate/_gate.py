"""Recovery against the baseline and the quality gate. Fails closed.

A gated metric passes only when its recovery is a finite number at or above its threshold. A metric the
policy names that was not measured, is NaN or infinite, or whose recovery cannot be computed, fails and is
named. The one exception is 0/0 of two finite values (a 135M model scores 0 on GSM8K, and so does every
variant): that is reported as "not gateable", and fails too while the policy gates it; exclude it by
listing the gated metrics in `eval.gate.metrics`.

Thresholds, most specific last: `min_recovery` for every metric when `metrics` is empty, then `metrics`
(metric or glob -> minimum recovery), then `methods.<method>`, then `variants.<variant>`.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

from ..config import GateConfig
from ._tasks import LOWER_IS_BETTER


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def recovery(metric: str, base: Any, variant: Any) -> tuple[float | None, str]:
    """(variant / baseline, inverted where lower is better; status). 1.0 means nothing lost.

    status: "ok", "missing" (either side absent), "invalid" (NaN or infinite), "zero_over_zero" (both 0),
    "uncomputable" (a zero denominator with a non-zero numerator, or a non-positive perplexity)."""
    if base is None or variant is None:
        return None, "missing"
    if not (_finite(base) and _finite(variant)):
        return None, "invalid"
    name = metric.rsplit(".", 1)[-1]
    num, den = (base, variant) if name in LOWER_IS_BETTER else (variant, base)
    if num == 0 and den == 0:
        return None, "zero_over_zero"
    if den == 0 or (name in LOWER_IS_BETTER and (base <= 0 or variant <= 0)):
        return None, "uncomputable"
    return num / den, "ok"


def thresholds(gate: GateConfig, variant: str, method: str | None, measured: list[str]) -> dict[str, float]:
    """Gated metric -> minimum recovery. Globs in the policy expand over the measured metrics; a glob or
    name that matches nothing stays in the table as itself (and then fails as not measured)."""
    def expand(table: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for pattern, minimum in table.items():
            hits = [m for m in measured if fnmatch.fnmatchcase(m, pattern)] if any(c in pattern for c in "*?[") else []
            for name in hits or [pattern]:
                out[name] = minimum
        return out

    chosen = dict.fromkeys(measured, gate.min_recovery) if not gate.metrics else expand(gate.metrics)
    if method and method in gate.methods:
        chosen.update(expand(gate.methods[method]))
    chosen.update(expand(gate.variants.get(variant, {})))
    return dict(sorted(chosen.items()))


def apply_gate(gate: GateConfig, variant: str, method: str | None, base: dict[str, Any],
               measured: dict[str, Any]) -> dict[str, Any]:
    """base, measured: {metric: value} of the baseline and the variant (names without the quality. prefix)."""
    recoveries: dict[str, dict[str, Any]] = {}
    for metric in sorted(set(base) | set(measured)):
        value, status = recovery(metric, base.get(metric), measured.get(metric))
        recoveries[metric] = {"base": base.get(metric), "variant": measured.get(metric),
                              "recovery": None if value is None else round(value, 6), "status": status}
    wanted = thresholds(gate, variant, method, list(recoveries))
    failures, not_gateable = [], []
    for metric, minimum in wanted.items():
        row = recoveries.get(metric, {"recovery": None, "status": "missing"})
        got, status = row["recovery"], row["status"]
        if status == "zero_over_zero":
            not_gateable.append(metric)
            failures.append({"metric": metric, "recovery": None, "minimum": minimum, "reason": "not gateable (0/0): "
                             "baseline and variant both score 0; list the gated metrics in eval.gate.metrics "
                             "without it"})
        elif status != "ok":
            reason = {"missing": "not measured", "invalid": "not a finite number",
                      "uncomputable": "recovery cannot be computed (zero or negative baseline)"}[status]
            failures.append({"metric": metric, "recovery": None, "minimum": minimum, "reason": reason})
        elif not got >= minimum:
            failures.append({"metric": metric, "recovery": got, "minimum": minimum,
                             "short_by": round(minimum - got, 6)})
    reported = sorted(m for m, r in recoveries.items() if r["status"] == "zero_over_zero" and m not in wanted)
    return {"variant": variant, "method": method, "passed": not failures, "thresholds": wanted,
            "failures": failures, "recoveries": recoveries, "not_gateable": sorted(set(not_gateable) | set(reported))}


def describe_failures(variant: str, gate: dict[str, Any]) -> list[str]:
    lines = []
    for f in gate["failures"]:
        if f["recovery"] is None:
            lines.append(f"{variant}: gate metric {f['metric']}: {f['reason']} (gate {f['minimum']})")
        else:
            lines.append(f"{variant}: {f['metric']} recovery {f['recovery']:.4f} is below the gate {f['minimum']} "
                         f"by {f['short_by']:.4f}")
    return lines
