"""Quality trials: quantize the demo's base with a list of recipes through the product's own quantize stage
(llm-compressor) and score each on the pipeline's held-out windows, so levers can be compared in one run.

Each trial is a params.yaml variant (plus, optionally, other calibration sources or sensitivity formats);
the quantize stage's own code runs it (`quantize_variant`), and token perplexity per held-out domain is
measured in transformers on exactly the windows the evaluate stage uses (eval.perplexity_window /
perplexity_windows over build/calibration/heldout.jsonl). The release figures come from vLLM in the
evaluate stage; these rank recipes (transformers and vLLM agreed within ~0.5 point on this model).

    .venvs/build/bin/python benchmarks/quality_trials.py TRIALS.yaml [--out DIR] [--only NAME,...]

TRIALS.yaml: {name: {variant: {...params.yaml variant...}, calibration_sources: [uri, ...],
sensitivity_formats: [...]}}. Needs `dvc repro calibrate sensitivity` (the base model and held-out set).
Prints one row per trial and writes DIR/trials.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def score(model_dir: Path, heldout: Path, window: int, windows: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbuild.evaluate._perplexity import domain_windows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    return window_perplexity(model, domain_windows(heldout, tokenizer, window, windows))


def window_perplexity(model, windows_by_domain: dict[str, list[list[int]]]) -> dict[str, float]:
    """Token perplexity per domain of an already loaded model over fixed windows (every token after a
    window's first scored), as the evaluate stage measures it."""
    import torch

    out = {}
    for domain, seqs in sorted(windows_by_domain.items()):
        total, count = 0.0, 0
        with torch.no_grad():
            for seq in seqs:
                logits = model(torch.tensor([seq])).logits[0, :-1].float()
                logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(seq[1:])[:, None])
                total -= float(logp.sum())
                count += len(seq) - 1
        out[domain] = math.exp(total / count)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trials")
    parser.add_argument("--out", default="/tmp/quantbuild-trials")
    parser.add_argument("--only", default="")
    args = parser.parse_args()

    from quantbuild import _hardware
    from quantbuild._calibrate import calibrate
    from quantbuild._sensitivity import run_sensitivity
    from quantbuild.config import load_params, parse_params
    from quantbuild.quantize._run import quantize_variant

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    trials = yaml.safe_load(Path(args.trials).read_text())
    only = {n for n in args.only.split(",") if n}
    base_dir = ROOT / "build/base/model"
    heldout = ROOT / "build/calibration/heldout.jsonl"
    params0 = load_params(ROOT / "params.yaml")
    window, windows = params0.eval.perplexity_window, params0.eval.perplexity_windows
    results_path = out / "trials.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if "base" not in results:
        results["base"] = {"ppl": score(base_dir, heldout, window, windows)}
        results_path.write_text(json.dumps(results, indent=1))
    base = results["base"]["ppl"]
    print(f"cpu: {_hardware.cpu_info()}")
    print("base " + "  ".join(f"{d} {v:.3f}" for d, v in base.items()), flush=True)
    for name, trial in trials.items():
        if only and name not in only:
            continue
        data = copy.deepcopy(raw)
        data["variants"] = {name: trial["variant"]}
        calib = ROOT / "build/calibration/calibration.jsonl"
        if trial.get("calibration_sources"):
            data["calibration"]["sources"] = [{"uri": u} for u in trial["calibration_sources"]]
            data["calibration"]["heldout_sources"] = [s for s in data["calibration"].get("heldout_sources") or []
                                                      if s["uri"] not in trial["calibration_sources"]]
            key = "-".join(u.split("//")[-1] for u in trial["calibration_sources"])
            cdir = out / f"calib-{key}"
            if not (cdir / "calibration.jsonl").is_file():
                calibrate(parse_params(data).calibration, base_dir, cdir / "calibration.jsonl",
                          cdir / "heldout.jsonl", cdir / "stats.json")
            calib = cdir / "calibration.jsonl"
        sens = ROOT / "build/sensitivity/sensitivity.json"
        if trial.get("sensitivity_formats") or trial.get("calibration_sources"):
            data["sensitivity"]["formats"] = trial.get("sensitivity_formats") or data["sensitivity"]["formats"]
            key = "-".join(data["sensitivity"]["formats"]) + "-" + calib.parent.name
            sdir = out / f"sens-{key}"
            if not (sdir / "sensitivity.json").is_file():
                run_sensitivity(parse_params(data).sensitivity, base_dir, calib, sdir / "sensitivity.json",
                                sdir / "plots")
            sens = sdir / "sensitivity.json"
        params = parse_params(data)
        vdir = out / name
        start = time.monotonic()
        record = quantize_variant(params, name, base_dir, calib, vdir / "model", vdir / "quantize.json",
                                  sensitivity_path=sens)
        seconds = time.monotonic() - start
        ppl = score(vdir / "model", heldout, window, windows)
        delta = {d: round(100 * (ppl[d] / base[d] - 1), 2) for d in ppl}
        results[name] = {"trial": trial, "bits_per_weight": record["bits_per_weight"], "seconds": round(seconds, 1),
                         "ppl": ppl, "delta_pct": delta, "worst_pct": max(delta.values()),
                         "library": record["versions"]}
        results_path.write_text(json.dumps(results, indent=1))
        print(f"{name:28s} {record['bits_per_weight']:.4f} bpw  " + "  ".join(f"{d} {v:+.2f}%" for d, v in delta.items())
              + f"  worst {max(delta.values()):+.2f}%  {seconds:.0f}s", flush=True)


if __name__ == "__main__":
    main()
