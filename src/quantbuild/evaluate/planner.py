"""Memory planner: weights + KV cache for a context length and batch, per precision, and the GPUs vLLM
needs to serve it.

Pure arithmetic over a model's config.json, so it works for any model without downloading weights. Per
GPU, vLLM keeps inside `--gpu-memory-utilization` (0.9 by default) the weights' shard, the peak
activations of its profiling forward pass (max_num_batched_tokens tokens), non-torch memory (CUDA
context, cuBLAS and NCCL workspaces) and its CUDA graphs; the KV cache gets what is left (vLLM's
gpu_worker memory profile, which logs exactly these four parts). A tensor-parallel size must divide the
attention heads, and the KV heads must divide it or be divisible by it (vLLM replicates KV heads when
the size exceeds them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9
# Bytes per weight of the linear layers. 4-bit stores a 16-bit scale and a 4-bit zero point per group
# of 128 weights: 20/128 bits extra (Llama-3-70B AWQ g128 checkpoints weigh ~40 GB, as this predicts).
PRECISIONS = {"bf16": 2.0, "fp8": 1.0, "int8": 1.0, "w4 (g128)": 0.5 + (16 + 4) / 128 / 8}
KV_BYTES = {"bf16": 2.0, "fp8": 1.0}
# Per-GPU parts besides weights and KV cache. Estimates, not measurements of this project: vLLM logs
# 0.3-0.5 GiB of CUDA graphs on dense models (e.g. "Estimated CUDA graph memory: 0.36 GiB total") and
# ~1 GiB of non-torch memory on an H100, more with NCCL when tensor-parallel.
NON_TORCH_GB = 1.0
NCCL_GB = 0.5
CUDA_GRAPH_GB = 0.5
MAX_BATCHED_TOKENS = 8192  # vLLM's default for `vllm serve`; the profiling forward pass uses this many
MAX_SEQS = 256             # sampler logits in float32 for this many sequences in the profiling pass


@dataclass
class Shape:
    params: int
    layers: int
    kv_heads: int
    head_dim: int
    tied: bool
    heads: int = 1
    hidden: int = 0
    intermediate: int = 0
    vocab: int = 0

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
    return Shape(params, layers, kv_heads, head_dim, tied, heads, hidden, inter, vocab)


@dataclass
class PlanRow:
    precision: str
    weights_gb: float
    kv_cache_gb: float
    total_gb: float          # weights + KV cache, the whole model
    gpus: int | None         # the smallest valid tensor-parallel size that fits; None: more than max_gpus
    per_gpu_gb: float | None = None   # what one GPU holds at that size, overheads included
    spare_gb: float | None = None     # what is left of one GPU's budget


def valid_tensor_parallel(shape: Shape, size: int) -> bool:
    if shape.heads % size:
        return False
    return shape.kv_heads % size == 0 or size % shape.kv_heads == 0


def per_gpu_gb(shape: Shape, weights_gb: float, kv_gb: float, size: int) -> float:
    """One GPU's share at tensor-parallel `size`: weights and KV cache split (KV heads replicated past
    their count), plus activations of the profiling pass, logits, non-torch memory and CUDA graphs."""
    kv = kv_gb / min(size, shape.kv_heads)
    activations = MAX_BATCHED_TOKENS * (3 * shape.intermediate / size + 4 * shape.hidden) * 2 / GB
    logits = MAX_SEQS * shape.vocab * 4 / GB
    fixed = NON_TORCH_GB + (NCCL_GB if size > 1 else 0.0) + CUDA_GRAPH_GB
    return weights_gb / size + kv + activations + logits + fixed


def plan(config: dict[str, Any], *, context: int = 8192, batch: int = 1, gpu_memory_gb: float = 80.0,
         utilization: float = 0.9, kv_dtype: str = "bf16", max_gpus: int = 64) -> tuple[Shape, list[PlanRow]]:
    """Rows per weight precision. Embeddings stay in bf16 (quantizers leave them, and lm_head, alone)."""
    shape = shape_from_config(config)
    cfg = config.get("text_config") or config
    embed = cfg["vocab_size"] * cfg["hidden_size"] * (1 if shape.tied else 2)
    kv = shape.kv_bytes_per_token_bf16 * KV_BYTES[kv_dtype] / KV_BYTES["bf16"] * context * batch / GB
    budget = gpu_memory_gb * utilization
    rows = []
    for name, bytes_per_param in PRECISIONS.items():
        weights = ((shape.params - embed) * bytes_per_param + embed * 2.0) / GB
        row = PlanRow(name, round(weights, 2), round(kv, 2), round(weights + kv, 2), None)
        for size in range(1, max_gpus + 1):
            if not valid_tensor_parallel(shape, size):
                continue
            need = per_gpu_gb(shape, weights, kv, size)
            if need <= budget:
                row.gpus, row.per_gpu_gb, row.spare_gb = size, round(need, 2), round(budget - need, 2)
                break
        rows.append(row)
    return shape, rows


def load_config(model_or_config: str | Path) -> dict[str, Any]:
    path = Path(model_or_config)
    if path.is_dir():
        path = path / "config.json"
    return json.loads(path.read_text())


def format_table(shape: Shape, rows: list[PlanRow], *, context: int, batch: int, gpu_memory_gb: float,
                 utilization: float = 0.9) -> str:
    lines = [f"{shape.params / 1e9:.2f} B parameters, {shape.layers} layers, KV cache "
             f"{shape.kv_bytes_per_token_bf16 / 1024:.0f} KiB/token (bf16); context {context} x batch {batch}, "
             f"GPUs of {gpu_memory_gb:g} GB at {utilization:.0%} use (vLLM's default)",
             f"{'weights':<10} {'weights GB':>10} {'KV GB':>8} {'total GB':>9} {'GPUs':>5} {'per GPU':>8} {'spare':>6}"]
    for r in rows:
        gpus = str(r.gpus) if r.gpus else "n/a"
        per = f"{r.per_gpu_gb:8.1f} {r.spare_gb:6.1f}" if r.gpus else f"{'-':>8} {'-':>6}"
        lines.append(f"{r.precision:<10} {r.weights_gb:>10.1f} {r.kv_cache_gb:>8.1f} {r.total_gb:>9.1f} {gpus:>5} {per}")
    lines.append("GPUs: the smallest tensor-parallel size that divides the attention heads (KV heads divide it "
                 "or it them) and fits weights, KV cache, activations, CUDA context and graphs per GPU")
    return "\n".join(lines)
