"""Token perplexity over fixed windows, per held-out text domain (as the GPTQ and AWQ papers report it).

Each domain's held-out documents are tokenized, joined and cut into non-overlapping windows of
`eval.perplexity_window` tokens (at most `eval.perplexity_windows` of them); every token after the first
of a window is scored given the tokens before it in that window. The same windows score the base and
every variant, so the figures compare exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def domain_windows(heldout: Path, tokenizer, window: int, max_windows: int) -> dict[str, list[list[int]]]:
    docs: dict[str, list[str]] = {}
    for line in heldout.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            docs.setdefault(str(row.get("domain") or "heldout"), []).append(row["text"])
    out = {}
    for domain, texts in docs.items():
        ids: list[int] = []
        for text in texts:
            ids += tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]
        windows = [ids[i:i + window] for i in range(0, len(ids) - window + 1, window)][:max_windows]
        if not windows and len(ids) >= 32:  # a short domain still gets one (shorter) window
            windows = [ids]
        if windows:
            out[domain] = windows
    return out


def perplexities(logprobs: list[list[float]], windows: list[list[int]], tokenizer) -> dict[str, Any]:
    """Token perplexity, and from the same sums word perplexity and bits per byte of the scored text (the
    tokens after each window's first): word perplexity magnifies a token-perplexity change by tokens per word."""
    total = -sum(sum(seq) for seq in logprobs)
    count = sum(len(seq) for seq in logprobs)
    texts = [tokenizer.decode(w[1:]) for w in windows]
    words = sum(len(t.split()) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    nan = float("nan")
    return {"token_perplexity": math.exp(total / count) if count else nan,
            "word_perplexity": math.exp(total / words) if words else nan,
            "bits_per_byte": total / (nbytes * math.log(2)) if nbytes else nan, "tokens": count}
