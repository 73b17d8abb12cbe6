"""evaluate: lm-eval on vLLM (CPU) for the baseline and variants, recovery, the gate, and the hf engine."""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
import yaml

from quantbuild.config import EvalConfig, GateConfig
from quantbuild.errors import ConfigError
from quantbuild.evaluate._closeness import kl_and_agreement
from quantbuild.evaluate._engine import command_line, engine_args
from quantbuild.evaluate._tasks import check_task_names, heldout_task

from .conftest import VENV_BIN, dvc, make_project, write_params


def test_kl_and_top1_agreement():
    ref = [[{"1": math.log(0.7), "2": math.log(0.2)}, {"3": math.log(0.9), "4": math.log(0.05)}]]
    same = kl_and_agreement(ref, ref)
    assert same["kl_mean"] == pytest.approx(0.0, abs=1e-12) and same["top1_agreement"] == 1.0
    other = [[{"2": math.log(0.6), "1": math.log(0.3)}, {"3": math.log(0.8), "5": math.log(0.1)}]]
    diff = kl_and_agreement(ref, other)
    assert diff["kl_mean"] > 0.1 and diff["top1_agreement"] == 0.5 and diff["positions"] == 2


def test_parallelism_settings_reach_the_engine_arguments(tmp_path):
    cfg = EvalConfig(tensor_parallel_size=4, data_parallel_size=2, max_model_len=4096, seed=7, limit=50)
    args = engine_args("vllm", tmp_path, cfg, cpu=False)
    assert args["tensor_parallel_size"] == 4 and args["data_parallel_size"] == 2 and "enforce_eager" not in args
    assert args["max_model_len"] == 4096 and args["seed"] == 7
    line = command_line("vllm", args, ["heldout_perplexity"], tmp_path, cfg, 50)
    assert "tensor_parallel_size=4" in line and "data_parallel_size=2" in line and "--limit 50" in line
    hf = engine_args("hf", tmp_path, cfg, cpu=True)
    assert hf["max_length"] == 4094  # vLLM scores windows of max_model_len - 2; hf must match


def test_unknown_task_lists_close_matches():
    with pytest.raises(ConfigError) as info:
        check_task_names(["gsm8k_lokal", "heldout_perplexity", "zzzz"], ["gsm8k", "gsm8k_local", "heldout_perplexity"])
    assert info.value.lines() == [
        "eval.tasks[0]: unknown lm-eval task 'gsm8k_lokal' (close: gsm8k_local, gsm8k)",
        "eval.tasks[2]: unknown lm-eval task 'zzzz' (built-in offline tasks: heldout_perplexity, gsm8k_local)"]


def test_heldout_task_is_a_rolling_loglikelihood_task(tmp_path):
    task = heldout_task(tmp_path / "heldout.jsonl")
    assert task["output_type"] == "loglikelihood_rolling" and task["dataset_path"] == "json"
    assert [m["metric"] for m in task["metric_list"]] == ["word_perplexity", "byte_perplexity", "bits_per_byte"]


# --- end to end, real vLLM and lm-eval in the serve environment ------------------------------------------

@pytest.fixture(scope="module")
def evaluated(tiny_llama_dir, tmp_path_factory):
    """A project with the tiny model and an FP8 variant, evaluated by dvc (the gate-failing variant is in
    test_demo.py: on a random model nothing that vLLM's CPU kernels load degrades enough to be "broken")."""
    project = make_project(tmp_path_factory.mktemp("eval-project") / "project")
    write_params(project / "params.yaml", base={"source": str(tiny_llama_dir)},
                 calibration={"n_samples": 16, "seq_len": 128, "heldout_max_chars": 6000},
                 sensitivity={"n_samples": 2, "seq_len": 64, "layer_kl": False},
                 variants={"fp8-dynamic": {"method": "fp8"}},
                 eval={"tasks": ["heldout_perplexity", "gsm8k_local"], "limit": 2, "max_model_len": 1024,
                       "perplexity_windows": 2},
                 card={"base_model": None, "license": "apache-2.0"})  # a random model: no Hub id, no license
    result = dvc(project, "repro", "gate@fp8-dynamic", check=False)  # the shipped gate policy
    return project, result


