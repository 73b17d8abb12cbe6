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
    """The seed's table: FP16 4 x A100 80GB, INT8/FP8 2 x, AWQ/GPTQ 1 x (vLLM's own parts counted per GPU)."""
    _, rows = plan(LLAMA_70B, context=8192, batch=1, gpu_memory_gb=80)
    by = {r.precision: r for r in rows}
    assert by["bf16"].weights_gb == pytest.approx(140, rel=0.03)                              # FP16 ~140 GB
    # two GPUs hold the weights (70.5 GB each of a 72 GB budget) but not vLLM's activations, CUDA
    # context and graphs beside them: the next valid size, 4 (64 heads, 8 KV heads), is what serves it
    assert by["bf16"].gpus == 4 and by["bf16"].spare_gb > 20
    assert by["fp8"].weights_gb == pytest.approx(72, rel=0.05) and by["fp8"].gpus == 2        # INT8/FP8 -> 2 x 80
    assert by["int8"].weights_gb == by["fp8"].weights_gb
    # 4-bit: ~35 GB of packed weights; embeddings/lm_head stay bf16 (+4.2 GB) and scales add 20/128 bit.
    assert 35 <= by["w4 (g128)"].weights_gb <= 41 and by["w4 (g128)"].gpus == 1               # -> 1 x 80
    assert by["bf16"].kv_cache_gb == pytest.approx(2 * 80 * 8 * 128 * 2 * 8192 / 1e9, rel=0.01)
    for row in rows:  # the chosen size really fits, the one below it does not
        assert row.per_gpu_gb + row.spare_gb == pytest.approx(72, abs=0.02) and row.spare_gb >= 0


def test_gpu_counts_divide_the_attention_heads():
    """A model whose memory alone asks for 3 GPUs gets 4: vLLM refuses a tensor-parallel size that does
    not divide the attention heads."""
    from quantbuild.evaluate.planner import per_gpu_gb, valid_tensor_parallel

    config = dict(LLAMA_70B, num_attention_heads=64, num_key_value_heads=8)
    shape, rows = plan(config, context=8192, batch=1, gpu_memory_gb=60)
    bf16 = rows[0]
    assert per_gpu_gb(shape, bf16.weights_gb, bf16.kv_cache_gb, 3) <= 60 * 0.9  # 3 would fit by memory...
    assert not valid_tensor_parallel(shape, 3) and bf16.gpus == 4             # ...but is not a valid size
    assert valid_tensor_parallel(shape, 16) and not valid_tensor_parallel(shape, 12)
    # past the KV heads they are replicated: each GPU keeps one KV head's cache, not 1/size of it
    kv_only = per_gpu_gb(shape, 0.0, 8.0, 16) - per_gpu_gb(shape, 0.0, 0.0, 16)
    assert kv_only == pytest.approx(8.0 / 8)
    _, huge = plan(dict(LLAMA_70B, num_hidden_layers=800), gpu_memory_gb=24, max_gpus=8)
    assert huge[0].gpus is None  # does not fit in 8: said, not rounded down


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
    assert [l.split()[0] for l in lines[2:6]] == ["bf16", "fp8", "int8", "w4"]
    assert [l.split()[-3] for l in lines[2:6]] == ["4", "2", "2", "1"]  # GPUs column
