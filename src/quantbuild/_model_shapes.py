"""What the base model's config.json tells us before any weight is loaded."""

from __future__ import annotations

from typing import Any

# Decoder families whose linear layers follow the Llama layout (q/k/v/o, gate/up/down).
LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "granite", "olmo2", "smollm3"}


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config") or config


def linear_in_features(config: dict[str, Any]) -> dict[str, int]:
    """in_features of each quantizable linear kind, e.g. {'self_attn.q_proj': 576, 'mlp.down_proj': 1536}."""
    cfg = _text_config(config)
    hidden = cfg.get("hidden_size")
    if not hidden:
        return {}
    heads = cfg.get("num_attention_heads") or 1
    head_dim = cfg.get("head_dim") or hidden // heads
    inter = cfg.get("intermediate_size")
    widths = {
        "self_attn.q_proj": hidden, "self_attn.k_proj": hidden, "self_attn.v_proj": hidden,
        "self_attn.o_proj": heads * head_dim,
    }
    if inter:
        widths.update({"mlp.gate_proj": hidden, "mlp.up_proj": hidden, "mlp.down_proj": inter})
    return widths


def max_positions(config: dict[str, Any]) -> int | None:
    cfg = _text_config(config)
    return cfg.get("max_position_embeddings") or cfg.get("n_positions")


def model_type(config: dict[str, Any]) -> str:
    return str(_text_config(config).get("model_type") or config.get("model_type") or "unknown")
