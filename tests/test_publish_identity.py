"""A release's identity leaves out what is re-measured on every run or set by policy: a re-measured
throughput or a tuned threshold never forces a new version; a change of weights or of quality does."""

from __future__ import annotations

import json

from quantbuild._card import VOLATILE_END, VOLATILE_START
from quantbuild._publish import stable_form


def card(speed: str, gate: str, quality: str) -> bytes:
    return (f"---\nlicense: mit\n---\n# x\n{VOLATILE_START}\n**Quality gate passed ({gate})**\n{VOLATILE_END}\n"
            f"| ppl | {quality} |\n{VOLATILE_START}\n| 32 | {speed} |\n{VOLATILE_END}\n"
            "| Pipeline | repo at commit `abc` <!-- quantbuild:volatile-line --> |\n").encode()


def test_card_identity_ignores_speed_thresholds_and_commit():
    a = card("183.1", "gate 0.9259", "31.8")
    assert stable_form("README.md", a) == stable_form("README.md", card("171.4", "gate 0.95", "31.8"))
    assert stable_form("README.md", a) == stable_form("README.md", a.replace(b"`abc`", b"`def`"))
    assert stable_form("README.md", a) != stable_form("README.md", card("183.1", "gate 0.9259", "32.5"))


def test_records_identity_ignores_timings_speed_and_gate_policy():
    metrics = {"quality.ppl.x.token_perplexity": 31.8, "speed.c32.output_tokens_per_s": 183.0, "size.disk_gb": 0.1}
    again = {**metrics, "speed.c32.output_tokens_per_s": 160.2}
    assert stable_form("eval/metrics.json", json.dumps(metrics).encode()) == \
        stable_form("eval/metrics.json", json.dumps(again).encode())
    worse = {**metrics, "quality.ppl.x.token_perplexity": 33.0}
    assert stable_form("eval/metrics.json", json.dumps(metrics).encode()) != \
        stable_form("eval/metrics.json", json.dumps(worse).encode())
    gate = {"passed": True, "thresholds": {"m": 0.9}, "policy": "p1", "recoveries": {"m": {"recovery": 0.95}}}
    tuned = {**gate, "thresholds": {"m": 0.92}, "policy": "p2"}
    assert stable_form("eval/gate.json", json.dumps(gate).encode()) == stable_form("eval/gate.json", json.dumps(tuned).encode())
    record = {"bits_per_weight": 4.31, "seconds": 262.1, "peak_rss_mb": 1718, "hardware": {"cpu": "a"}}
    assert stable_form("quantbuild/quantize.json", json.dumps(record).encode()) == stable_form(
        "quantbuild/quantize.json", json.dumps({**record, "seconds": 301.0, "hardware": {"cpu": "b"}}).encode())
    weights = b"\x00\x01"
    assert stable_form("model.safetensors", weights) == weights
