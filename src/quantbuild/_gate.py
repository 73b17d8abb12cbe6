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
import json
from pathlib import Path
from typing import Any

from ._change import change_of, finite
from ._io import atomic_outputs, write_json
from ._progress import log

from .config import GateConfig, Params
from .errors import EnvironmentSetupError

# Metric name -> lower is better (recovery is then baseline / variant).
LOWER_IS_BETTER = {"word_perplexity", "byte_perplexity", "bits_per_byte", "kl_mean", "token_perplexity"}


def recovery(metric: str, base: Any, variant: Any) -> tuple[float | None, str]:
    """(variant / baseline, inverted where lower is better; status). 1.0 means nothing lost.

    status: "ok", "missing" (either side absent), "invalid" (NaN or infinite), "zero_over_zero" (both 0),
    "uncomputable" (a zero denominator with a non-zero numerator, or a non-positive perplexity)."""
    if base is None or variant is None:
        return None, "missing"
    if not (finite(base) and finite(variant)):
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


def _gateable_values(metrics: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def gate_variant(gate: GateConfig, name: str, method: str | None, base_metrics: dict[str, Any],
                 variant_metrics: dict[str, Any]) -> dict[str, Any]:
    """The gate record of one variant from the two metrics files (no model is loaded)."""
    fallback = variant_metrics.get("eval.fallback")
    # Like with like: a variant measured with the transformers fallback is compared with the baseline
    # measured the same way in the same stage; otherwise with evaluate_base's figures.
    base = (_gateable_values(variant_metrics, "baseline.quality.") if fallback
            else _gateable_values(base_metrics, "quality."))
    measured = _gateable_values(variant_metrics, "quality.")
    base["top1_agreement"] = 1.0
    measured["top1_agreement"] = variant_metrics.get("closeness.top1_agreement")
    record = apply_gate(gate, name, method, base, measured)
    mismatch = []
    if not fallback and base_metrics.get("eval.engine") != variant_metrics.get("eval.engine"):
        mismatch.append(f"engines differ (base {base_metrics.get('eval.engine')}, variant "
                        f"{variant_metrics.get('eval.engine')})")
    if base_metrics.get("eval.dtype") != variant_metrics.get("eval.dtype"):
        mismatch.append(f"dtypes differ (base {base_metrics.get('eval.dtype')}, variant {variant_metrics.get('eval.dtype')})")
    for why in mismatch:  # unlike measurements cannot pass a gate
        record["failures"].append({"metric": "provenance", "recovery": None, "minimum": None,
                                   "reason": f"not comparable with the baseline: {why}; re-run both"})
        record["passed"] = False
    record["provenance"] = {"engine": variant_metrics.get("eval.engine"), "dtype": variant_metrics.get("eval.dtype"),
                            "fallback": fallback,
                            "baseline": "measured with the variant (transformers fallback)" if fallback
                            else "evaluate_base"}
    record["policy"] = gate.policy
    record["resolution"] = resolution(record, variant_metrics)
    return record


def resolution(record: dict[str, Any], variant_metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per gated perplexity: the change in %, its 95 % interval over the held-out windows (the evaluate stage's
    change.* figures) and whether the whole interval lies on the verdict's side of the limit. The verdict stays
    the policy's (the measured change); `settled: false` says that text like the held-out windows could put
    the change on the other side of the limit, so more held-out windows are needed to tell."""
    rows = []
    for metric, minimum in record["thresholds"].items():
        change = change_of(variant_metrics, metric)
        if not metric.endswith(".token_perplexity") or change is None:
            continue
        limit = round(100 * (1 / minimum - 1), 4)  # lower is better: recovery >= minimum <=> change <= limit
        passed = not any(f["metric"] == metric for f in record["failures"])
        interval = change.interval
        settled = None if interval is None else (interval[1] <= limit if passed else interval[0] > limit)
        rows.append({"metric": metric, "change_pct": change.pct, "ci95_pct": list(interval or (None, None)),
                     "limit_pct": limit, "passed": passed, "settled": settled})
    return rows


def unsettled(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A gate record's resolution rows whose 95 % interval spans the limit (the verdicts more held-out text
    could turn); what the stage log, the metrics, the card and the selection report."""
    return [row for row in (record or {}).get("resolution", []) if row["settled"] is False]


def gate_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The flat figures `dvc metrics` shows for a gate."""
    out: dict[str, Any] = {"gate.passed": record["passed"], "gate.failures": len(record["failures"]),
                           "gate.unsettled": len(unsettled(record))}
    for metric, row in record["recoveries"].items():
        out[f"recovery.{metric}"] = row["recovery"]
    return out


STAGE = "gate"


def run_gate(params: Params, name: str, eval_root: Path, out_dir: Path, quantize_record: Path) -> dict[str, Any]:
    paths = {"base": eval_root / "base" / "metrics.json", name: eval_root / name / "metrics.json"}
    if not quantize_record.is_file():
        raise EnvironmentSetupError(f"gate@{name}: {quantize_record} is missing (run dvc repro quantize@{name} first)")
    for who, path in paths.items():
        if not path.is_file():
            stage = "evaluate_base" if who == "base" else f"evaluate@{name}"
            raise EnvironmentSetupError(f"gate@{name}: {path} is missing (run dvc repro {stage} first)")
    base, variant = (json.loads(paths[k].read_text()) for k in ("base", name))
    record = gate_variant(params.eval.gate, name, params.variants[name].method, base, variant)
    quantized = json.loads(quantize_record.read_text())
    # What the selection stage ranks variants by (size), carried here so it reads gate records only.
    record["bits_per_weight"] = quantized.get("bits_per_weight")
    record["size_bytes"] = quantized.get("size_bytes")
    with atomic_outputs(out_dir / "gate.json", out_dir / "metrics.json", field=f"gate@{name} output") as (g, m):
        write_json(g, record)
        write_json(m, gate_metrics(record))
    for line in describe_failures(name, record):
        log(STAGE, "GATE FAILED: " + line)
    for row in unsettled(record):
        low, high = row["ci95_pct"]
        log(STAGE, f"{name}: {row['metric']} {row['change_pct']:+.2f} % against the limit +{row['limit_pct']:.2f} %: "
                   f"its 95 % interval over the held-out windows ({low:+.2f} % to {high:+.2f} %) spans the limit, "
                   f"so this {'pass' if row['passed'] else 'failure'} is within the measurement's resolution")
    if record["passed"]:
        log(STAGE, f"{name}: passed its quality gate ({len(record['thresholds'])} gated metrics)")
    return record
