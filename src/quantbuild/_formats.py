"""Per-module weight formats, declared once: what each costs in bits and what vLLM needs to run it.

Used by mixed-precision variants (`formats:`), the `auto` method's budget, the sensitivity stage's
candidates and the evaluate stage's kernel check. Bits per weight follow the quality issue's
definition: every stored byte of the decoder's Linear layers (weights, scales, zero points) x 8 / their
parameter count; embeddings and lm_head excluded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Format:
    name: str
    weight_bits: int
    group_size: int | None  # None: per output channel
    symmetric: bool
    act_bits: int | None     # None: weight-only; 8: dynamic per-token int8 activations
    kernel: str | None       # the vLLM CPU capability it needs (see evaluate/_kernels.py); None: plain bf16

    def bits_per_weight(self, in_features: int) -> float:
        """Exact stored bits per weight for a Linear with `in_features` inputs (bf16 scales, int zero points
        packed at the weight's width, as compressed-tensors saves them)."""
        if self.weight_bits >= 16:
            return 16.0
        group = self.group_size or in_features
        extra = 16 + (0 if self.symmetric else self.weight_bits)
        return self.weight_bits + extra / group

    def weights_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"num_bits": self.weight_bits, "type": "int", "symmetric": self.symmetric,
                                "strategy": "group" if self.group_size else "channel"}
        if self.group_size:
            args["group_size"] = self.group_size
        return args

    def activation_args(self) -> dict[str, Any] | None:
        if self.act_bits is None:
            return None
        return {"num_bits": self.act_bits, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}


# vLLM 0.32 on CPU runs W4A16 (CPUWNA16, 4-bit only) and W8A8 int8; it has no 8-bit weight-only kernel,
# so 8-bit modules of a mixed checkpoint are W8A8 (../shared/notes/fidelity/fidelity-levers.md, 3.4).
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("w4a16-g32-asym", 4, 32, False, None, "wna16"),
    Format("w4a16-g64-asym", 4, 64, False, None, "wna16"),
    Format("w4a16-g128-asym", 4, 128, False, None, "wna16"),
    Format("w4a16-g32", 4, 32, True, None, "wna16"),
    Format("w4a16-g64", 4, 64, True, None, "wna16"),
    Format("w4a16-g128", 4, 128, True, None, "wna16"),
    Format("w8a8", 8, None, True, 8, "int8_w8a8"),
    Format("bf16", 16, None, True, None, None),
)}
MODULE_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# vLLM fuses these into one layer (qkv_proj, gate_up_proj): they must share one format.
FUSED = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


def unit_of(module: str) -> str:
    """The unit a format is assigned to: `model.layers.3.self_attn.qkv` for q/k/v, else the module itself."""
    prefix, _, leaf = module.rpartition(".")
    return f"{prefix}.{FUSED[leaf]}" if leaf in FUSED else module


def layer_index(module: str) -> int | None:
    found = re.search(r"\blayers\.(\d+)\.", module)
    return int(found.group(1)) if found else None


def targets_regex(modules: list[str]) -> list[str]:
    """Compact compressed-tensors targets naming exactly `modules`: one regex per (module path shape)."""
    by_shape: dict[tuple[str, str], list[int]] = {}
    for module in modules:
        found = re.match(r"^(.*\blayers\.)(\d+)(\..*)$", module)
        if not found:
            by_shape.setdefault((module, ""), [])
            continue
        by_shape.setdefault((found.group(1), found.group(3)), []).append(int(found.group(2)))
    out = []
    for (head, tail), layers in sorted(by_shape.items()):
        if not tail:
            out.append("re:^" + re.escape(head) + "$")
            continue
        alt = "|".join(str(i) for i in sorted(set(layers)))
        out.append("re:^" + re.escape(head) + f"(?:{alt})" + re.escape(tail) + "$")
    return out


def measured_bits_per_weight(model_dir: Path, base_shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Bits per weight of a saved checkpoint, from its safetensors headers: every stored byte of the decoder's
    Linear modules (weight, weight_packed, weight_scale, weight_zero_point, weight_shape, input scales)."""
    from ._io import safetensors_headers

    linears = {k[: -len(".weight")]: shape for k, shape in base_shapes.items()
               if k.endswith(".weight") and len(shape) == 2 and layer_index(k) is not None}
    params = sum(s[0] * s[1] for s in linears.values())
    stored = 0
    for name, entry in safetensors_headers(model_dir).items():
        module = name.rsplit(".", 1)[0]
        if module in linears:
            start, end = entry["data_offsets"]
            stored += end - start
    return {"bits_per_weight": round(stored * 8 / params, 4) if params else None,
            "linear_parameters": params, "linear_stored_bytes": stored}
