"""Distillation after quantization: each group's scale and the RMSNorm weights tuned end to end so that the
quantized model's next-token distributions come closer to the base's (KL divergence, calibration samples).

GPTQ works layer by layer on each layer's own output error; it cannot see how errors add up through the
decoder. With every weight's integer fixed, the group scales (bf16, stored anyway) and the norms (not part
of the Linear layers) can still move: tuning them against the base's distributions is EfficientQAT's
end-to-end step (Chen et al. 2024, arXiv 2407.11062, "E2E-QP") with the norms added (Li et al. 2023,
"Norm Tweaking", arXiv 2309.02784). Bits per weight do not change, nor does the checkpoint's format: only
`weight_scale` and norm tensors are rewritten, so vLLM loads it as before.

Works on llm-compressor's saved `pack-quantized` checkpoint (grouped int weights); other Linear layers
(W8A8, kept ones) stay fixed in the student, computed dense without activation quantization."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .._progress import fmt_seconds, log
from ._common import STAGE

DEFAULT_LR = 1e-3  # of the log-scales; the norms take a tenth (measured on the demo: 3e-3 diverged)
PROBE_SAMPLES = 4  # the fixed samples whose KL the log and record show before and after


def _grouped_modules(tensors: dict[str, Any]) -> dict[str, int]:
    """{module name: bits} of the grouped integer Linear layers in a compressed-tensors `pack-quantized`
    checkpoint: a packed weight with more than one scale per row; its bits from the packed width (E
    elements of B bits take ceil(E * B / 32) int32s)."""
    out: dict[str, int] = {}
    for key, packed in tensors.items():
        if not key.endswith(".weight_packed"):
            continue
        name = key[: -len(".weight_packed")]
        if tensors[name + ".weight_scale"].shape[-1] <= 1:
            continue  # one scale per channel: not grouped
        in_features = int(tensors[name + ".weight_shape"][1])
        out[name] = next(b for b in range(1, 9) if -(-in_features * b // 32) == packed.shape[-1])
    return out


def _student(model: Any, tensors: dict[str, Any], grouped: dict[str, int]) -> list[Any]:
    """Swap each grouped Linear for one whose weight is n * scale (n fixed integers, scale trainable in log
    space so that every step moves it by a ratio). Returns the trainable log-scales."""
    import torch
    import torch.nn.functional as F
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    class GroupScaledLinear(torch.nn.Module):
        def __init__(self, name: str, bits: int) -> None:
            super().__init__()
            scale = tensors[name + ".weight_scale"].float()
            shape = torch.Size(tensors[name + ".weight_shape"].tolist())
            codes = unpack_from_int32(tensors[name + ".weight_packed"], bits, shape).float()
            zero = tensors.get(name + ".weight_zero_point")
            self.group = shape[1] // scale.shape[1]
            if zero is not None:
                codes = codes - unpack_from_int32(zero, bits, scale.shape, packed_dim=0).float().repeat_interleave(
                    self.group, 1)
            self.register_buffer("n", codes)
            self.register_buffer("scale0", scale)
            self.log_ratio = torch.nn.Parameter(torch.zeros_like(scale))

        def scale(self) -> Any:
            return self.scale0 * torch.exp(self.log_ratio)

        def forward(self, x: Any) -> Any:
            return F.linear(x, self.n * self.scale().repeat_interleave(self.group, 1))

    trainable = []
    for name, bits in grouped.items():
        parent_name, _, child = name.rpartition(".")
        module = GroupScaledLinear(name, bits)
        setattr(model.get_submodule(parent_name), child, module)
        trainable.append((name, module))
    return trainable


def distill(out_dir: Path, base_dir: Path, samples: list[list[int]], steps: int, lr: float,
            trust_remote_code: bool, what: str, compute: str) -> dict[str, Any]:
    """Tune the saved checkpoint in out_dir in place; returns the record's `distill` entry."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    start = time.monotonic()
    shards = {shard: load_file(shard) for shard in sorted(out_dir.glob("*.safetensors"))}
    tensors = {key: value for content in shards.values() for key, value in content.items()}
    grouped = _grouped_modules(tensors)
    if not grouped:
        return {"skipped": "no grouped integer Linear layers to tune"}
    # Weights, scales, norms and Adam's state in fp32 (its small steps would vanish in bf16); the products in
    # bf16 where the stage computes in bf16 (hardware with native bf16): 3.1 s a 512-token step of the demo
    # model on 2 AVX512-BF16 cores against 5.3 s in fp32.
    teacher = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                   trust_remote_code=trust_remote_code).eval()
    student = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32,
                                                   trust_remote_code=trust_remote_code).eval()
    for p in [*teacher.parameters(), *student.parameters()]:
        p.requires_grad_(False)
    scaled = _student(student, tensors, grouped)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher.to(device)
    student.to(device)
    norms = [(name, module.weight) for name, module in student.named_modules()
             if name.endswith("norm") and isinstance(getattr(module, "weight", None), torch.nn.Parameter)]
    for _, weight in norms:
        weight.requires_grad_(True)
    # The norms are per-channel multipliers on every layer's input: a tenth of the scales' rate keeps them
    # from moving faster than the scales they feed (measured: 1e-3 / 1e-4 tuned best, 3e-3 diverged).
    optimizer = torch.optim.Adam([{"params": [m.log_ratio for _, m in scaled], "lr": lr},
                                  {"params": [w for _, w in norms], "lr": lr / 10}])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / steps)
    autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16) if compute == "bfloat16"
                else contextlib.nullcontext())

    def kl(ids: Any) -> Any:
        with torch.no_grad(), autocast:
            target = teacher(ids).logits.float().log_softmax(-1)
        with autocast:
            logp = student(ids).logits.float().log_softmax(-1)
        return F.kl_div(logp, target, log_target=True, reduction="none").sum(-1).mean()

    # Per-sample KL varies more than distillation's gain: progress is measured on the same few samples before
    # and after (samples the steps also see; held-out quality is the evaluate stage's to judge).
    probe = [torch.tensor([ids], device=device) for ids in samples[:PROBE_SAMPLES]]

    def probe_kl() -> float:
        with torch.no_grad():
            return sum(float(kl(ids)) for ids in probe) / len(probe)

    kl_before = probe_kl()
    log(STAGE, f"{what}: distilling {steps} steps; KL to the base on {len(probe)} fixed samples {kl_before:.4f}")
    losses: list[float] = []
    every = max(1, steps // 8)
    for step in range(steps):
        loss = kl(torch.tensor([samples[step % len(samples)]], device=device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (step + 1) % every == 0 or step + 1 == steps:
            recent = losses[-every:]
            log(STAGE, f"{what}: distill step {step + 1}/{steps}, KL of the last {len(recent)} steps' samples "
                       f"{sum(recent) / len(recent):.4f}, elapsed {fmt_seconds(time.monotonic() - start)}")
    kl_after = probe_kl()
    log(STAGE, f"{what}: KL to the base on the {len(probe)} fixed samples {kl_before:.4f} -> {kl_after:.4f}")
    # Back into the checkpoint in its stored dtypes; nothing else in it changes.
    updates = {f"{name}.weight_scale": module.scale().detach().cpu().to(tensors[f"{name}.weight_scale"].dtype)
               for name, module in scaled}
    updates.update({f"{name}.weight": weight.detach().cpu().to(tensors[f"{name}.weight"].dtype) for name, weight in norms
                    if f"{name}.weight" in tensors})
    for shard, content in shards.items():
        touched = [k for k in content if k in updates]
        if touched:
            content.update({k: updates[k].contiguous() for k in touched})
            save_file(content, shard, metadata={"format": "pt"})
    return {"steps": steps, "lr": lr, "compute_dtype": compute, "samples": min(steps, len(samples)),
            "seq_len": max(map(len, samples)), "tuned": {"group_scales": len(scaled), "norms": len(norms)},
            "probe_samples": len(probe), "kl_before": round(kl_before, 5), "kl_after": round(kl_after, 5),
            "seconds": round(time.monotonic() - start, 1)}
