"""Evaluate-stage wall time for one model, split into engine start-up, the perplexity task and the
generation task, for the vLLM and hf engines side by side in one run.

    .venvs/serve/bin/python benchmarks/evaluate_breakdown.py [MODEL_DIR] [--limit 8]

Uses params.yaml's eval section (tasks forced to heldout_perplexity + gsm8k_local) and the demo's
held-out split. Run from the project root.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # vLLM spawns its engine process
    from quantbuild.config import load_params
    from quantbuild.evaluate._run import evaluate_model

    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="build/base/model")
    parser.add_argument("--limit", type=int, default=8)
    args = parser.parse_args()
    rows = {}
    work = Path(tempfile.mkdtemp(prefix="qb-bench-eval-"))
    try:
        for engine in ("vllm", "hf"):
            cfg = load_params("params.yaml").eval
            cfg.engine, cfg.tasks, cfg.limit = engine, ["heldout_perplexity", "gsm8k_local"], args.limit
            start = time.monotonic()
            evaluate_model(cfg, "base", Path(args.model), Path("build/calibration/heldout.jsonl"),
                           work / engine / "results", work / engine / "metrics.json", work / engine / "plots")
            total = time.monotonic() - start
            timings = json.loads((work / engine / "results" / "lm_eval.json").read_text())["quantbuild"]["timings"]
            rows[engine] = (timings, total)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"model {args.model}, gsm8k_local limit {args.limit}")
    print(f"{'engine':<6} {'start-up s':>10} {'perplexity s':>12} {'generation s':>12} {'other s':>8} {'total s':>8}")
    for engine, (t, total) in rows.items():
        ppl, gen = t.get("tasks.heldout_perplexity_s", 0.0), t.get("tasks.gsm8k_local_s", 0.0)
        other = total - t["engine_startup_s"] - ppl - gen
        print(f"{engine:<6} {t['engine_startup_s']:>10.1f} {ppl:>12.1f} {gen:>12.1f} {other:>8.1f} {total:>8.1f}")
    v, h = rows["vllm"][1], rows["hf"][1]
    print(f"ratio total vllm/hf: {v / h:.2f}")
