"""evaluate: lm-eval on vLLM (or transformers) for the baseline and each variant, token perplexity per
held-out domain, closeness, throughput, and a memory planner (evaluate.planner). Engines import lazily."""
