"""Distribution closeness to the baseline on held-out text: mean KL divergence and top-1 agreement.

Engines expose the top-K log-probabilities at each position (vLLM's prompt_logprobs), not the full
distribution, so KL is computed over the base's top-K tokens plus one bucket for the rest. A token
outside the variant's own top-K gets the variant's K-th log-probability, an upper bound on its
probability: the figure is a slight under-estimate of the true KL, identical for every variant.
"""

from __future__ import annotations

import math
from typing import Any

TOP_K = 20


def kl_and_agreement(reference: list[list[dict[str, float]]], variant: list[list[dict[str, float]]]) -> dict[str, Any]:
    kls, agree, positions = [], 0, 0
    for ref_seq, var_seq in zip(reference, variant):
        for p_top, q_top in zip(ref_seq, var_seq):
            if not p_top or not q_top:
                continue
            positions += 1
            if max(p_top, key=p_top.get) == max(q_top, key=q_top.get):
                agree += 1
            floor = min(q_top.values())
            kl, p_mass, q_mass = 0.0, 0.0, 0.0
            for token, logp in p_top.items():
                p = math.exp(logp)
                logq = q_top.get(token, floor)
                kl += p * (logp - logq)
                p_mass += p
                q_mass += math.exp(logq)
            p_rest, q_rest = max(1.0 - p_mass, 1e-12), max(1.0 - q_mass, 1e-12)
            kl += p_rest * (math.log(p_rest) - math.log(q_rest))
            kls.append(max(kl, 0.0))
    if not positions:
        return {"kl_mean": None, "top1_agreement": None, "positions": 0}
    return {"kl_mean": sum(kls) / len(kls), "top1_agreement": agree / positions, "positions": positions}
