"""Bad input, every kind a user can give: a one-line error naming the field and the fix, a non-zero exit,
no traceback, and nothing written. The cases are the list the release-safety issue asks for."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from .conftest import REPO_ROOT, run_cli

DEMO = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def _with(path: str, value) -> dict:
    data = json.loads(json.dumps(DEMO))
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return data


def _variant(v: dict) -> dict:
    data = json.loads(json.dumps(DEMO))
    data["variants"] = {"v": v}
    return data


PARAMS_CASES = {
    # variants: names, methods, formats and levers
    "variant named like a stage output": (_with("variants", {"base": {"method": "fp8"}}), "variants.base: 'base' names a pipeline output"),
    "variant name with a path": (_with("variants", {"../x": {"method": "fp8"}}), "variants.../x: variant names must be"),
    "variant name with a slash": (_with("variants", {"a/b": {"method": "fp8"}}), "variants.a/b: variant names must be"),
    "variant name upper case": (_with("variants", {"Big": {"method": "fp8"}}), "variants.Big: variant names must be"),
    "unknown method": (_variant({"method": "gptk"}), "variants.v.method: 'gptk' must be one of"),
    "unknown backend": (_variant({"method": "gptq", "backend": "exllama"}), "variants.v.backend: 'exllama' cannot run gptq"),
    "bad bits": (_variant({"method": "awq", "bits": 3}), "variants.v.bits: awq cannot do 3-bit"),
    "bad group size": (_variant({"method": "gptq", "group_size": 100}), "variants.v.group_size: 100 is not supported"),
    "group size not dividing 576": (_variant({"method": "gptq", "group_size": 128}), "variants.v.group_size: 128 must divide"),
    "unknown observer": (_variant({"method": "gptq", "backend": "llmcompressor", "observer": "best"}), "variants.v.observer: unknown observer"),
    "unknown format": (_variant({"method": "gptq", "backend": "llmcompressor", "formats": {"x": "w3a16"}}), "variants.v.formats.x: unknown format"),
    "bad format regex": (_variant({"method": "gptq", "backend": "llmcompressor", "formats": {"(": "w8a8"}}), "variants.v.formats.(: is not a valid regular expression"),
    "auto without a budget": (_variant({"method": "auto"}), "variants.v.max_bits_per_weight: is required"),
    "auto budget too low to exist": (_variant({"method": "auto", "max_bits_per_weight": 1.0}), "variants.v.max_bits_per_weight: 1.0 must be between 2 and 16"),
    "auto candidate not scored": (_variant({"method": "auto", "max_bits_per_weight": 4.5, "candidates": ["w4a16-g32"]}), "variants.v.candidates: w4a16-g32 is not scored"),
    "budget on a fixed method": (_variant({"method": "fp8", "max_bits_per_weight": 8}), "variants.v.max_bits_per_weight: applies to method auto only"),
    "transforms on fp8": (_variant({"method": "fp8", "transforms": ["spinquant"]}), "variants.v.transforms: transforms run before GPTQ"),
    "smooth_down_proj on gptq": (_variant({"method": "gptq", "smooth_down_proj": True}), "variants.v.smooth_down_proj: is a SmoothQuant mapping"),
    "rounding on gptq": (_variant({"method": "gptq", "rounding": "rtn"}), "variants.v.rounding: chooses how method int8 rounds"),
    "unknown rounding": (_variant({"method": "int8", "rounding": "rnt"}), "variants.v.rounding: unknown rounding 'rnt' (did you mean 'rtn'?)"),
    "dampening without gptq rounding": (_variant({"method": "int8", "rounding": "rtn", "damp_percent": 0.1}), "variants.v.damp_percent: dampens GPTQ's Hessian"),
    "bad keep regex": (_variant({"method": "fp8", "keep": ["["]}), "variants.v.keep[0]: '[' is not a valid regular expression"),
    "string for n_samples": (_variant({"method": "gptq", "n_samples": "many"}), "variants.v.n_samples:"),
    "negative n_samples": (_variant({"method": "gptq", "n_samples": -4}), "variants.v.n_samples: -4 must be positive"),
    # seeds and sizes
    "seed too large": (_with("calibration.seed", 2**40), "calibration.seed: 1099511627776 must be between 0 and 2**32 - 1"),
    "negative seed": (_with("calibration.seed", -1), "calibration.seed: -1 must be between 0"),
    "eval seed too large": (_with("eval.seed", 2**64), "eval.seed: 18446744073709551616 must be between 0 and 2**32 - 1"),
    "sensitivity seed too large": (_with("sensitivity.seed", 2**33), "sensitivity.seed: 8589934592 must be between 0"),
    "sensitivity unknown format": (_with("sensitivity.formats", ["w2a16"]), "sensitivity.formats[0]: unknown format 'w2a16'"),
    "seq_len too short": (_with("calibration.seq_len", 4), "calibration.seq_len: 4 is too short"),
    "heldout share out of range": (_with("calibration.heldout_share", 1.5), "calibration.heldout_share: 1.5 must be above 0"),
    "two sources one domain": (_with("calibration.heldout_sources", [{"uri": "builtin://lee-news"}]), "calibration.heldout_sources: two sources share the domain name 'lee-news'"),
    "unknown builtin text": (_with("calibration.sources", [{"uri": "builtin://lee"}]), "calibration.sources[0].uri: unknown built-in text 'lee'"),
    # the gate
    "gate threshold above 2": (_with("eval.gate.metrics", {"ppl.*.token_perplexity": 3}), "eval.gate.metrics.ppl.*.token_perplexity: 3.0 must be in (0, 2]"),
    "gate threshold as text": (_with("eval.gate.metrics", {"ppl.*.token_perplexity": "high"}), "eval.gate.metrics.ppl.*.token_perplexity:"),
    "gate metric nobody measures": (_with("eval.gate.metrics", {"heldout_perplexity.bits_per_byte": 0.9}), "eval.gate.metrics.heldout_perplexity.bits_per_byte: no task produces this metric"),
    "gate glob that matches nothing": (_with("eval.gate.metrics", {"ppl.*.token_perplexty": 0.9}), "eval.gate.metrics.ppl.*.token_perplexty: no task produces this metric"),
    "gate for an unknown method": (_with("eval.gate.methods", {"fp4": {"x": 0.9}}), "eval.gate.methods.fp4: unknown method"),
    "gate for an unknown variant": (_with("eval.gate.variants", {"nope": {"x": 0.9}}), "eval.gate.variants.nope: no such variant"),
    # other sections
    "bad eval engine": (_with("eval.engine", "tensorrt"), "eval.engine: 'tensorrt' must be one of"),
    "bad eval fallback": (_with("eval.fallback", "ignore"), "eval.fallback: 'ignore' must be one of"),
    "bad publish version": (_with("publish.version", "1.0"), "publish.version: '1.0' must look like v1.2.3"),
    "publish without namespace": (_with("publish.enabled", True), "publish.namespace: is required when publish.enabled"),
    "hub source without revision": (_with("base.source", "hf://org/model"), "base.revision: is required for hf:// sources"),
    "unknown source scheme": (_with("base.source", "s3://bucket/model"), "base.source: unknown scheme 's3://'"),
    "unknown key": (_with("calibration.n_sample", 3), "calibration.n_sample: unknown key (did you mean 'n_samples'?)"),
    "card base model with a path": (_with("card.base_model", "../../etc"), "card.base_model: '../../etc' must be a Hub id"),
}


def _assert_one_line_error(result, expected: str, project: Path) -> None:
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert errors and any(l.startswith("error: " + expected) for l in errors), result.stderr[-1500:]
    assert not [p for p in (project / "build").rglob("*") if p.is_file()], "something was written"


@pytest.mark.parametrize("case", list(PARAMS_CASES))
def test_bad_params(case, tmp_path):
    data, expected = PARAMS_CASES[case]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_cli("check", "--params", str(tmp_path / "params.yaml"), "--model-dir", str(tmp_path / "none"),
                     cwd=tmp_path)
    if case == "group size not dividing 576":  # needs the model's shapes: give the demo model's config
        (tmp_path / "m").mkdir()
        from .test_config import SMOLLM_CONFIG

        (tmp_path / "m/config.json").write_text(json.dumps(SMOLLM_CONFIG))
        result = run_cli("check", "--params", str(tmp_path / "params.yaml"), "--model-dir", str(tmp_path / "m"),
                         cwd=tmp_path)
    _assert_one_line_error(result, expected, tmp_path)


RAW_PARAMS = {
    "binary params file": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "params.yaml: is not UTF-8 text"),
    "NUL bytes in params": (b"base:\n  source: x\x00\n", "params.yaml: contains NUL bytes"),
    "duplicate key": (b"base:\n  source: a\nbase:\n  source: b\n", "params.yaml: line 3: invalid YAML: duplicate key 'base'"),
    "nested duplicate key": (b"base:\n  source: a\n  source: b\n", "params.yaml: line 3: invalid YAML: duplicate key 'source'"),
    "not a mapping": (b"- just\n- a list\n", "params.yaml: must be a mapping"),
    "broken yaml": (b"base: [unclosed\n", "params.yaml: line"),
}


@pytest.mark.parametrize("case", list(RAW_PARAMS))
def test_bad_params_files(case, tmp_path):
    raw, expected = RAW_PARAMS[case]
    (tmp_path / "params.yaml").write_bytes(raw)
    result = run_cli("check", cwd=tmp_path)
    _assert_one_line_error(result, expected, tmp_path)


def _local_model(tmp_path: Path, tiny_llama_dir: Path) -> Path:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    return folder


def _corrupt(kind: str, folder: Path) -> None:
    weights = folder / "model.safetensors"
    if kind == "truncated safetensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "garbage safetensors":
        weights.write_bytes(b"\xff" * 64)
    elif kind == "header longer than the file":
        weights.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    elif kind == "config.json not JSON":
        (folder / "config.json").write_text("{ this is not json")
    elif kind == "config.json a list":
        (folder / "config.json").write_text("[1, 2]")
    elif kind == "config.json not UTF-8":
        (folder / "config.json").write_bytes(b"\xff\xfe\x00{")
    elif kind == "index names a missing shard":
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-2.safetensors"}}))


FETCH_CASES = {
    "truncated safetensors": "base.source: {src}: model.safetensors is not a complete safetensors file",
    "garbage safetensors": "base.source: {src}: model.safetensors is not a complete safetensors file",
    "header longer than the file": "base.source: {src}: model.safetensors is not a complete safetensors file",
    "config.json not JSON": "base.source: {src}: config.json is not valid JSON",
    "config.json a list": "base.source: {src}: config.json must be a JSON object",
    "config.json not UTF-8": "base.source: {src}: config.json is not valid JSON",
    "index names a missing shard": "base.source: {src}: model.safetensors.index.json names model-2.safetensors",
}


@pytest.mark.parametrize("case", list(FETCH_CASES))
def test_fetch_verifies_what_it_fetched(case, tmp_path, tiny_llama_dir):
    folder = _local_model(tmp_path, tiny_llama_dir)
    _corrupt(case, folder)
    project = tmp_path / "project"
    project.mkdir()
    data = _with("base", {"source": str(folder), "revision": None, "dtype": "auto"})
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_cli("fetch", cwd=project)
    _assert_one_line_error(result, FETCH_CASES[case].format(src=folder), project)


CALIBRATION_CASES = {
    "binary text file": ("notes.txt", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "calibration.sources[0].uri: {path} is not UTF-8 text"),
    "latin-1 text file": ("notes.txt", "caf\xe9 au lait ".encode("latin-1") * 40, "calibration.sources[0].uri: {path} is not UTF-8 text"),
    "NUL bytes in jsonl": ("rows.jsonl", b'{"text": "a\x00b"}\n', "calibration.sources[0].uri: {path} contains NUL bytes"),
    "jsonl not JSON": ("rows.jsonl", b"not json at all\n", "calibration.sources[0].uri: {path} line 1 is not JSON"),
    "json not JSON": ("rows.json", b"{broken", "calibration.sources[0].uri: {path} is not JSON"),
}


@pytest.mark.parametrize("case", list(CALIBRATION_CASES))
def test_bad_calibration_files(case, tmp_path, tiny_llama_dir):
    name, raw, expected = CALIBRATION_CASES[case]
    (tmp_path / name).write_bytes(raw)
    project = tmp_path / "project"
    project.mkdir()
    data = _with("calibration.sources", [{"uri": str(tmp_path / name)}])
    data["calibration"]["heldout_sources"] = []
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = run_cli("calibrate", "--model-dir", str(tiny_llama_dir), cwd=project)
    _assert_one_line_error(result, expected.format(path=tmp_path / name), project)


CLI_CASES = {
    "plan negative context": (["plan", "{cfg}", "--context", "-5"], "Invalid value for '--context'"),
    "plan zero gpu memory": (["plan", "{cfg}", "--gpu-memory", "0"], "Invalid value for '--gpu-memory'"),
    "plan text batch": (["plan", "{cfg}", "--batch", "many"], "Invalid value for '--batch'"),
    "plan missing file": (["plan", "{tmp}/nope.json"], "Invalid value for 'MODEL_OR_CONFIG'"),
    "hub serve port too large": (["hub", "serve", "--root", "{tmp}/hub", "--port", "70000"], "Invalid value for '--port'"),
    "hub serve port negative": (["hub", "serve", "--root", "{tmp}/hub", "--port", "-1"], "Invalid value for '--port'"),
    "quantize unknown variant": (["quantize", "nope"], "error: variants.nope: no such variant"),
    "gate unknown variant": (["gate", "nope"], "error: variants.nope: no such variant"),
    "unknown command": (["quantise"], "No such command 'quantise'"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_cli_arguments(case, tmp_path):
    from .test_config import SMOLLM_CONFIG

    (tmp_path / "config.json").write_text(json.dumps(SMOLLM_CONFIG))
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    args, expected = CLI_CASES[case]
    args = [a.format(cfg=tmp_path / "config.json", tmp=tmp_path) for a in args]
    result = run_cli(*args, cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-1500:]
    assert expected in result.stderr, result.stderr[-1500:]
    assert not (tmp_path / "hub").exists() and not (tmp_path / "build").exists()


SANDBOX_TEMPLATES = {
    "python internals": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals through a function": "{{ card_data.__class__.__init__.__globals__ }}",
    "undefined filter": "{{ repo_id | nonsense }}",
}


@pytest.mark.parametrize("case", list(SANDBOX_TEMPLATES))
def test_card_template_renders_in_a_sandbox(case, tmp_path):
    from quantbuild._card import render_template
    from quantbuild.errors import CardError

    template = tmp_path / "card.md.j2"
    template.write_text(SANDBOX_TEMPLATES[case])
    with pytest.raises(CardError) as info:
        render_template(template, "license: mit", {"repo_id": "a/b"})
    assert str(info.value).startswith(f"card.template: {template} failed to render") and "\n" not in str(info.value)


def test_the_list_is_long_enough():
    total = (len(PARAMS_CASES) + len(RAW_PARAMS) + len(FETCH_CASES) + len(CALIBRATION_CASES) + len(CLI_CASES)
             + len(SANDBOX_TEMPLATES))
    assert total >= 40, total
