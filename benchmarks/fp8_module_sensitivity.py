"""Which Linear modules of the demo model FP8 W8A8 hurts most, measured on calibration text (never on the
held-out text the gate scores): each module alone is quantized (weights per output channel, activations per
token, E4M3, fake-quantized in bf16) and the mean KL of the next-token distribution to the base's is taken over
N calibration windows of 512 tokens spread over the calibration file (news first, then Wikipedia).

    .venvs/build/bin/python benchmarks/fp8_module_sensitivity.py [--windows 4] [--top 25]

Prints the top modules (KL, parameters, name) and writes benchmarks/results/fp8_module_sensitivity.json.
About 1.3 s per module on 2 cores (210 modules). Needs `dvc repro calibrate` (the base and calibration set).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def fake_fp8(t, dim: int):
    import torch

    scale = t.abs().amax(dim=dim, keepdim=True).float().clamp(min=1e-12) / 448.0  # E4M3's largest value
    return ((t.float() / scale).to(torch.float8_e4m3fn).float() * scale).to(t.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbuild._hardware import cpu_info

    base = ROOT / "build/base/model"
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).eval()
    texts = [json.loads(line)["text"] for line in (ROOT / "build/calibration/calibration.jsonl").open()]
    ids = tokenizer("\n\n".join(texts), return_tensors="pt").input_ids[0]
    step = (len(ids) - 512) // args.windows
    batch = torch.stack([ids[i * step:i * step + 512] for i in range(args.windows)])
    with torch.no_grad():
        reference = torch.log_softmax(model(batch).logits.float(), -1)
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    rows, start = {}, time.monotonic()
    for name, module in modules:
        original = module.weight.data.clone()
        module.weight.data = fake_fp8(original, 1)
        hook = module.register_forward_pre_hook(lambda mod, a: (fake_fp8(a[0], -1),))
        with torch.no_grad():
            logp = torch.log_softmax(model(batch).logits.float(), -1)
        hook.remove()
        module.weight.data = original
        rows[name] = {"kl": float((reference.exp() * (reference - logp)).sum(-1).mean()), "params": original.numel()}
    seconds = time.monotonic() - start
    ranked = sorted(rows.items(), key=lambda item: -item[1]["kl"])
    for name, row in ranked[:args.top]:
        print(f"{row['kl']:.6f}  {row['params']:>8d}  {name}")
    kls = sorted(row["kl"] for row in rows.values())
    print(f"median {kls[len(kls) // 2]:.6f}; {len(rows)} modules in {seconds:.0f} s on {cpu_info().get('model')}")
    out = {"benchmark": "fp8_module_sensitivity", "windows": args.windows, "tokens_per_window": 512,
           "seconds": round(seconds, 1), "cpu": cpu_info().get("model"), "modules": dict(ranked)}
    (ROOT / "benchmarks/results/fp8_module_sensitivity.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
