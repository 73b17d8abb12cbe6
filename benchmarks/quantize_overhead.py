"""The quantize stage against a plain script that calls the backend directly, same model, calibration
samples and settings. Each runs in a fresh process; wall time and peak RSS (from /usr/bin/time) are
printed with their ratios (goal <= 1.05 each).

    python benchmarks/quantize_overhead.py [--method gptq|fp8|int8] [--samples 16] [--repeat 2]

Needs the demo's fetch and calibrate outputs (dvc repro calibrate). Run in the build environment.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PLAIN = r'''
import json, sys, torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
method, samples, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ids = [json.loads(l)["input_ids"] for l in open("build/calibration/calibration.jsonl")][:samples]
model = AutoModelForCausalLM.from_pretrained("build/base/model", dtype="auto")
tok = AutoTokenizer.from_pretrained("build/base/model")
torch.manual_seed(0)
if method == "gptq":
    scheme = {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
              "strategy": "group", "group_size": 64}}}
    recipe = [GPTQModifier(config_groups=scheme, ignore=["lm_head"], dampening_frac=0.01)]
else:
    recipe = [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])]
kw = {}
if method == "gptq":
    kw = dict(dataset=Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]}),
              num_calibration_samples=len(ids), max_seq_length=max(map(len, ids)), shuffle_calibration_samples=False)
oneshot(model=model, recipe=recipe, **kw)
model.save_pretrained(out, save_compressed=True)
tok.save_pretrained(out)
'''


def run_timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    result = subprocess.run(["/usr/bin/time", "-f", "QBTIME %e %M", *cmd], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"error: {' '.join(cmd[:3])} failed:\n{result.stderr[-2000:]}")
    wall, rss = re.findall(r"QBTIME ([\d.]+) (\d+)", result.stderr)[-1]
    return float(wall), int(rss) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["gptq", "fp8"], default="gptq")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    root = Path.cwd()
    if not (root / "build/calibration/calibration.jsonl").is_file():
        sys.exit("error: run `dvc repro calibrate` first")
    work = Path(tempfile.mkdtemp(prefix="qb-bench-quant-"))
    variant = (f"bench: {{method: gptq, backend: llmcompressor, group_size: 64, n_samples: {args.samples}}}"
               if args.method == "gptq" else "bench: {method: fp8}")
    params = (root / "params.yaml").read_text()
    params = re.sub(r"\nvariants:\n(  .*\n|\s*#.*\n|\n)*", f"\nvariants:\n  {variant}\n\n", params)
    (work / "params.yaml").write_text(params)
    # the variant's own inputs (its calibration slice), as the inputs stage writes them, made once
    subprocess.run([sys.executable, "-c", f"from quantbuild import api; api.inputs('{work}/params.yaml', "
                    f"out_dir='{work}/inputs')"], cwd=root, check=True)
    stage = [sys.executable, "-c", "from quantbuild import api; import sys; "
             f"api.quantize('bench', '{work}/params.yaml', inputs_dir='{work}/inputs/bench', out_dir=sys.argv[1])"]
    plain = [sys.executable, "-c", PLAIN, args.method, str(args.samples)]
    ours, theirs = [], []
    try:
        for i in range(args.repeat):  # interleaved so machine load hits both alike
            theirs.append(run_timed(plain + [str(work / f"plain{i}")], root))
            ours.append(run_timed(stage + [str(work / f"stage{i}")], root))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall_o, wall_p = statistics.median(w for w, _ in ours), statistics.median(w for w, _ in theirs)
    rss_o, rss_p = statistics.median(r for _, r in ours), statistics.median(r for _, r in theirs)
    print(f"{args.method} ({'llmcompressor, ' + str(args.samples) + ' samples' if args.method == 'gptq' else 'llmcompressor'}), "
          f"median of {args.repeat}")
    print(f"plain backend script: {wall_p:7.1f} s  peak RSS {rss_p:7.0f} MB")
    print(f"quantize stage:       {wall_o:7.1f} s  peak RSS {rss_o:7.0f} MB")
    print(f"ratio wall: {wall_o / wall_p:.3f}   ratio peak RSS: {rss_o / rss_p:.3f}   (goal <= 1.05 each)")


if __name__ == "__main__":
    main()
