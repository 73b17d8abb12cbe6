"""Where FP8 W8A8's perplexity loss comes from on the demo model, and levers beyond `keep`: each recipe is
applied by llm-compressor to the demo's base (layers 0 and 29 MLPs kept in bf16, as the shipped fp8-dynamic
variant) and the model is scored in memory, in transformers, on the evaluate stage's held-out windows (token
perplexity per domain, % above the base).

    .venvs/build/bin/python benchmarks/fp8_error_sources.py [--only ref,wonly,...]

Recipes: ref (FP8 dynamic: weights per channel, activations per token, the shipped variant); wonly (FP8 weights
only: vLLM's CPU build cannot load it, listed to attribute the loss); act_g64 (activations per group of 64
instead of per token); w_g64 (weights per group of 64); mse (the MSE weight observer); gptq (GPTQ-rounded FP8
weights, 64 calibration samples, dampening 0.1); sq08, sq05 (SmoothQuant at strength 0.8 / 0.5 before FP8
dynamic: activation outliers moved into the weights, 64 calibration samples); sq08_down (also up_proj ->
down_proj, the INT8 variant's extra mapping). Needs `dvc repro calibrate` (the base model and held-out set).
Prints one row per recipe and appends the run to benchmarks/results/fp8_error_sources.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality_trials import window_perplexity  # noqa: E402  the same scoring as the quality trials
BASE, HELDOUT, CALIB = ROOT / "build/base/model", ROOT / "build/calibration/heldout.jsonl", ROOT / "build/calibration/calibration.jsonl"
KEEP = ["lm_head", "re:.*layers\\.(29|0)\\.mlp\\..*"]
RECIPES = ("ref", "wonly", "act_g64", "w_g64", "mse", "gptq", "sq08", "sq05", "sq08_down")
CALIBRATED = ("gptq", "sq08", "sq05", "sq08_down")


def scheme(weights_only=False, act_group=None, weight_group=None, observer=None) -> dict:
    weights = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False,
               "strategy": "group" if weight_group else "channel"}
    if weight_group:
        weights["group_size"] = weight_group
    if observer:
        weights["observer"] = observer
    group = {"targets": ["Linear"], "weights": weights}
    if not weights_only:
        acts = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": True,
                "strategy": "group" if act_group else "token"}
        if act_group:
            acts["group_size"] = act_group
        group["input_activations"] = acts
    return {"group_0": group}


def recipe(name: str) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if name == "ref":
        return [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=KEEP)]
    if name == "gptq":
        return [GPTQModifier(config_groups=scheme(), ignore=KEEP, dampening_frac=0.1)]
    if name.startswith("sq"):
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        from quantbuild.quantize._llmcompressor import _smoothquant_mappings

        kwargs = {"smoothing_strength": 0.5 if name == "sq05" else 0.8}
        if name.endswith("_down"):
            kwargs["mappings"] = _smoothquant_mappings(True)
        return [SmoothQuantModifier(**kwargs), QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=KEEP)]
    groups = {"wonly": scheme(weights_only=True), "act_g64": scheme(act_group=64), "w_g64": scheme(weight_group=64),
              "mse": scheme(observer="mse")}[name]
    return [QuantizationModifier(config_groups=groups, ignore=KEEP)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(RECIPES))
    args = parser.parse_args()
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbuild._hardware import cpu_info
    from quantbuild.evaluate._perplexity import domain_windows

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    windows = domain_windows(HELDOUT, tokenizer, 512, 8)

    def perplexity(model) -> dict[str, float]:
        return window_perplexity(model, windows)

    base = perplexity(AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.bfloat16).eval())
    texts = [json.loads(line)["text"] for line in CALIB.open()][:64]
    rows = {}
    for name in args.only.split(","):
        model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.bfloat16)
        data = ({"dataset": Dataset.from_dict({"text": texts}), "num_calibration_samples": 64, "max_seq_length": 512}
                if name in CALIBRATED else {})
        start = time.monotonic()
        oneshot(model=model, recipe=recipe(name), **data)
        seconds = time.monotonic() - start
        delta = {d: round(100 * (p / base[d] - 1), 2) for d, p in perplexity(model.eval()).items()}
        rows[name] = {"delta_pct": delta, "worst_pct": max(delta.values()), "seconds": round(seconds, 1)}
        print(f"{name:8s} " + "  ".join(f"{d} {v:+.2f} %" for d, v in delta.items()) + f"  ({seconds:.0f} s)", flush=True)
    # Each run is appended with its own base and ref scores: CPUs differ in bf16 kernels (the base moves in the
    # 3rd-4th digit, the deltas by tenths of a point), so recipes compare within one run.
    record = ROOT / "benchmarks/results/fp8_error_sources.json"
    out = json.loads(record.read_text()) if record.is_file() else {"benchmark": "fp8_error_sources", "runs": []}
    out["runs"].append({"date": time.strftime("%Y-%m-%d"), "cpu": cpu_info().get("model"),
                        "python": platform.python_version(), "base_token_perplexity": base, "recipes": rows})
    record.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
