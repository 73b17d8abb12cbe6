"""`quantbuild check` beyond params.yaml's own schema: what the pipeline will meet before any model loads.

Problems (exit 2): gate metrics no task produces; lm-eval task names its registry lacks (looked up in the
serve environment when it exists). Warnings: variants whose format this machine's vLLM build cannot
run (the evaluate stage falls back to transformers, or refuses), dvc.yaml entries a new variant lacks.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from .config import Params, domain_name
from ._layout import BASE_MODEL_DIR, HELDOUT_FILE

BUILTIN_METRICS = {
    "heldout_perplexity": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    "gsm8k_local": ("exact_match",),
}


def known_metrics(params: Params) -> tuple[set[str], set[str]]:
    """(metric names the evaluate stage will produce, task prefixes whose metrics are only known at run time)."""
    names = {"top1_agreement"}
    open_tasks = set()
    for task in params.eval.tasks:
        if task in BUILTIN_METRICS:
            names |= {f"{task}.{m}" for m in BUILTIN_METRICS[task]}
        else:
            open_tasks.add(task)
    for src in params.calibration.sources + params.calibration.heldout_sources:
        names |= {f"ppl.{domain_name(src)}.{m}" for m in ("token_perplexity", "word_perplexity", "bits_per_byte")}
    return names, open_tasks


def gate_metric_problems(params: Params) -> list[str]:
    names, open_tasks = known_metrics(params)
    gate = params.eval.gate
    tables = [("eval.gate.metrics", gate.metrics)]
    tables += [(f"eval.gate.methods.{m}", t) for m, t in gate.methods.items()]
    tables += [(f"eval.gate.variants.{v}", t) for v, t in gate.variants.items()]
    problems = []
    for where, table in tables:
        for pattern in table:
            if pattern.split(".", 1)[0] in open_tasks:
                continue  # an lm-eval task's metric names are known only once it runs
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                shown = ", ".join(sorted(names))
                problems.append(f"{where}.{pattern}: no task produces this metric (the gate would fail closed); "
                                f"metrics here: {shown}")
    return problems


def _evaluate_python() -> Path | None:
    env = os.environ.get("QUANTBUILD_ENV_SERVE")
    python = Path(env) / "bin" / "python" if env else Path(".venvs/serve/bin/python")
    return python if python.is_file() else None


def unknown_tasks(params: Params, heldout: Path = HELDOUT_FILE) -> tuple[list[str], str]:
    """Task names lm-eval's registry (plus ours) lacks; ('', reason) entries when it cannot be asked."""
    ours = set(BUILTIN_METRICS)
    others = [t for t in params.eval.tasks if t not in ours]
    if not others:
        return [], "only built-in tasks"
    python = _evaluate_python()
    if python is None:
        return [], "no serve environment to ask lm-eval's registry (make setup); the evaluate stage checks"
    code = "from lm_eval.tasks import TaskManager\nprint('\\n'.join(TaskManager().all_tasks))\n"
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"lm-eval's registry could not be read ({exc})"
    if out.returncode != 0:
        return [], "lm-eval's registry could not be read: " + (out.stderr.strip().splitlines() or ["?"])[-1][:160]
    from .evaluate._tasks import check_task_names
    from .errors import ConfigError

    known = out.stdout.split() + list(ours)
    try:
        check_task_names(params.eval.tasks, known)
    except ConfigError as exc:
        return exc.lines(), "lm-eval's registry"
    return [], "lm-eval's registry"


# Methods whose checkpoints hold integer weights with bf16 activations (W4A16 at 4 bits).
WEIGHT_ONLY_METHODS = ("gptq", "awq", "autoround")


def kernel_warnings(params: Params) -> list[str]:
    from ._hardware import compute_dtype, cuda_available
    from ._methods import DEFAULTS
    from .evaluate._kernels import FP8_MIN_GFLOPS, fp8_gemm_gflops, vllm_cpu_library

    if params.eval.engine != "vllm" or cuda_available():
        return []
    dtype = compute_dtype("bfloat16" if params.eval.dtype == "auto" else params.eval.dtype)[0]
    library = vllm_cpu_library()
    action = "it and the base are measured with transformers" if params.eval.fallback == "hf" else "the stage refuses it"
    out = []
    for name, v in params.variants.items():
        bits = v.bits or DEFAULTS[v.method].get("bits")
        four_bit = v.method == "auto" or (v.method in WEIGHT_ONLY_METHODS and bits == 4)
        gflops = fp8_gemm_gflops() if v.method == "fp8" else None
        if gflops is not None and gflops < FP8_MIN_GFLOPS:
            out.append(f"evaluate@{name}: this CPU's FP8 GEMM is oneDNN's reference kernel ({gflops:.2f} "
                       f"GFLOP/s), too slow for vLLM: {action} (eval.fallback: {params.eval.fallback})")
            continue
        if not four_bit:
            if v.method in ("gptq",) and bits == 8:
                out.append(f"evaluate@{name}: vLLM has no CPU kernel for 8-bit weight-only; it is measured with "
                           f"transformers (eval.fallback: {params.eval.fallback})")
            continue
        if library == "_C_AVX2":
            why = f"vLLM loads its AVX2 kernels here ({library}), which have no W4A16 kernel"
        elif v.method in WEIGHT_ONLY_METHODS and (v.group_size or DEFAULTS[v.method].get("group_size")) == -1:
            why = "vLLM's CPU W4A16 kernel cannot repack channel-wise weights (group_size -1)"
        elif dtype not in ("bfloat16", "float16"):
            why = f"evaluation computes in {dtype} here (no native bf16) and vLLM's CPU W4A16 kernel takes bf16/fp16 only"
        else:
            continue
        out.append(f"evaluate@{name}: {why}: {action} (eval.fallback: {params.eval.fallback})")
    return out


def dvcfile_warnings(params: Params, dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    if not dvc_yaml.is_file():
        return []
    import yaml

    from ._dvcfile import missing_variant_entries

    data = yaml.safe_load(dvc_yaml.read_text()) or {}
    artifacts = data.get("artifacts") or {}
    base = next((k for k, a in artifacts.items() if isinstance(a, dict) and a.get("path") == BASE_MODEL_DIR.as_posix()), "model")
    return missing_variant_entries(data, list(params.variants), base)


def report(params: Params) -> dict[str, Any]:
    problems = gate_metric_problems(params)
    tasks, tasks_how = unknown_tasks(params)
    problems += tasks
    return {"problems": problems, "warnings": kernel_warnings(params) + dvcfile_warnings(params),
            "tasks_checked_by": tasks_how}
