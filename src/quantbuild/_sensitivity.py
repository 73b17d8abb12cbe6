"""sensitivity: how much quantizing each decoder module at each candidate format hurts the output.

Score (per module and format) = a second-order estimate of the KL divergence to the base that quantizing
only that module adds: 1/2 * sum over tokens and outputs of (g * dY)^2 / tokens, where dY is the module's
output change under the format (fake quantization, round-to-nearest) and g the gradient of the
log-likelihood of tokens sampled from the base's own distribution (an empirical Fisher, as NVIDIA
ModelOpt's auto_quantize scores formats). One forward and backward pass scores every module and format.

The proxy is checked against the real thing: the per-layer KL to the base with one whole layer
fake-quantized at the cheapest format (one forward per layer), and their Spearman rank correlation is
recorded. Fused units (q/k/v, gate/up: vLLM runs each as one layer) get the sum of their modules.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ._formats import FORMATS, Format, layer_index, unit_of
from ._io import atomic_outputs, write_json
from ._progress import Progress, fmt_seconds, log

STAGE = "sensitivity"


def fake_quantize_weight(weight, fmt: Format):
    """Round-to-nearest with compressed-tensors' grid: min-max range with zero forced in, integer zero point."""
    import torch

    if fmt.weight_bits >= 16:
        return weight
    w = weight.float()
    out, cols = w.shape
    group = fmt.group_size or cols
    g = w.reshape(out, cols // group, group)
    if fmt.symmetric:
        qmax = 2 ** (fmt.weight_bits - 1) - 1
        scale = g.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
        q = torch.clamp(torch.round(g / scale), -qmax - 1, qmax)
        deq = q * scale
    else:
        qmax = 2 ** fmt.weight_bits - 1
        lo = g.amin(-1, keepdim=True).clamp(max=0)
        hi = g.amax(-1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / qmax).clamp_min(1e-12)
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(g / scale) + zero, 0, qmax)
        deq = (q - zero) * scale
    return deq.reshape(out, cols).to(weight.dtype)


def fake_quantize_input(x, fmt: Format):
    import torch

    if fmt.act_bits is None:
        return x
    qmax = 2 ** (fmt.act_bits - 1) - 1
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
    return torch.clamp(torch.round(x / scale), -qmax - 1, qmax) * scale


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    mean = (n - 1) / 2
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb))
    var = sum((x - mean) ** 2 for x in ra)
    return round(cov / var, 4) if var else None


def _linear_modules(model) -> dict[str, Any]:
    import torch

    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and layer_index(name) is not None}


def score_modules(model, batches: list, formats: list[Format], seed: int) -> tuple[dict[str, dict[str, float]], int]:
    """{module: {format: score}} from one forward+backward per batch (see the module docstring)."""
    import torch

    modules = _linear_modules(model)
    sums = {name: {f.name: 0.0 for f in formats} for name in modules}
    inputs: dict[str, Any] = {}
    deltas_w = {name: {f.name: (fake_quantize_weight(m.weight.data, f) - m.weight.data).float()
                       for f in formats} for name, m in modules.items()}
    handles = []

    def forward_hook(name):
        def hook(module, args, output):
            inputs[name] = args[0].detach()
        return hook

    def backward_hook(name):
        def hook(module, grad_input, grad_output):
            g = grad_output[0].detach().float()
            x = inputs.pop(name).float()
            w = module.weight.data.float()
            for f in formats:
                if f.weight_bits >= 16:
                    continue
                xq = fake_quantize_input(x, f)
                delta = torch.nn.functional.linear(xq, w + deltas_w[name][f.name]) - torch.nn.functional.linear(x, w)
                sums[name][f.name] += 0.5 * float(((g * delta) ** 2).sum())
        return hook

    for name, module in modules.items():
        handles.append(module.register_forward_hook(forward_hook(name)))
        handles.append(module.register_full_backward_hook(backward_hook(name)))
    generator = torch.Generator().manual_seed(seed)
    tokens = 0
    for p in model.parameters():
        p.requires_grad_(False)
    embed = model.get_input_embeddings()
    progress = Progress(STAGE, "scoring batch", len(batches), every=10.0)
    try:
        for ids in batches:
            # Gradients flow from the embeddings' output: no weight gradients are kept.
            hidden = embed(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=hidden).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            sampled = torch.multinomial(logp.exp().reshape(-1, logp.shape[-1]), 1, generator=generator)
            loss = logp.reshape(-1, logp.shape[-1]).gather(1, sampled).sum()
            loss.backward()
            tokens += ids.shape[0] * (ids.shape[1] - 1)
            progress.update()
    finally:
        for h in handles:
            h.remove()
    return {n: {f: v / max(tokens, 1) for f, v in s.items()} for n, s in sums.items()}, tokens


