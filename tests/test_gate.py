"""The quality gate fails closed, reads the shipped policy, and runs as its own model-free stage."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from quantbuild._gate import apply_gate, describe_failures, gate_variant, recovery, thresholds
from quantbuild.config import GateConfig, load_params

from .conftest import REPO_ROOT

SHIPPED = load_params(REPO_ROOT / "params.yaml").eval.gate
DOMAINS = ("lee-news", "wikipedia", "pydoc-topics")


def _ppl(base: float, factor: float) -> tuple[dict, dict]:
    b = {f"ppl.{d}.token_perplexity": base for d in DOMAINS}
    return b, {k: v * factor for k, v in b.items()}


def test_recovery_is_direction_aware_and_names_what_it_cannot_compute():
    assert recovery("heldout_perplexity.word_perplexity", 20.0, 25.0) == (pytest.approx(0.8), "ok")
    assert recovery("ppl.x.token_perplexity", 10.0, 12.5) == (pytest.approx(0.8), "ok")
    assert recovery("gsm8k_local.exact_match", 0.5, 0.4) == (pytest.approx(0.8), "ok")
    assert recovery("gsm8k_local.exact_match", 0.0, 0.0) == (None, "zero_over_zero")
    assert recovery("gsm8k_local.exact_match", 0.0, 0.3) == (None, "uncomputable")
    assert recovery("x.bits_per_byte", 1.0, None) == (None, "missing")
    assert recovery("x.bits_per_byte", float("nan"), 1.0) == (None, "invalid")
    assert recovery("x.bits_per_byte", 1.0, float("inf")) == (None, "invalid")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None, -1.0, 0.0])
def test_a_bad_value_of_a_gated_metric_fails_and_is_named(bad):
    base, variant = _ppl(10.0, 1.0)
    variant["ppl.wikipedia.token_perplexity"] = bad
    gate = apply_gate(SHIPPED, "v", "gptq", base, variant)
    assert gate["passed"] is False
    (failure,) = gate["failures"]
    assert failure["metric"] == "ppl.wikipedia.token_perplexity" and failure["recovery"] is None
    assert "ppl.wikipedia.token_perplexity" in describe_failures("v", gate)[0]


def test_a_policy_metric_nobody_measured_fails_closed():
    gate = apply_gate(GateConfig(metrics={"heldout_perplexity.bits_per_byte": 0.9}), "v", None,
                      {"top1_agreement": 1.0}, {"top1_agreement": 1.0})
    assert not gate["passed"] and gate["failures"][0]["reason"] == "not measured"
    # a glob that matches nothing fails the same way instead of silently gating nothing
    gate = apply_gate(GateConfig(metrics={"ppl.*.token_perplexity": 0.9}), "v", None, {}, {})
    assert not gate["passed"] and gate["failures"][0]["metric"] == "ppl.*.token_perplexity"


def test_zero_over_zero_is_not_gateable_until_the_policy_excludes_it():
    base = {"gsm8k_local.exact_match": 0.0, "heldout_perplexity.bits_per_byte": 1.0}
    variant = {"gsm8k_local.exact_match": 0.0, "heldout_perplexity.bits_per_byte": 1.01}
    everything = apply_gate(GateConfig(min_recovery=0.9), "v", None, base, variant)
    assert not everything["passed"] and "not gateable" in everything["failures"][0]["reason"]
    listed = apply_gate(GateConfig(metrics={"heldout_perplexity.bits_per_byte": 0.9}), "v", None, base, variant)
    assert listed["passed"] and listed["not_gateable"] == ["gsm8k_local.exact_match"]


def test_shipped_policy_is_the_written_one():
    """The thresholds are the policy written down before measuring (README "The quality gate")."""
    assert SHIPPED.policy and "+8 %" in SHIPPED.policy and "+1.5 %" in SHIPPED.policy and "+1 %" in SHIPPED.policy
    assert SHIPPED.metrics == {"ppl.*.token_perplexity": 0.9259}
    assert SHIPPED.methods == {"int8": {"ppl.*.token_perplexity": 0.9852}, "fp8": {"ppl.*.token_perplexity": 0.9901}}
    assert math.isclose(1 / 1.08, 0.9259, abs_tol=1e-4) and math.isclose(1 / 1.01, 0.9901, abs_tol=1e-4)


@pytest.mark.parametrize("method,factor,passes", [("gptq", 1.079, True), ("gptq", 1.081, False),
                                                  ("auto", 1.05, True), ("int8", 1.014, True),
                                                  ("int8", 1.016, False), ("fp8", 1.0099, True),
                                                  ("fp8", 1.0102, False)])
def test_shipped_policy_by_method(method, factor, passes):
    base, variant = _ppl(30.0, factor)
    gate = apply_gate(SHIPPED, "v", method, base, variant)
    assert gate["passed"] is passes, gate["failures"]
    assert set(gate["thresholds"]) == {f"ppl.{d}.token_perplexity" for d in DOMAINS}


def test_one_domain_out_of_three_fails_the_variant():
    base, variant = _ppl(30.0, 1.02)
    variant["ppl.pydoc-topics.token_perplexity"] = 30.0 * 1.09
    gate = apply_gate(SHIPPED, "v", "gptq", base, variant)
    assert [f["metric"] for f in gate["failures"]] == ["ppl.pydoc-topics.token_perplexity"]


def test_thresholds_most_specific_last():
    gate = GateConfig(metrics={"a.*": 0.9}, methods={"fp8": {"a.x": 0.99}}, variants={"v": {"a.x": 0.5}})
    assert thresholds(gate, "v", "fp8", ["a.x", "a.y"]) == {"a.x": 0.5, "a.y": 0.9}
    assert thresholds(gate, "w", "fp8", ["a.x", "a.y"]) == {"a.x": 0.99, "a.y": 0.9}


def test_unlike_measurements_cannot_pass():
    base, variant = _ppl(10.0, 1.0)
    base_m = {"eval.engine": "vllm", "eval.dtype": "bfloat16", **{f"quality.{k}": v for k, v in base.items()}}
    var_m = {"eval.engine": "vllm", "eval.dtype": "float32", "closeness.top1_agreement": 1.0,
             **{f"quality.{k}": v for k, v in variant.items()}}
    gate = gate_variant(SHIPPED, "v", "gptq", base_m, var_m)
    assert not gate["passed"] and "dtypes differ" in gate["failures"][-1]["reason"]


def test_a_fallback_variant_is_compared_with_its_own_baseline():
    base, variant = _ppl(10.0, 1.05)
    base_m = {"eval.engine": "vllm", "eval.dtype": "float32", **{f"quality.{k}": 99.0 for k in base}}
    var_m = {"eval.engine": "hf", "eval.dtype": "float32", "eval.fallback": "no kernel",
             "closeness.top1_agreement": 0.9, **{f"quality.{k}": v for k, v in variant.items()},
             **{f"baseline.quality.{k}": v for k, v in base.items()}}
    gate = gate_variant(SHIPPED, "v", "gptq", base_m, var_m)
    assert gate["passed"] and gate["provenance"]["fallback"] == "no kernel"
    assert gate["recoveries"]["ppl.lee-news.token_perplexity"]["base"] == 10.0


def test_gate_stage_reruns_alone_when_a_threshold_changes(tmp_path):
    """dvc.yaml: the gate stage loads no model and owns eval.gate; evaluate does not depend on it."""
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert "eval.gate" in dvc["gate"]["do"]["params"]
    for stage in ("evaluate", "evaluate_base"):
        body = dvc[stage].get("do", dvc[stage])
        assert not [p for p in body["params"] if str(p).startswith("eval.gate")], stage
    card = dvc["card"]["do"]
    assert "eval.gate" not in card["params"] and "build/gate/${key}/gate.json" in card["deps"]


def test_gate_stage_writes_its_records(tmp_path):
    from quantbuild._gate import run_gate

    params = load_params(REPO_ROOT / "params.yaml")
    name = next(n for n, v in params.variants.items() if v.method == "fp8")
    base, variant = _ppl(10.0, 1.02)
    (tmp_path / "eval" / "base").mkdir(parents=True)
    (tmp_path / "eval" / name).mkdir(parents=True)
    (tmp_path / "eval/base/metrics.json").write_text(json.dumps(
        {"eval.engine": "vllm", "eval.dtype": "float32", **{f"quality.{k}": v for k, v in base.items()}}))
    (tmp_path / f"eval/{name}/metrics.json").write_text(json.dumps(
        {"eval.engine": "vllm", "eval.dtype": "float32", "closeness.top1_agreement": 0.95,
         **{f"quality.{k}": v for k, v in variant.items()}}))
    (tmp_path / "quantize.json").write_text(json.dumps({"bits_per_weight": 8.03, "size_bytes": 1}))
    record = run_gate(params, name, tmp_path / "eval", tmp_path / "gate", tmp_path / "quantize.json")
    assert record["passed"] is False and record["bits_per_weight"] == 8.03  # +2 % misses FP8's +1 %
    metrics = json.loads((tmp_path / "gate/metrics.json").read_text())
    assert metrics["gate.passed"] is False and metrics["gate.failures"] == 3


def test_paired_change_interval_from_the_windows_spread():
    """Hand-computed: windows of 100 tokens whose mean log-likelihood moves by 0.01, 0.03, 0.02, 0.00 nats:
    change e^0.015 - 1; interval e^(0.015 +- t(3) * sd / 2) - 1 with sd = 0.012910, t(3) = 3.182."""
    from quantbuild.evaluate._perplexity import WindowMismatch, paired_change

    base = {"window_nll": [300.0, 310.0, 290.0, 305.0], "window_tokens": [100] * 4}
    variant = {"window_nll": [301.0, 313.0, 292.0, 305.0], "window_tokens": [100] * 4}
    got = paired_change(base, variant)
    half = 3.182 * math.sqrt(((0.01 - 0.015) ** 2 + 0.015 ** 2 + 0.005 ** 2 + 0.015 ** 2) / 3) / 2
    assert got.pct == pytest.approx(100 * math.expm1(0.015), abs=1e-4)
    assert got.ci95_low_pct == pytest.approx(100 * math.expm1(0.015 - half), abs=1e-4)
    assert got.ci95_high_pct == pytest.approx(100 * math.expm1(0.015 + half), abs=1e-4)
    # the same change on every window: no spread, the interval closes on it
    same = paired_change(base, {"window_nll": [b + 1.0 for b in base["window_nll"]], "window_tokens": [100] * 4})
    assert same.ci95_low_pct == same.pct == same.ci95_high_pct
    assert paired_change({"window_nll": [1.0], "window_tokens": [10]},
                         {"window_nll": [2.0], "window_tokens": [10]}).interval is None
    with pytest.raises(WindowMismatch, match="4 windows of 400 tokens against 4 of 396"):
        paired_change(base, {"window_nll": [1.0] * 4, "window_tokens": [99] * 4})


def test_evaluate_records_changes_in_the_shared_layout_and_refuses_other_windows():
    """The evaluate stage writes each change where change_of (the gate's and the card's reader) finds it; a
    non-finite change is recorded as null, which the gate does not count as a measured pass; a baseline scored
    on other windows is a one-line ConfigError naming the fix."""
    from quantbuild._change import change_of
    from quantbuild.errors import ConfigError
    from quantbuild.evaluate._run import _changes

    base = {"news": {"window_nll": [300.0, 310.0], "window_tokens": [100, 100]}}
    variant = {"news": {"window_nll": [303.0, 312.0], "window_tokens": [100, 100]}}
    metrics = _changes("v", base, variant)
    got = change_of(metrics, "ppl.news.token_perplexity")
    assert got.pct == pytest.approx(100 * math.expm1(0.025), abs=1e-4) and got.interval[0] < got.pct < got.interval[1]
    json.dumps(metrics, allow_nan=False)
    broken = _changes("v", base, {"news": {"window_nll": [float("inf"), 312.0], "window_tokens": [100, 100]}})
    assert broken["change.ppl.news.token_perplexity_pct"] is None and change_of(broken, "ppl.news.token_perplexity") is None
    json.dumps(broken, allow_nan=False)
    with pytest.raises(ConfigError) as err:
        _changes("v", base, {"news": {"window_nll": [1.0], "window_tokens": [100]}})
    assert len(str(err.value).splitlines()) == 1 and "dvc repro evaluate_base" in str(err.value)


@pytest.mark.parametrize("change,low,high,passed,settled", [
    (0.5, 0.2, 0.8, True, True),     # the whole interval under +1 %: a settled pass
    (0.5, -0.3, 1.4, True, False),   # a pass whose interval reaches past the limit
    (2.0, 1.2, 2.8, False, True),    # a settled failure
    (1.5, 0.4, 2.6, False, False),   # a failure the windows cannot tell from a pass
])
def test_gate_says_which_verdicts_the_windows_settle(change, low, high, passed, settled):
    """The verdict is the policy's (the measured change); the record adds whether the evaluate stage's 95 %
    interval lies wholly on the verdict's side of the limit (FP8: +1 %)."""
    from quantbuild._gate import gate_metrics

    base, variant = _ppl(10.0, 1 + change / 100)
    base_m = {"eval.engine": "vllm", "eval.dtype": "float32", **{f"quality.{k}": v for k, v in base.items()}}
    var_m = {"eval.engine": "vllm", "eval.dtype": "float32", "closeness.top1_agreement": 0.95,
             **{f"quality.{k}": v for k, v in variant.items()}}
    for d in DOMAINS:
        key = f"change.ppl.{d}.token_perplexity_pct"
        var_m.update({key: change, key + "_ci95_low": low, key + "_ci95_high": high})
    gate = gate_variant(SHIPPED, "v", "fp8", base_m, var_m)
    assert gate["passed"] is passed
    rows = gate["resolution"]
    assert [r["metric"] for r in rows] == sorted(f"ppl.{d}.token_perplexity" for d in DOMAINS)
    assert all(r["settled"] is settled and r["limit_pct"] == pytest.approx(1.0, abs=0.01) for r in rows)
    assert gate_metrics(gate)["gate.unsettled"] == (0 if settled else len(DOMAINS))
