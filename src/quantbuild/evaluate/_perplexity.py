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

from .._change import Change


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
    window_nll = [-sum(seq) for seq in logprobs]
    total = sum(window_nll)
    count = sum(len(seq) for seq in logprobs)
    texts = [tokenizer.decode(w[1:]) for w in windows]
    words = sum(len(t.split()) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    nan = float("nan")
    return {"token_perplexity": math.exp(total / count) if count else nan,
            "word_perplexity": math.exp(total / words) if words else nan,
            "bits_per_byte": total / (nbytes * math.log(2)) if nbytes else nan, "tokens": count,
            # per window: what a paired comparison with another model on the same windows needs
            "window_nll": [round(nll, 6) for nll in window_nll], "window_tokens": [len(seq) for seq in logprobs]}


# Two-sided 95 % quantiles of Student's t by degrees of freedom (from scipy.stats.t.ppf(0.975, df)); the
# normal's 1.96 beyond 30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
         2.042)


def _pct(mean_nll_change: float) -> float:
    """exp(x) - 1 in %; +inf past what a float holds (a model that puts ~0 probability on the text)."""
    return round(100 * math.expm1(mean_nll_change), 4) if mean_nll_change < 700 else math.inf


def paired_change(base: dict[str, list], variant: dict[str, list]) -> Change:
    """The variant's token-perplexity change against the base on the same windows, in %, with a 95 %
    interval from the windows' spread (paired t over the per-window mean log-likelihood differences).

    How far the change could move on other text of the same domain: windows of one text differ by whole
    points (FP8 on the demo's man pages: +0.4 % to +3.6 % per window), so a change measured on a few windows
    near a gate's threshold is not known to be on either side of it. base, variant: {"window_nll": [...],
    "window_tokens": [...]} of the same windows. The interval is None below two windows.
    Raises WindowMismatch where the two were not scored on the same windows."""
    if base["window_tokens"] != variant["window_tokens"]:
        raise WindowMismatch(f"{len(base['window_tokens'])} windows of {sum(base['window_tokens'])} tokens against "
                             f"{len(variant['window_tokens'])} of {sum(variant['window_tokens'])}")
    tokens = base["window_tokens"]
    diffs = [(v - b) / t for v, b, t in zip(variant["window_nll"], base["window_nll"], tokens)]
    mean = (sum(variant["window_nll"]) - sum(base["window_nll"])) / sum(tokens)
    if len(diffs) < 2:
        return Change(_pct(mean))
    centre = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - centre) ** 2 for d in diffs) / (len(diffs) - 1))
    half = (_T975[len(diffs) - 2] if len(diffs) - 1 <= len(_T975) else 1.96) * sd / math.sqrt(len(diffs))
    return Change(_pct(mean), _pct(mean - half), _pct(mean + half))


class WindowMismatch(ValueError):
    """The base and a variant were scored on different held-out windows, so they do not compare."""
