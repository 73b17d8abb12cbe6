"""DVC remotes and the release/PR scripts the workflows run: `.ci/release` on a real project (git origin,
local DVC remote, the local Hub), then a fresh clone that pulls everything and has nothing to redo, the
run-cache restoring a deleted variant, an S3 remote on a moto server, and `.ci/pr-report`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import VENV_BIN, dvc, make_project, write_params

pytestmark = pytest.mark.slow
VARIANT = "fp8-dynamic"
ARTIFACT = f"smollm2-135m-instruct-{VARIANT}"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def run(cwd: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **GIT_ENV, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}  # env={"CI": None} unsets it
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=full, timeout=1800)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def out_paths(project: Path) -> list[Path]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return sorted({project / o["path"] for stage in lock["stages"].values() for o in stage.get("outs", [])})


def release_project(root: Path, hub, tiny_llama_dir: Path, name: str, variants: dict) -> Path:
    """A project that releases `variants` of the tiny Llama (served by the local Hub) with publishing on,
    next to a bare `origin.git`: tiny calibration, sensitivity and transformers evaluation."""
    run(root, "git", "init", "-q", "--bare", "origin.git")
    base_repo = hub.repo_id(f"{name}-base")
    hub.seed(base_repo, {**{p.name: p for p in tiny_llama_dir.iterdir()}, "README.md": "---\nlicense: mit\n---\n"})
    project = make_project(root / "project")
    write_params(project / "params.yaml",
                 base={"source": f"hf://{base_repo}", "revision": "main", "dtype": "auto"},
                 calibration={"sources": [{"uri": "builtin://lee-news"}], "n_samples": 16, "seq_len": 128,
                              "heldout_max_docs": 4},
                 variants=variants,
                 sensitivity={"n_samples": 2, "seq_len": 64, "layer_kl": False},
                 eval={"engine": "hf", "tasks": ["heldout_perplexity"], "max_model_len": 512, "perplexity_windows": 2},
                 card={"base_model": None},
                 publish={"enabled": True, "namespace": hub.user, "version": "v0.1.0",
                          "repo_template": "{base}-{variant}-" + Path(hub.repo_id(name)).name})
    return project


def commit_and_push(project: Path, origin: Path) -> None:
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "release params")
    run(project, "git", "remote", "add", "origin", str(origin))
    run(project, "git", "push", "-q", "origin", "HEAD:refs/heads/main")


@pytest.fixture(scope="module")
def shipped(session_hub, tiny_llama_dir, tmp_path_factory):
    hub = session_hub
    root = tmp_path_factory.mktemp("remotes")
    project = release_project(root, hub, tiny_llama_dir, "ship", {VARIANT: {"method": "fp8"}})
    # the repo's default remote "local" (make_project points it at a folder beside the project)
    assert dvc(project, "remote", "list").stdout.split()[:2] == ["local", str(root / "dvc-remote")]
    commit_and_push(project, root / "origin.git")
    mismatch = run(project, ".ci/release", "v9.9.9", check=False)
    # In CI (the variable GitHub and this project's CI set) a local-path remote is refused: runners are
    # thrown away. Outside CI, as here on purpose, the release runs against the local remote.
    in_ci = run(project, ".ci/release", "v0.1.0", check=False, env={"CI": "true"})
    released = run(project, ".ci/release", "v0.1.0", check=False, env={"CI": None})
    return {"root": root, "project": project, "hub": hub, "mismatch": mismatch, "in_ci": in_ci,
            "released": released}


def fresh_clone(shipped, name: str) -> Path:
    dest = shipped["root"] / name
    run(shipped["root"], "git", "clone", "-q", "--branch", "release/v0.1.0", str(shipped["root"] / "origin.git"), str(dest))
    return dest


def test_release_script_publishes_pushes_and_tags(shipped):
    from huggingface_hub import HfApi

    mismatch, released = shipped["mismatch"], shipped["released"]
    assert mismatch.returncode == 2
    assert "error: params.yaml publish: 'v0.1.0 True' (version, enabled) must be 'v9.9.9 True'" in mismatch.stderr
    in_ci = shipped["in_ci"]
    assert in_ci.returncode == 2 and "is a local path" in in_ci.stderr and "dvc remote add -d" in in_ci.stderr
    assert released.returncode == 0, released.stdout[-3000:] + released.stderr[-3000:]
    assert "[release] v0.1.0: done" in released.stdout
    remote = run(shipped["project"], "git", "ls-remote", "origin").stdout
    assert f"refs/tags/{ARTIFACT}@v0.1.0" in remote and "refs/heads/release/v0.1.0" in remote
    receipt = json.loads((shipped["project"] / f"build/publish/{VARIANT}.json").read_text())
    tags = {t.name: t.target_commit for t in HfApi().list_repo_refs(receipt["repo_id"]).tags}
    assert tags == {"v0.1.0": receipt["commit"]}
    # the receipt and the metrics are committed (small, `cache: false`); the model is in the DVC remote
    files = run(shipped["project"], "git", "ls-files", "build").stdout.split()
    assert f"build/publish/{VARIANT}.json" in files and f"build/eval/{VARIANT}/metrics.json" in files
    assert not any("/model/" in f for f in files)


def test_fresh_clone_pulls_everything_and_has_nothing_to_redo(shipped):
    clone = fresh_clone(shipped, "clone")
    dvc(clone, "pull")
    paths = out_paths(clone)
    assert len(paths) >= 10 and all(p.exists() for p in paths), [p for p in paths if not p.exists()]
    assert dvc(clone, "status").stdout.strip() == "Data and pipelines are up to date."
    repro = dvc(clone, "repro")
    assert "Running stage" not in repro.stdout and "Data and pipelines are up to date." in repro.stdout


def test_run_cache_restores_a_deleted_variant_without_quantizing(shipped):
    clone = fresh_clone(shipped, "clone-runcache")
    dvc(clone, "pull", "--run-cache")
    model = clone / f"build/variants/{VARIANT}/model/model.safetensors"
    before = model.read_bytes()
    shutil.rmtree(clone / f"build/variants/{VARIANT}")
    # The clone has no stage environments (.venvs): if quantize ran, it would fail.
    repro = dvc(clone, "repro")
    assert f"Stage 'quantize@{VARIANT}' is cached - skipping run, checking out outputs" in repro.stdout
    assert "Running stage" not in repro.stdout
    assert model.read_bytes() == before


def add_s3_remote(project: Path, url: str) -> None:
    dvc(project, "remote", "add", "--local", "s3", "s3://quantbuild-test/store")
    dvc(project, "remote", "modify", "--local", "s3", "endpointurl", url)


def test_s3_remote_push_and_pull(shipped, s3_endpoint):
    import boto3

    add_s3_remote(shipped["project"], s3_endpoint)
    dvc(shipped["project"], "push", "-r", "s3", "--run-cache")
    stored = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="quantbuild-test", Prefix="store/")
    assert stored["KeyCount"] >= 10
    clone = fresh_clone(shipped, "clone-s3")
    add_s3_remote(clone, s3_endpoint)
    dvc(clone, "pull", "-r", "s3")
    assert all(p.exists() for p in out_paths(clone))
    assert dvc(clone, "status").stdout.strip() == "Data and pipelines are up to date."
    assert "Cache and remote 's3' are in sync." in dvc(clone, "status", "-c", "-r", "s3").stdout


def test_pr_report_compares_metrics_and_params_with_the_base(shipped, tmp_path):
    project = shipped["project"]
    base = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["eval"]["max_model_len"] = 256  # shorter perplexity windows: the metric moves
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    run(project, "git", "commit", "-qam", "shorter eval windows")
    result = run(project, ".ci/pr-report", base, str(tmp_path / "report"), check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Running stage 'publish@" not in result.stdout
    report = (tmp_path / "report/report.md").read_text()
    assert f"| {VARIANT} | passed |" in report
    metrics_section = report.split("### Metrics")[1].split("### Params")[0]
    assert "build/eval/base/metrics.json" in metrics_section and "quality.heldout_perplexity.word_perplexity" in metrics_section
    params_section = report.split("### Params")[1]
    assert "eval.max_model_len" in params_section and "512" in params_section and "256" in params_section
    assert (tmp_path / "report/plots/index.html").is_file()
