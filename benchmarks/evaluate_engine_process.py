"""The evaluate stage's wall time for one model with vLLM's CPU engine in separate processes (vLLM's default:
engine core and model worker each a process of their own, the worker bound to one core) against in the
stage's own process (quantbuild's default on a CPU), run alternately in one run, each a fresh process.
Prints start-up, token perplexity, closeness probe, throughput and total seconds per mode, the ratios, and
whether the perplexities are bit for bit the same.

    .venvs/serve/bin/python benchmarks/evaluate_engine_process.py [--models base gptq-w4g64] [--repeat 1]

Run from the project root after `dvc repro` (uses build/, params.yaml's eval section).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"processes": "1", "in_process": "0"}  # VLLM_ENABLE_V1_MULTIPROCESSING


def one(model: str, out: Path) -> None:
    from quantbuild.config import load_params
    from quantbuild.evaluate._run import evaluate_model

    cfg = load_params("params.yaml").eval
    model_dir = Path("build/base/model") if model == "base" else Path("build/variants") / model / "model"
    extra = {} if model == "base" else {"base_metrics": Path("build/eval/base/metrics.json"),
                                        "reference": Path("build/eval/base/results/reference.json"),
                                        "base_dir": Path("build/base/model")}
    evaluate_model(cfg, model, model_dir, Path("build/calibration/heldout.jsonl"), out / "results",
                   out / "metrics.json", out / "plots", **extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["base", "gptq-w4g64"])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    from quantbuild._hardware import cpu_info

    info = cpu_info()
    print(f"CPU: {info['model']}, {os.cpu_count()} cores, flags: {' '.join(sorted(info['isa']))}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="qb-bench-engine-"))
    rows = []
    try:
        for model in args.models:
            for r in range(args.repeat):
                for mode, value in MODES.items():
                    out = work / f"{model}-{mode}-{r}"
                    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": value,
                           "PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")]))}
                    start = time.monotonic()
                    subprocess.run([sys.executable, __file__, "--one", model, str(out)], env=env, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    total = time.monotonic() - start
                    record = json.loads((out / "results/lm_eval.json").read_text())["quantbuild"]
                    metrics = json.loads((out / "metrics.json").read_text())
                    ppl = {k: v for k, v in metrics.items() if k.endswith("token_perplexity")}
                    rows.append({"model": model, "mode": mode, "total_s": round(total, 1), **record["timings"],
                                 "in_process": record.get("engine_in_process"), "ppl": ppl})
                    t = record["timings"]
                    print(f"{model:<12} {mode:<10} start-up {t['engine_startup_s']:6.1f} s  perplexity "
                          f"{t['token_perplexity_s']:5.1f} s  probe {t['closeness_probe_s']:4.1f} s  throughput "
                          f"{t.get('throughput_s', 0):5.1f} s  process total {total:6.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for model in args.models:
        mine = [r for r in rows if r["model"] == model]
        split = {m: [r for r in mine if r["mode"] == m] for m in MODES}
        total = {m: sum(r["total_s"] for r in rs) / len(rs) for m, rs in split.items()}
        same = all(r["ppl"] == mine[0]["ppl"] for r in mine)
        print(f"{model}: processes / in-process total {total['processes'] / total['in_process']:.2f}x "
              f"({total['processes']:.1f} s against {total['in_process']:.1f} s); perplexities identical: {same}")
    print("RESULT-JSON " + json.dumps(rows))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        one(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
