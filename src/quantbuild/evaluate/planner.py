"""Memory planner: weights + KV cache for a context length and batch, per precision, and GPUs needed.

Pure arithmetic over a model's config.json, so it works for any model without downloading weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9
# Bytes per weight of the linear layers. 4-bit stores a 16-bit scale and a 4-bit zero point per group
# of 128 weights: 20/128 bits extra (Llama-3-70B AWQ g128 checkpoints weigh ~40 GB, as this predicts).
PRECISIONS = {"bf16": 2.0, "fp8": 1.0, "int8": 1.0, "w4 (g128)": 0.5 + (16 + 4) / 128 / 8}
KV_BYTES = {"bf16": 2.0, "fp8": 1.0}


@dataclass
class Shape:
    params: int
    layers: int
    kv_heads: int
    head_dim: int
    tied: bool

    @property
    def kv_bytes_per_token_bf16(self) -> int:
        return int(2 * self.layers * self.kv_heads * self.head_dim * KV_BYTES["bf16"])


def shape_from_config(config: dict[str, Any]) -> Shape:
    cfg = config.get("text_config") or config
    hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    inter, vocab = cfg["intermediate_size"], cfg["vocab_size"]
    tied = bool(cfg.get("tie_word_embeddings", False))
    attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    mlp = 3 * hidden * inter
    per_layer = attention + mlp + 2 * hidden
    params = layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden
    return Shape(params, layers, kv_heads, head_dim, tied)


@dataclass
class PlanRow:
    precision: str
    weights_gb: float
    kv_cache_gb: float
    total_gb: float
    gpus: int


def plan(config: dict[str, Any], *, context: int = 8192, batch: int = 1, gpu_memory_gb: float = 80.0,
         utilization: float = 0.9, kv_dtype: str = "bf16") -> tuple[Shape, list[PlanRow]]:
    """Rows per weight precision. Embeddings stay in bf16 (quantizers leave them, and lm_head, alone)."""
    shape = shape_from_config(config)
    cfg = config.get("text_config") or config
    embed = cfg["vocab_size"] * cfg["hidden_size"] * (1 if shape.tied else 2)
    kv = shape.kv_bytes_per_token_bf16 * KV_BYTES[kv_dtype] / KV_BYTES["bf16"] * context * batch / GB
    rows = []
    for name, bytes_per_param in PRECISIONS.items():
        weights = ((shape.params - embed) * bytes_per_param + embed * 2.0) / GB
        total = weights + kv
        rows.append(PlanRow(name, round(weights, 2), round(kv, 2), round(total, 2),
                            max(1, math.ceil(total / (gpu_memory_gb * utilization)))))
    return shape, rows


def load_config(model_or_config: str | Path) -> dict[str, Any]:
    path = Path(model_or_config)
    if path.is_dir():
        path = path / "config.json"
    return json.loads(path.read_text())


def format_table(shape: Shape, rows: list[PlanRow], *, context: int, batch: int, gpu_memory_gb: float) -> str:
    lines = [f"{shape.params / 1e9:.2f} B parameters, {shape.layers} layers, KV cache "
             f"{shape.kv_bytes_per_token_bf16 / 1024:.0f} KiB/token (bf16); context {context} x batch {batch}, "
             f"GPUs of {gpu_memory_gb:g} GB at 90% use",
             f"{'weights':<10} {'weights GB':>10} {'KV GB':>8} {'total GB':>9} {'GPUs':>5}"]
    lines += [f"{r.precision:<10} {r.weights_gb:>10.1f} {r.kv_cache_gb:>8.1f} {r.total_gb:>9.1f} {r.gpus:>5}" for r in rows]
    return "\n".join(lines)