@pytest.mark.slow
def test_metrics_exist_are_finite_and_fp8_recovers(evaluated):
    """FP8 runs in vLLM where this CPU's FP8 GEMM is fast; where oneDNN serves it with its reference kernel
    (fp8_gemm_gflops below the threshold: vLLM's engine would time out), the variant and its baseline are
    measured by the transformers fallback instead, and the records and the card say so."""
    from quantbuild.evaluate._kernels import FP8_MIN_GFLOPS, fp8_gemm_gflops

    project, result = evaluated
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fp8_in_vllm = (fp8_gemm_gflops() or 0) >= FP8_MIN_GFLOPS
    base = json.loads((project / "build/eval/base/metrics.json").read_text())
    fp8 = json.loads((project / "build/eval/fp8-dynamic/metrics.json").read_text())
    quality = ("quality.heldout_perplexity.word_perplexity", "quality.heldout_perplexity.bits_per_byte",
               "quality.gsm8k_local.exact_match", "size.disk_gb",
               *(f"quality.ppl.{d}.{m}" for d in ("lee-news", "wikipedia", "pydoc-topics")
                 for m in ("token_perplexity", "word_perplexity", "bits_per_byte")))
    speed = ("speed.c1.output_tokens_per_s", "speed.c32.batch_ttft_s")
    for metrics, engine in ((base, "vllm"), (fp8, "vllm" if fp8_in_vllm else "hf")):
        for key in quality + (speed if engine == "vllm" else ()):
            assert math.isfinite(metrics[key]), key
        assert metrics["eval.engine"] == engine and metrics["eval.dtype"] in ("float32", "bfloat16")
        if engine == "vllm":  # other processes' share of the CPUs while throughput was measured
            assert 0 <= metrics["speed.other_cpu_use"] <= 1
    gate = json.loads((project / "build/gate/fp8-dynamic/gate.json").read_text())
    assert 0.97 <= gate["recoveries"]["heldout_perplexity.bits_per_byte"]["recovery"] <= 1.03
    # Each domain's change comes with its 95 % interval over the windows, around the change the recovery
    # implies; the gate record says of each gated perplexity whether the interval settles its verdict.
    for d in ("lee-news", "wikipedia", "pydoc-topics"):
        key = f"change.ppl.{d}.token_perplexity_pct"
        implied = 100 * (1 / gate["recoveries"][f"ppl.{d}.token_perplexity"]["recovery"] - 1)
        assert fp8[key] == pytest.approx(implied, abs=0.01)
        assert fp8[key + "_ci95_low"] <= fp8[key] <= fp8[key + "_ci95_high"]
    assert {r["metric"] for r in gate["resolution"]} == set(gate["thresholds"]) - {"top1_agreement"}
    assert all(isinstance(r["settled"], bool) for r in gate["resolution"])
    assert fp8["closeness.top1_agreement"] >= 0.95 and gate["passed"] is True, gate["failures"]
    calibration = yaml.safe_load((project / "params.yaml").read_text())["calibration"]
    domains = [s["uri"].removeprefix("builtin://") for s in calibration["sources"] + calibration["heldout_sources"]]
    assert len(domains) == 4 and set(gate["thresholds"]) == {f"ppl.{d}.token_perplexity" for d in domains}
    raw = json.loads((project / "build/eval/fp8-dynamic/results/lm_eval.json").read_text())
    engine = "vllm" if fp8_in_vllm else "hf"
    assert "heldout_perplexity" in raw["results"] and raw["quantbuild"]["commands"][0].startswith(f"lm_eval --model {engine}")
    # The recorded command must work after the stage ends: it names the final tasks folder, not staging.
    assert all("--include_path build/eval/" in c and ".tmp-" not in c for c in raw["quantbuild"]["commands"])
    assert raw["quantbuild"]["versions"]["vllm"].endswith("+cpu")
    base_raw = json.loads((project / "build/eval/base/results/lm_eval.json").read_text())
    assert base_raw["quantbuild"]["engine_in_process"] is True  # one process on a CPU: every core, one import
    dvc(project, "repro", "card@fp8-dynamic")
    card = (project / "build/cards/fp8-dynamic/README.md").read_text()
    if fp8_in_vllm:  # the card renders vLLM's throughput with the hardware it ran on
        assert f"| 32 | {base['speed.c32.output_tokens_per_s']:.4g} | {fp8['speed.c32.output_tokens_per_s']:.4g} |" in card
        assert "Generation throughput in vLLM 0.32.0+cpu" in card and "no prefix-cache hits" in card
    else:
        assert "reference kernel" in fp8["eval.fallback"] and fp8["eval.fallback"] in card
        # transformers quantizes the activations of all 14 Linear layers per token, as vLLM would
        assert fp8["eval.activation_quantized_modules"] == 14
        assert gate["provenance"]["fallback"]
    assert "no calibration (data-free method)" in card
    plots = dvc(project, "plots", "show", "--json")
    assert "pareto" in plots.stdout and "throughput" in plots.stdout
    diff = dvc(project, "metrics", "show", "--json")
    assert "build/eval/fp8-dynamic/metrics.json" in diff.stdout


