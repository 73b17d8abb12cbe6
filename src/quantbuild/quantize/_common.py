"""What every backend adapter shares: the job description, resolved settings, module selection,
calibration loading and console progress (layer i of n, elapsed, time left)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import safetensors_headers
from .._progress import fmt_seconds, log
from ..config import VariantConfig
from ..errors import ConfigError

STAGE = "quantize"


@dataclass
class QuantJob:
    name: str
    variant: VariantConfig
    settings: dict[str, Any]
    model_dir: Path
    out_dir: Path
    samples: list[list[int]]
    seed: int
    keep_modules: list[str]
    linear_modules: list[str]
    model_config: dict[str, Any]
    trust_remote_code: bool = False
    extras: dict[str, Any] = field(default_factory=dict)  # what the adapter reports for the record

    @property
    def where(self) -> str:
        return f"variants.{self.name}"


def safetensors_shapes(model_dir: Path) -> dict[str, list[int]]:
    return {name: entry["shape"] for name, entry in safetensors_headers(model_dir).items()}


def linear_modules(model_dir: Path) -> list[str]:
    """Names of the decoder's linear layers (2-D weights inside `layers.N`), from the file headers."""
    names = [k[: -len(".weight")] for k, shape in safetensors_shapes(model_dir).items()
             if k.endswith(".weight") and len(shape) == 2 and re.search(r"\blayers\.\d+\.", k)]
    return sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def resolve_keep(variant: VariantConfig, modules: list[str], where: str) -> list[str]:
    """Modules kept at higher precision: every linear layer one of `keep`'s regexes finds."""
    kept: list[str] = []
    problems = []
    for i, pattern in enumerate(variant.keep):
        found = [m for m in modules if re.search(pattern, m)]
        if not found:
            example = modules[0] if modules else "model.layers.0.self_attn.q_proj"
            problems.append(f"{where}.keep[{i}]: {pattern!r} matches no linear layer (names look like {example})")
        kept += [m for m in found if m not in kept]
    # vLLM fuses these projections into one layer (qkv_proj, gate_up_proj): their precision must match.
    for group in FUSED_GROUPS:
        for module in kept:
            prefix, _, leaf = module.rpartition(".")
            if leaf in group:
                siblings = [f"{prefix}.{g}" for g in group if f"{prefix}.{g}" in modules]
                missing = [s for s in siblings if s not in kept]
                if missing and not any(p.startswith(f"{where}.keep: vLLM fuses {prefix}") for p in problems):
                    problems.append(f"{where}.keep: vLLM fuses {prefix}.{{{','.join(group)}}} into one layer; keep "
                                    f"all of them or none (add {', '.join(m.rsplit('.', 1)[1] for m in missing)})")
    if problems:
        raise ConfigError(problems)
    if modules and len(kept) == len(modules):
        raise ConfigError([f"{where}.keep: the patterns keep every linear layer; nothing would be quantized"])
    return kept


def load_samples(path: Path, n: int | None) -> list[list[int]]:
    samples = [json.loads(line)["input_ids"] for line in path.read_text().splitlines() if line.strip()]
    return samples[:n] if n else samples


def decoder_layers(model: Any) -> list[Any]:
    """The repeated decoder blocks of a transformers causal LM (model.model.layers for Llama-likes)."""
    for path in ("model.layers", "model.model.layers", "model.decoder.layers", "transformer.h"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    return []


class LayerProgress:
    """Prints `layer i/n` with elapsed and estimated time left as calibration reaches each block."""

    def __init__(self, layers: list[Any], what: str):
        self.total, self.what = len(layers), what
        self.start = time.monotonic()
        self.first_layer_at: float | None = None  # when real calibration data first reached a block
        self.seen: set[int] = set()
        self.passes = 1  # methods such as SmoothQuant + GPTQ walk the layers more than once
        self.handles = [layer.register_forward_pre_hook(self._hook(i), with_kwargs=True)
                        for i, layer in enumerate(layers)]

    def _hook(self, index: int):
        def hook(module, args, kwargs):
            import torch

            hidden = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(hidden, torch.Tensor) or hidden.is_meta:
                return None  # tracing passes proxies (or meta tensors) through; only real calibration counts
            if self.first_layer_at is None:
                self.first_layer_at = time.monotonic()
            if index == 0 and len(self.seen) > 1:  # back at the first layer: a new pass begins
                self.passes += 1
                self.seen.clear()
                self.start = time.monotonic()
            if index in self.seen:
                return None
            self.seen.add(index)
            done = len(self.seen)
            elapsed = time.monotonic() - self.start
            left = elapsed / done * (self.total - done) if done > 1 else 0.0
            eta = f", ~{fmt_seconds(left)} left" if done > 1 and done < self.total else ""
            stage = f" (pass {self.passes})" if self.passes > 1 else ""
            log(STAGE, f"{self.what}: layer {index + 1}/{self.total}{stage}, elapsed {fmt_seconds(elapsed)}{eta}")
            return None
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def no_accelerator() -> bool:
    import torch

    accel = getattr(torch, "accelerator", None)
    if accel is not None and hasattr(accel, "is_available"):
        return not accel.is_available()
    return not torch.cuda.is_available()
