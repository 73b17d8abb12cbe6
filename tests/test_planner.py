"""The memory planner against the seed's table (Llama-70B) and on real configs."""

from __future__ import annotations

import json

import pytest

from quantbuild.evaluate.planner import plan, shape_from_config

from .conftest import run_cli

LLAMA_70B = {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
             "intermediate_size": 28672, "vocab_size": 128256, "tie_word_embeddings": False}
LLAMA_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False}


def test_parameter_counts_match_the_published_models():
    assert shape_from_config(LLAMA_70B).params == pytest.approx(70.55e9, rel=0.002)
    assert shape_from_config(LLAMA_8B).params == pytest.approx(8.03e9, rel=0.002)


def test_seed_table_for_70b():
    _, rows = plan(LLAMA_70B, context=8192, batch=1, gpu_memory_gb=80)
    by = {r.precision: r for r in rows}
    assert by["bf16"].weights_gb == pytest.approx(140, rel=0.03) and by["bf16"].gpus == 2   # FP16 ~140 GB -> 2 x 80
    assert by["fp8"].weights_gb == pytest.approx(70, rel=0.05)                                # INT8/FP8 ~70 GB
    assert by["int8"].weights_gb == by["fp8"].weights_gb
    # 4-bit: ~35 GB of packed weights; embeddings/lm_head stay bf16 (+4.2 GB) and scales add 20/128 bit.
    assert 35 <= by["w4 (g128)"].weights_gb <= 41 and by["w4 (g128)"].gpus == 1               # -> 1 x 80
    assert by["bf16"].kv_cache_gb == pytest.approx(2 * 80 * 8 * 128 * 2 * 8192 / 1e9, rel=0.01)


def test_kv_cache_scales_with_context_batch_and_dtype():
    _, short = plan(LLAMA_8B, context=4096, batch=1)
    _, long = plan(LLAMA_8B, context=4096, batch=32)
    _, fp8 = plan(LLAMA_8B, context=4096, batch=32, kv_dtype="fp8")
    assert long[0].kv_cache_gb == pytest.approx(32 * short[0].kv_cache_gb, rel=0.01)
    assert fp8[0].kv_cache_gb == pytest.approx(long[0].kv_cache_gb / 2, rel=0.01)
    assert long[0].gpus >= 1 and long[0].total_gb > short[0].total_gb


def test_plan_cli_prints_the_table(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_70B))
    result = run_cli("plan", str(tmp_path), "--context", "8192")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("70.55 B parameters, 80 layers")
    assert [l.split()[0] for l in lines[2:]] == ["bf16", "fp8", "int8", "w4"]
    assert lines[2].split()[-1] == "2" and lines[5].split()[-1] == "1"
