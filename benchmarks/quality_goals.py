"""The quality engine's goals, from the pipeline's own records after `make demo` (or `dvc pull`):
token perplexity increase per held-out domain (news, Wikipedia, and pydoc, which calibration never sees),
word perplexity and bits per byte beside it, bits per weight, the stage times and the hardware they ran on.

    python benchmarks/quality_goals.py [--root .]

Goals (the quality issue): the best variant at <= 4.5 bits per weight within +8 % token perplexity on all
three texts; INT8 within +1.5 %; FP8 within +1 % at <= 8.5 bits per weight; the sensitivity pass plus the
auto variant's quantization in 10 minutes or less on 2 cores. Every figure printed here is read from a
committed or cached record (build/...), none is computed anew.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quantbuild._change import change_of

GOALS = {"4bit": 0.08, "int8": 0.015, "fp8": 0.01}


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=".")
    root = Path(parser.parse_args().root)
    base = _load(root / "build/eval/base/metrics.json")
    if base is None:
        raise SystemExit("error: build/eval/base/metrics.json is missing: run `make demo` (or dvc pull) first")
    domains = sorted({k.split(".")[2] for k in base if k.startswith("quality.ppl.") and k.endswith("token_perplexity")})
    print(f"base token perplexity: " + ", ".join(f"{d} {base[f'quality.ppl.{d}.token_perplexity']:.3f}" for d in domains)
          + f"  (engine {base.get('eval.engine')}, {base.get('eval.dtype')})")
    header = f"{'variant':<14} {'method':<6} {'bits/w':>7} " + " ".join(f"{d[:12]:>13}" for d in domains)
    header += f" {'worst':>7} {'goal':>6} {'met':>4} {'engine':>6} {'quantize':>9}"
    print(header)
    results = {}
    for q in sorted((root / "build/variants").glob("*/quantize.json")):
        name = q.parent.name
        record = _load(q)
        m = _load(root / f"build/eval/{name}/metrics.json")
        if m is None:
            continue
        ref = {k[len("baseline."):]: v for k, v in m.items() if k.startswith("baseline.")} if m.get("eval.fallback") else base
        rises = {d: m[f"quality.ppl.{d}.token_perplexity"] / ref[f"quality.ppl.{d}.token_perplexity"] - 1 for d in domains}
        method = record["method"]
        kind = "fp8" if method == "fp8" else "int8" if method == "int8" else "4bit"
        goal = GOALS[kind]
        bits = record.get("bits_per_weight")
        met = max(rises.values()) <= goal and (kind != "4bit" or (bits or 99) <= 4.5) and (kind != "fp8" or (bits or 99) <= 8.5)
        results[name] = met
        print(f"{name:<14} {method:<6} {bits:>7} " + " ".join(f"{100 * rises[d]:>+12.2f}%" for d in domains)
              + f" {100 * max(rises.values()):>+6.2f}% {100 * goal:>5.1f}% {'yes' if met else 'NO':>4} "
              f"{m.get('eval.engine'):>6} {record.get('seconds', 0):>8.0f}s")
    sens = _load(root / "build/sensitivity/sensitivity.json")
    if sens:
        autos = [q.parent.name for q in (root / "build/variants").glob("*/quantize.json") if _load(q)["method"] == "auto"]
        auto_s = sum(_load(root / f"build/variants/{a}/quantize.json")["seconds"] for a in autos)
        total = sens["seconds"]["total"] + auto_s
        hw = sens.get("hardware", {})
        print(f"sensitivity {sens['seconds']['total']:.0f}s (scores {sens['seconds']['scores']:.0f}s) + auto quantize "
              f"{auto_s:.0f}s = {total / 60:.1f} min (goal 10 min) on {hw.get('cpus')} cores of {hw.get('cpu')} "
              f"[{', '.join(f for f in hw.get('cpu_isa', []) if f.startswith(('avx512', 'amx', 'avx2')))}]; "
              f"proxy vs layer KL Spearman {sens.get('proxy_vs_layer_kl_spearman')}")
    # The evaluate stage's 95 % intervals over the held-out windows: a goal met or missed by less than the
    # interval's half-width is not known to be met or missed on other text of the domain.
    print("95 % intervals of the change over the held-out windows (evaluate stage, paired t):")
    for q in sorted((root / "build/variants").glob("*/quantize.json")):
        m = _load(root / f"build/eval/{q.parent.name}/metrics.json") or {}
        changes = {d: change_of(m, f"ppl.{d}.token_perplexity") for d in domains}
        if not any(c and c.interval for c in changes.values()):
            print(f"  {q.parent.name:<14} not recorded (evaluated before intervals were)")
            continue
        print(f"  {q.parent.name:<14} " + "  ".join(
            f"{d[:12]} {c.pct:+.2f} ({c.interval[0]:+.2f} to {c.interval[1]:+.2f})"
            for d, c in changes.items() if c and c.interval))
    print("goals met: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in results.items()))


if __name__ == "__main__":
    main()
