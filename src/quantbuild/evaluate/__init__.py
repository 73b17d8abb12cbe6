"""evaluate: lm-eval on vLLM (or transformers) for the baseline and each variant, recovery, gate,
throughput, and a memory planner. Engines import lazily, only when a model is evaluated."""

from .planner import format_table, load_config, plan

__all__ = ["plan", "format_table", "load_config"]
