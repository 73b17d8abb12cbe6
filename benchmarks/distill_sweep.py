"""Distillation sweep: the quantize stage's distillation (quantize/_distill.py) run on a copy of an undistilled
checkpoint for each setting given, each scored on the evaluate stage's held-out windows in transformers.

    .venvs/build/bin/python benchmarks/distill_sweep.py MODEL_DIR --runs 8,32,64 [--lr 0.001] [--compute bfloat16]
        [--generated 32] [--out DIR]

MODEL_DIR: a gptq or auto checkpoint made without distill_steps (e.g. by benchmarks/quality_trials.py with a
trial that leaves it out). --runs: step counts, one run each (each from the same undistilled copy).
--generated N: also N samples the base model writes itself (LLM-QAT's data-free distillation), interleaved
with the calibration samples. Needs `dvc repro calibrate` (calibration and held-out sets). Prints one row per
run and writes DIR/distill_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def generated_samples(base_dir: Path, n: int, length: int, seed: int = 0) -> list[list[int]]:
    """n sequences the base writes from a random first token (top-p 0.95), 16 at a time."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    out: list[list[int]] = []
    while len(out) < n:
        first = torch.randint(0, model.config.vocab_size, (16, 1))
        with torch.no_grad():
            made = model.generate(first, attention_mask=torch.ones_like(first), do_sample=True, top_p=0.95,
                                  max_new_tokens=length - 1, min_new_tokens=length - 1, pad_token_id=0)
        out += made.tolist()
    return out[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--runs", default="8,32,64")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--compute", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--samples", type=int, default=64, help="calibration samples cycled through")
    parser.add_argument("--generated", type=int, default=0)
    parser.add_argument("--out", default="/tmp/quantbuild-distill-sweep")
    args = parser.parse_args()

    from quality_trials import score
    from quantbuild import _hardware
    from quantbuild.config import load_params
    from quantbuild.quantize._common import load_samples
    from quantbuild.quantize._distill import DEFAULT_LR, distill

    params = load_params(ROOT / "params.yaml")
    window, windows = params.eval.perplexity_window, params.eval.perplexity_windows
    heldout, base_dir = ROOT / "build/calibration/heldout.jsonl", ROOT / "build/base/model"
    samples = load_samples(ROOT / "build/calibration/calibration.jsonl", args.samples)
    if args.generated:
        made = generated_samples(base_dir, args.generated, max(map(len, samples)))
        mixed: list[list[int]] = []
        for pair in zip(samples, made):
            mixed += pair
        samples = mixed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"cpu: {_hardware.cpu_info()}", flush=True)
    base = score(base_dir, heldout, window, windows)
    results = {"model": str(args.model), "compute": args.compute, "generated": args.generated,
               "samples": len(samples), "base": base, "runs": {}}
    before = score(Path(args.model), heldout, window, windows)
    rows = {0: {"ppl": before}}
    for steps in [int(s) for s in args.runs.split(",") if s]:
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            copy = Path(tmp) / "model"
            shutil.copytree(args.model, copy)
            start = time.monotonic()
            record = distill(copy, base_dir, samples, steps, args.lr or DEFAULT_LR, False, f"sweep {steps}",
                             args.compute)
            rows[steps] = {"ppl": score(copy, heldout, window, windows), "distill": record,
                           "seconds": round(time.monotonic() - start, 1)}
    for steps, row in rows.items():
        row["delta_pct"] = {d: round(100 * (row["ppl"][d] / base[d] - 1), 2) for d in base}
        results["runs"][str(steps)] = row
        print(f"steps {steps:4d}  " + "  ".join(f"{d} {v:+.2f}%" for d, v in row["delta_pct"].items())
              + (f"  {row['seconds']:.0f}s" if "seconds" in row else "  (undistilled)"), flush=True)
    (out / "distill_sweep.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
