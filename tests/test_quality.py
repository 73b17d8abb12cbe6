"""The quality engine: formats, sensitivity, method auto, mixed precision and selection."""

from __future__ import annotations

import json
import re

import pytest

from quantbuild._formats import FORMATS, measured_bits_per_weight, targets_regex, unit_of
from quantbuild.errors import ConfigError
from quantbuild.quantize._auto import assign

from .conftest import REPO_ROOT, build_tiny_llama


def _shapes(layers: int = 4, hidden: int = 128, inter: int = 256) -> dict[str, list[int]]:
    shapes = {}
    for i in range(layers):
        for m, s in (("self_attn.q_proj", [hidden, hidden]), ("self_attn.k_proj", [64, hidden]),
                     ("self_attn.v_proj", [64, hidden]), ("self_attn.o_proj", [hidden, hidden]),
                     ("mlp.gate_proj", [inter, hidden]), ("mlp.up_proj", [inter, hidden]),
                     ("mlp.down_proj", [hidden, inter])):
            shapes[f"model.layers.{i}.{m}.weight"] = s
    shapes["model.embed_tokens.weight"] = [1000, hidden]
    return shapes


def _scores(shapes, hot: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    units = {unit_of(k[:-7]) for k in shapes if ".layers." in k}
    return {u: {"w4a16-g64-asym": (hot or {}).get(u, 0.01), "w8a8": 0.001} for u in units}


def test_bits_per_weight_formula():
    assert FORMATS["w4a16-g64-asym"].bits_per_weight(576) == pytest.approx(4 + 20 / 64)
    assert FORMATS["w4a16-g64"].bits_per_weight(576) == pytest.approx(4.25)
    assert FORMATS["w8a8"].bits_per_weight(576) == pytest.approx(8 + 16 / 576)
    assert FORMATS["bf16"].bits_per_weight(576) == 16


def test_targets_regex_names_exactly_the_modules():
    modules = ["model.layers.3.mlp.down_proj", "model.layers.11.mlp.down_proj", "model.layers.2.self_attn.q_proj"]
    patterns = [p[3:] for p in targets_regex(modules)]
    everything = [f"model.layers.{i}.{m}" for i in range(30) for m in ("mlp.down_proj", "self_attn.q_proj", "mlp.up_proj")]
    hit = [m for m in everything if any(re.match(p, m) for p in patterns)]
    assert sorted(hit) == sorted(modules)


def test_auto_respects_the_budget_exactly_and_spends_it_on_the_most_sensitive():
    shapes = _shapes()
    hot = {"model.layers.2.mlp.down_proj": 5.0, "model.layers.0.self_attn.qkv": 3.0}
    result = assign(_scores(shapes, hot), ["w4a16-g64-asym", "w8a8"], 4.6, shapes, [], "variants.a")
    assert result["bits_per_weight"] <= 4.6
    assert result["assignment"]["model.layers.2.mlp.down_proj"] == "w8a8"
    assert set(result["upgraded_units"]) <= set(hot)
    tight = assign(_scores(shapes, hot), ["w4a16-g64-asym", "w8a8"], 4.32, shapes, [], "variants.a")
    assert tight["upgraded_units"] == {} and tight["bits_per_weight"] == pytest.approx(4.3125)
    loose = assign(_scores(shapes, hot), ["w4a16-g64-asym", "w8a8"], 5.5, shapes, [], "variants.a")
    assert len(loose["upgraded_units"]) > len(result["upgraded_units"]) and loose["bits_per_weight"] <= 5.5
    # fused modules share one format (vLLM runs q/k/v as one layer)
    fused = {result["assignment"][f"model.layers.0.self_attn.{m}"] for m in ("q_proj", "k_proj", "v_proj")}
    assert len(fused) == 1


def test_auto_refuses_a_budget_below_the_smallest_format():
    shapes = _shapes()
    with pytest.raises(ConfigError) as info:
        assign(_scores(shapes), ["w4a16-g64-asym", "w8a8"], 4.0, shapes, [], "variants.a")
    assert info.value.lines()[0].startswith("variants.a.max_bits_per_weight: 4.0 is below the smallest assignment")


def test_auto_refuses_a_quality_target_no_assignment_can_meet():
    shapes = _shapes()
    with pytest.raises(ConfigError) as info:
        assign(_scores(shapes), ["w4a16-g64-asym", "w8a8"], 4.5, shapes, [], "variants.a", max_predicted_kl=1e-6)
    assert "cannot be met by any assignment" in info.value.lines()[0]
    with pytest.raises(ConfigError) as info:  # reachable at 8 bits, not within 4.5
        assign(_scores(shapes), ["w4a16-g64-asym", "w8a8"], 4.5, shapes, [], "variants.a", max_predicted_kl=0.05)
    assert "needs more than max_bits_per_weight 4.5" in info.value.lines()[0]


def test_sensitivity_ranks_a_damaged_module_first(tmp_path, smollm_tokenizer_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from quantbuild._sensitivity import score_modules

    model_dir = build_tiny_llama(tmp_path / "m", smollm_tokenizer_dir, layers=3)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    mlp = model.model.layers[1].mlp
    with torch.no_grad():  # the same function, but three huge weights widen their groups' 4-bit grid 100-fold
        for j in (5, 77, 150):
            mlp.up_proj.weight[j] /= 100.0
            mlp.down_proj.weight[:, j] *= 100.0
    batches = [torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    scores, tokens = score_modules(model, batches, [FORMATS["w4a16-g64-asym"], FORMATS["w8a8"]], seed=0)
    ranked = sorted(scores, key=lambda m: -scores[m]["w4a16-g64-asym"])
    assert ranked[0] == "model.layers.1.mlp.down_proj", ranked[:3]
    assert tokens == 3 * 63
    assert all(s["w8a8"] < s["w4a16-g64-asym"] for s in scores.values())


def test_selection_follows_the_policy(tmp_path):
    from quantbuild._select import select

    def gate(name, bits, recovery, passed):
        folder = tmp_path / "gate" / name
        folder.mkdir(parents=True)
        (folder / "gate.json").write_text(json.dumps({
            "passed": passed, "bits_per_weight": bits, "failures": [] if passed else [{"metric": "m"}],
            "thresholds": {"m": 0.9}, "recoveries": {"m": {"recovery": recovery}}}))

    gate("w4", 4.3, 0.91, True)
    gate("w8", 8.0, 0.99, True)
    gate("bad", 4.2, 0.5, False)
    record = select(["w4", "w8", "bad"], tmp_path / "gate", tmp_path / "sel")
    assert record["recommended"] == "w4" and set(record["frontier"]) == {"bad", "w4", "w8"}
    (tmp_path / "gate/w4/gate.json").write_text(json.dumps({  # a stricter policy: w4 now fails
        "passed": False, "bits_per_weight": 4.3, "failures": [{"metric": "m"}], "thresholds": {"m": 0.95},
        "recoveries": {"m": {"recovery": 0.91}}}))
    assert select(["w4", "w8", "bad"], tmp_path / "gate", tmp_path / "sel2")["recommended"] == "w8"
    # a pass whose interval over the held-out windows reaches past the limit is still recommended, and said so
    record = json.loads((tmp_path / "gate/w8/gate.json").read_text())
    record["resolution"] = [{"metric": "m", "settled": False}]
    (tmp_path / "gate/w8/gate.json").write_text(json.dumps(record))
    sel = select(["w4", "w8", "bad"], tmp_path / "gate", tmp_path / "sel3")
    assert sel["recommended"] == "w8" and "on m the held-out windows' 95 % interval reaches past the limit" in sel["reason"]


@pytest.mark.parametrize("variant,line", [
    ({"method": "auto"}, "variants.a.max_bits_per_weight: is required for method auto"),
    ({"method": "auto", "max_bits_per_weight": 1.5}, "variants.a.max_bits_per_weight: 1.5 must be between 2 and 16"),
    ({"method": "gptq", "backend": "llmcompressor", "observer": "mse2"}, "variants.a.observer: unknown observer 'mse2'"),
    ({"method": "gptq", "observer": "mse"}, "variants.a.observer: observers are llmcompressor's"),
    ({"method": "gptq", "backend": "llmcompressor", "formats": {"layers\\.1\\.": "w6a16"}},
     "variants.a.formats.layers\\.1\\.: unknown format 'w6a16'"),
    ({"method": "auto", "max_bits_per_weight": 4.5, "candidates": ["w4a16-g64-asym", "w4a16-g32"]},
     "variants.a.candidates: w4a16-g32 is not scored by the sensitivity stage"),
    ({"method": "fp8", "transforms": ["awq"]}, "variants.a.transforms: transforms run before GPTQ or AutoRound in llmcompressor"),
    ({"method": "gptq", "backend": "llmcompressor", "transforms": ["awq", "spinquant"]},
     "variants.a.transforms: awq and spinquant do not stack"),
    ({"method": "gptq", "backend": "llmcompressor", "transforms": ["rotate"]}, "variants.a.transforms[0]: unknown transform"),
    ({"method": "awq", "smooth_down_proj": True}, "variants.a.smooth_down_proj: is a SmoothQuant mapping for method int8"),
    ({"method": "gptq", "iters": 100}, "variants.a.iters: tuning steps apply to method autoround only"),
    ({"method": "autoround", "iters": 0}, "variants.a.iters: 0 must be positive"),
    ({"method": "autoround", "damp_percent": 0.1}, "variants.a.damp_percent: is GPTQ's Hessian dampening"),
    ({"method": "autoround", "observer": "mse"}, "variants.a.observer: autoround tunes its own clipping ranges"),
    ({"method": "autoround", "bits": 8}, "variants.a.bits: autoround cannot do 8-bit"),
    ({"method": "autoround", "weights_device": "disk"}, "variants.a.weights_device: autoround tunes each layer in memory"),
    ({"method": "autoround", "formats": {"layers\\.1\\.": "w8a8"}}, "variants.a.formats: per-module formats need method gptq"),
    # keys a method would otherwise take and ignore
    ({"method": "fp8", "observer": "mse"}, "variants.a.observer: observers size 4-bit weights"),
    ({"method": "int8", "observer": "mse"}, "variants.a.observer: observers size 4-bit weights"),
    ({"method": "int8", "group_size": 64}, "variants.a.group_size: int8 scales weights per output channel"),
    ({"method": "awq", "damp_percent": 0.1}, "variants.a.damp_percent: is GPTQ's Hessian dampening; awq has none"),
    ({"method": "fp8", "damp_percent": 0.1}, "variants.a.damp_percent: is GPTQ's Hessian dampening; fp8 has none"),
    ({"method": "fp8", "n_samples": 64}, "variants.a.n_samples: fp8 dynamic reads no calibration data"),
    ({"method": "fp8", "batch_size": 4}, "variants.a.batch_size: fp8 dynamic reads no calibration data"),
])
def test_quality_levers_bad_inputs_are_one_line_errors(variant, line):
    import yaml

    from quantbuild.config import parse_params

    data = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    data["variants"] = {"a": variant}
    with pytest.raises(ConfigError) as info:
        parse_params(data)
    assert any(l.startswith(line) for l in info.value.lines()), info.value.lines()


def test_measured_bits_per_weight_counts_every_stored_byte(tmp_path):
    from safetensors.torch import save_file
    import torch

    base = {"model.layers.0.mlp.down_proj.weight": [64, 128]}
    save_file({"model.layers.0.mlp.down_proj.weight_packed": torch.zeros(64, 16, dtype=torch.int32),
               "model.layers.0.mlp.down_proj.weight_scale": torch.zeros(64, 2, dtype=torch.bfloat16),
               "model.layers.0.mlp.down_proj.weight_zero_point": torch.zeros(8, 2, dtype=torch.int32),
               "model.embed_tokens.weight": torch.zeros(10, 128)}, tmp_path / "model.safetensors")
    got = measured_bits_per_weight(tmp_path, base)
    assert got["linear_stored_bytes"] == 64 * 16 * 4 + 64 * 2 * 2 + 8 * 2 * 4
    assert got["bits_per_weight"] == pytest.approx(got["linear_stored_bytes"] * 8 / (64 * 128), abs=1e-4)
