"""How precisely the gate's held-out windows measure FP8's loss on the demo model, and whether distilling the
FP8 checkpoint's channel scales and norms (quantbuild's distillation of 4-bit checkpoints, with the inputs
rounded to FP8 per token) lowers it: per domain, the token-perplexity change of FP8 dynamic against the base
with its 95 % interval (the evaluate stage's own `paired_change`) on the first 8, 16, 32 ... windows.

FP8 dynamic is emulated as vLLM's kernels compute it: weights rounded to float8_e4m3fn per output channel
(scale = the row's absolute maximum / 448, stored in bf16, as llm-compressor's minmax observer sets it),
inputs rounded per token at run time (scale = the token's absolute maximum / 448, floored as vLLM floors it),
products in float32. The layers 0 and 29 MLPs stay bf16, as the shipped fp8-dynamic variant keeps them.

    python benchmarks/fp8_resolution.py --heldout H.jsonl [--calibration C.jsonl] [--windows 64]
        [--distill 64:1e-3,64:3e-3] [--out results.json]

A larger held-out file than the pipeline's: `calibration.heldout_max_chars: null` and `heldout_max_docs: null`
give 146 documents (900k characters) with the calibration set unchanged. Runs on a CUDA device if there is one.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
KEEP = re.compile(r"layers\.(0|29)\.mlp\.")
FP8_MAX, FP8_MIN_SCALE = 448.0, 1.0 / (448.0 * 512.0)


def main() -> None:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantbuild._hardware import cpu_info
    from quantbuild.evaluate._perplexity import domain_windows, paired_change, perplexities

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=str(ROOT / "build/base/model"))
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--calibration", default=str(ROOT / "build/calibration/calibration.jsonl"))
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--distill", default="", help="steps:rate,... (e.g. 64:1e-3)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    windows = domain_windows(Path(args.heldout), tokenizer, 512, args.windows)
    samples = [json.loads(line)["input_ids"] for line in Path(args.calibration).read_text().splitlines() if line]

    def load():
        return AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).to(device).eval()

    class FP8Linear(torch.nn.Module):
        def __init__(self, linear) -> None:
            super().__init__()
            w = linear.weight.detach().float()
            scale = (w.abs().amax(1, keepdim=True) / FP8_MAX).to(torch.bfloat16).float()
            self.register_buffer("codes", (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float())
            self.register_buffer("scale0", scale)
            self.log_ratio = torch.nn.Parameter(torch.zeros_like(scale))

        def forward(self, x):
            step = (x.detach().abs().amax(-1, keepdim=True).float() / FP8_MAX).clamp(min=FP8_MIN_SCALE)
            scaled = x.float() / step
            rounded = scaled.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
            x = (scaled + (rounded - scaled).detach()) * step
            return F.linear(x, self.codes * (self.scale0 * torch.exp(self.log_ratio)))

    def fp8_model():
        model = load()
        for name, module in list(model.named_modules()):
            if isinstance(module, torch.nn.Linear) and ".layers." in name and not KEEP.search(name):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, FP8Linear(module))
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def window_nll(model) -> dict[str, dict[str, list]]:
        """Per-window sums as the evaluate stage records them (_perplexity.perplexities)."""
        out = {}
        with torch.no_grad():
            for domain, seqs in sorted(windows.items()):
                logprobs = []
                for seq in seqs:
                    ids = torch.tensor([seq], device=device)
                    logp = model(ids).logits[0, :-1].float().log_softmax(-1)
                    logprobs.append(logp.gather(1, ids[0, 1:, None])[:, 0].tolist())
                ppl = perplexities(logprobs, seqs, tokenizer)
                out[domain] = {"window_nll": ppl["window_nll"], "window_tokens": ppl["window_tokens"]}
        return out

    def changes(base, variant) -> dict[str, dict[str, dict]]:
        out = {}
        for domain in base:
            n_all = len(base[domain]["window_nll"])
            out[domain] = {}
            for n in sorted({n for n in (8, 16, 32, 64, 128) if n < n_all} | {n_all}):
                cut = lambda rec: {k: v[:n] for k, v in rec.items()}  # noqa: E731
                change = paired_change(cut(base[domain]), cut(variant[domain]))
                out[domain][str(n)] = {"pct": change.pct, "windows": n, "ci95_low_pct": change.ci95_low_pct,
                                       "ci95_high_pct": change.ci95_high_pct}
        return out

    def show(label, rows) -> None:
        for domain, by_n in rows.items():
            print(f"{label:<16} {domain:<16} " + "  ".join(
                f"{n:>3}w {c['pct']:+.2f} ({c['ci95_low_pct']:+.2f} to {c['ci95_high_pct']:+.2f})"
                for n, c in by_n.items() if c["ci95_low_pct"] is not None), flush=True)

    start = time.monotonic()
    teacher = load()
    for p in teacher.parameters():
        p.requires_grad_(False)
    base = window_nll(teacher)
    print("windows per domain: " + ", ".join(f"{d} {len(v['window_nll'])}" for d, v in base.items()), flush=True)
    results = {"ref": changes(base, window_nll(fp8_model()))}
    show("fp8 (shipped)", results["ref"])
    for spec in [s for s in args.distill.split(",") if s]:
        steps, rate = int(spec.split(":")[0]), float(spec.split(":")[1])
        student = fp8_model()
        scales = [m.log_ratio for m in student.modules() if isinstance(m, FP8Linear)]
        norms = [m.weight for n, m in student.named_modules() if n.endswith("norm")]
        for p in scales + norms:
            p.requires_grad_(True)
        opt = torch.optim.Adam([{"params": scales, "lr": rate}, {"params": norms, "lr": rate / 10}])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
        for step in range(steps):
            ids = torch.tensor([samples[step % len(samples)]], device=device)
            with torch.no_grad():
                target = teacher(ids).logits.float().log_softmax(-1)
            logp = student(ids).logits.float().log_softmax(-1)
            loss = F.kl_div(logp, target, log_target=True, reduction="none").sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        student.eval()
        results[f"distill {spec}"] = changes(base, window_nll(student))
        show(f"distill {spec}", results[f"distill {spec}"])
    record = {"benchmark": "fp8_resolution", "date": time.strftime("%Y-%m-%d"), "device": device,
              "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "cpu": cpu_info(),
              "torch": torch.__version__, "command": " ".join(sys.argv[1:]), "heldout": Path(args.heldout).name, "seconds": round(time.monotonic() - start, 1),
              "windows": {d: len(v["window_nll"]) for d, v in base.items()}, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"done in {record['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