def layer_kl(model, batches: list, fmt: Format) -> list[float]:
    """Mean KL(base || quantized) per token with one whole decoder layer fake-quantized at `fmt`."""
    import torch

    modules = _linear_modules(model)
    layers = sorted({layer_index(n) for n in modules})
    with torch.no_grad():
        base = [torch.log_softmax(model(ids).logits.float(), -1) for ids in batches]
        out = []
        progress = Progress(STAGE, "layer KL", len(layers), every=10.0)
        for layer in layers:
            mine = {n: m for n, m in modules.items() if layer_index(n) == layer}
            saved = {n: m.weight.data.clone() for n, m in mine.items()}
            for n, m in mine.items():
                m.weight.data = fake_quantize_weight(m.weight.data, fmt)
            total, count = 0.0, 0
            for ids, ref in zip(batches, base):
                q = torch.log_softmax(model(ids).logits.float(), -1)
                total += float((ref.exp() * (ref - q)).sum())
                count += ref.shape[0] * ref.shape[1]
            for n, m in mine.items():
                m.weight.data = saved[n]
            out.append(total / count)
            progress.update()
    return out


def run_sensitivity(cfg, base_dir: Path, calib_path: Path, out_record: Path, out_plots: Path,
                    trust_remote_code: bool = False) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from ._hardware import compute_dtype, hardware_record

    start = time.monotonic()
    formats = [FORMATS[f] for f in cfg.formats]
    config = json.loads((base_dir / "config.json").read_text())
    stored = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    compute, why = compute_dtype(stored)
    # Scores are second-order quantities: float32 keeps them out of bf16 rounding noise.
    dtype = torch.float32 if compute in ("float32", "auto") else getattr(torch, compute)
    log(STAGE, f"scoring {', '.join(cfg.formats)} on {cfg.n_samples} x {cfg.seq_len} calibration tokens in {dtype} ({why})")
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval()
    rows = [json.loads(l)["input_ids"] for l in calib_path.read_text().splitlines() if l.strip()][: cfg.n_samples]
    batches = [torch.tensor([r[: cfg.seq_len]]) for r in rows]
    scores, tokens = score_modules(model, batches, formats, cfg.seed)
    t_scores = time.monotonic() - start
    units: dict[str, dict[str, Any]] = {}
    for name, by_format in scores.items():
        unit = units.setdefault(unit_of(name), {"modules": [], "score": {f.name: 0.0 for f in formats}})
        unit["modules"].append(name)
        for f, v in by_format.items():
            unit["score"][f] += v
    cheapest = min(formats, key=lambda f: f.bits_per_weight(4096))
    per_layer_proxy: dict[int, float] = {}
    for name, by_format in scores.items():
        per_layer_proxy[layer_index(name)] = per_layer_proxy.get(layer_index(name), 0.0) + by_format[cheapest.name]
    kl = None
    rank = None
    if cfg.layer_kl:
        kl_batches = batches[: cfg.layer_kl_samples]
        kl = layer_kl(model, kl_batches, cheapest)
        rank = _spearman([per_layer_proxy[i] for i in sorted(per_layer_proxy)], kl)
    ranked = sorted(units, key=lambda u: -units[u]["score"][cheapest.name])
    record = {
        "formats": cfg.formats, "reference_format": cheapest.name, "tokens": tokens, "seed": cfg.seed,
        "method": "empirical-Fisher second-order KL estimate per module (round-to-nearest fake quantization)",
        "compute_dtype": str(dtype).removeprefix("torch."), "compute_dtype_reason": why,
        "units": {u: {"modules": sorted(v["modules"]), "score": {f: round(s, 8) for f, s in v["score"].items()}}
                  for u, v in sorted(units.items())},
        "modules": {m: {f: round(s, 8) for f, s in v.items()} for m, v in sorted(scores.items())},
        "ranking": ranked[:20],
        "layers": [{"layer": i, "proxy": round(per_layer_proxy[i], 8),
                    **({"kl": round(kl[n], 8)} if kl else {})} for n, i in enumerate(sorted(per_layer_proxy))],
        "proxy_vs_layer_kl_spearman": rank,
        "seconds": {"scores": round(t_scores, 1), "total": round(time.monotonic() - start, 1)},
        "hardware": hardware_record(),
    }
    with atomic_outputs(out_record, out_plots, field="sensitivity output") as (record_tmp, plots_tmp):
        plots_tmp.mkdir()
        write_json(record_tmp, record)
        import math

        write_json(plots_tmp / "heatmap.json", [
            {"layer": layer_index(m), "module": m.rsplit(".", 1)[1],
             "log10_score": round(math.log10(max(v[cheapest.name], 1e-12)), 4)}
            for m, v in sorted(scores.items(), key=lambda kv: (layer_index(kv[0]), kv[0]))])
        write_json(plots_tmp / "layers.json", record["layers"])
    log(STAGE, f"most sensitive at {cheapest.name}: {', '.join(ranked[:3])}; proxy vs layer KL rank correlation "
        f"{rank}; {fmt_seconds(time.monotonic() - start)}")
    return record