@pytest.mark.slow
def test_stage_errors_are_one_line(evaluated):
    project, _ = evaluated
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["eval"]["tasks"] = ["heldout_perplexity", "gsm8k_lokal"]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([str(VENV_BIN / "quantbuild"), "stage", "evaluate", "base"], cwd=project, capture_output=True,
                         text=True)
    errors = [l for l in run.stderr.splitlines() if l.startswith("error:")]
    assert run.returncode == 2 and len(errors) == 1, run.stderr[-2000:]
    assert errors[0].startswith("error: eval.tasks[1]: unknown lm-eval task 'gsm8k_lokal' (close: gsm8k_local, ")
    run = subprocess.run([str(VENV_BIN / "quantbuild"), "stage", "evaluate", "nope"], cwd=project, capture_output=True,
                         text=True)
    assert run.returncode == 2 and "error: variants.nope: no such variant" in run.stderr
    params["eval"]["tasks"] = ["heldout_perplexity"]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    import shutil
    shutil.rmtree(project / "build/variants/fp8-dynamic/model")
    run = subprocess.run([str(VENV_BIN / "quantbuild"), "stage", "evaluate", "fp8-dynamic"], cwd=project,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "error: evaluate@fp8-dynamic: no model at build/variants/fp8-dynamic/model " \
                                   "(run dvc repro quantize@fp8-dynamic first)" in run.stderr


@pytest.mark.slow
def test_vllm_and_hf_engines_agree_within_a_tenth_of_a_percent(evaluated, tmp_path):
    """Same model, same held-out task, both engines at float32 (no bf16 kernel rounding between them):
    every perplexity metric within 0.1%. (At bfloat16, tests/test_demo.py allows the measured gap.)"""
    project, result = evaluated
    assert result.returncode == 0
    code = ("import json, sys\n"
            "from pathlib import Path\n"
            "from quantbuild.config import load_params\n"
            "from quantbuild.evaluate._run import evaluate_model\n"
            "if __name__ == '__main__':\n"
            "    out = {}\n"
            "    for engine in ('vllm', 'hf'):\n"
            "        cfg = load_params('params.yaml').eval\n"
            "        cfg.engine, cfg.tasks, cfg.dtype = engine, ['heldout_perplexity'], 'float32'\n"
            "        d = Path(sys.argv[1]) / engine\n"
            "        out[engine] = evaluate_model(cfg, 'base', Path('build/base/model'),\n"
            "            Path('build/calibration/heldout.jsonl'), d / 'results', d / 'metrics.json', d / 'plots')\n"
            "    print('ENGINES-JSON', json.dumps(out))\n")
    run = subprocess.run([str(project / ".venvs/serve/bin/python"), "-c", code, str(tmp_path)], cwd=project,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads([l for l in run.stdout.splitlines() if l.startswith("ENGINES-JSON")][0][len("ENGINES-JSON "):])
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        key = f"quality.heldout_perplexity.{metric}"
        assert out["hf"][key] == pytest.approx(out["vllm"][key], rel=1e-3), (metric, out["hf"][key], out["vllm"][key])
    for key in (k for k in out["vllm"] if k.startswith("quality.ppl.")):
        assert out["hf"][key] == pytest.approx(out["vllm"][key], rel=1e-3), (key, out["hf"][key], out["vllm"][key])


@pytest.mark.slow
def test_a_format_vllm_cannot_run_here_falls_back_to_transformers_like_with_like(evaluated):
    """W4A16 in float32: vLLM's CPU W4A16 kernel takes bf16/fp16 only, so the fallback is forced on any CPU
    by computing in float32. The variant and the baseline are then both measured with transformers."""
    project, _ = evaluated
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["eval"]["tasks"] = ["gsm8k_local"]
    params["variants"]["w4"] = {"method": "gptq", "backend": "llmcompressor", "group_size": 64, "sym": False,
                                "n_samples": 4}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"QUANTBUILD_COMPUTE_DTYPE": "float32"}
    result = dvc(project, "repro", "gate@w4", check=False, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "falling back to transformers" in result.stdout + result.stderr
    metrics = json.loads((project / "build/eval/w4/metrics.json").read_text())
    assert metrics["eval.engine"] == "hf" and "cpu_gemm_wna16" in metrics["eval.fallback"]
    assert metrics["eval.activation_quantized_modules"] == 0  # weight-only: activations stay as they are
    assert "baseline.quality.ppl.lee-news.token_perplexity" in metrics
    gate = json.loads((project / "build/gate/w4/gate.json").read_text())
    assert gate["provenance"]["fallback"] and gate["provenance"]["baseline"].startswith("measured with the variant")
    base_hf = metrics["baseline.quality.ppl.lee-news.token_perplexity"]
    assert gate["recoveries"]["ppl.lee-news.token_perplexity"]["base"] == base_hf
    # eval.fallback: refuse stops with one line naming the cause, before any engine starts
    params["eval"]["fallback"] = "refuse"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = subprocess.run([str(VENV_BIN / "quantbuild"), "stage", "evaluate", "w4"], cwd=project,
                         capture_output=True, text=True, env={**os.environ, **env})
    errors = [l for l in run.stderr.splitlines() if l.startswith("error:")]
    assert run.returncode == 2 and len(errors) == 1 and "cpu_gemm_wna16" in errors[0], run.stderr[-2000:]
