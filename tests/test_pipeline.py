"""The DVC pipeline in a throw-away copy of this repo: real `dvc repro`, caching and re-run scoping."""

from __future__ import annotations

import json

import pytest
import yaml

from .conftest import REPO_ROOT, VENV_BIN, dvc, write_params


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.fixture
def tiny_project(project, tiny_llama_dir):
    write_params(project / "params.yaml",
                 base={"source": str(tiny_llama_dir), "revision": None, "dtype": "auto"},
                 calibration={"sources": [{"uri": "builtin://lee-news"}], "n_samples": 16, "seq_len": 128,
                              "heldout_max_docs": 8, "heldout_sources": []})
    return project


def test_repro_runs_fetch_and_calibrate_then_nothing_then_only_what_changed(tiny_project):
    first = dvc(tiny_project, "repro", "calibrate")
    assert ran_stages(first.stdout) == ["fetch", "calibrate"]
    stats = json.loads((tiny_project / "build/calibration/stats.json").read_text())
    assert stats["n_samples"] == 16
    heldout_before = (tiny_project / "build/calibration/heldout.jsonl").read_bytes()

    second = dvc(tiny_project, "repro", "calibrate")
    assert ran_stages(second.stdout) == []
    status = dvc(tiny_project, "status", "calibrate")
    assert "changed" not in status.stdout

    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["calibration"]["n_samples"] = 24
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = dvc(tiny_project, "repro", "calibrate")
    assert ran_stages(third.stdout) == ["calibrate"]  # fetch's params did not change
    assert json.loads((tiny_project / "build/calibration/stats.json").read_text())["n_samples"] == 24
    # the held-out split does not depend on n_samples, so evaluate_base need not re-run
    assert (tiny_project / "build/calibration/heldout.jsonl").read_bytes() == heldout_before
    status = dvc(tiny_project, "status", "--json")
    changed = set(json.loads(status.stdout))
    assert "fetch" not in changed and "calibrate" not in changed


def test_each_variant_stage_declares_only_its_own_params(project):
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        declared = {stage.name: sorted(p for dep in stage.deps if isinstance(dep, ParamsDependency)
                                       and not str(dep.def_path).endswith("code.yaml") for p in dep.params)
                    for stage in repo.index.stages}
        code = {stage.name: [p for dep in stage.deps if isinstance(dep, ParamsDependency)
                             and str(dep.def_path).endswith("code.yaml") for p in dep.params]
                for stage in repo.index.stages}
    # and each its own code identity (tests/test_stage_deps.py checks what it covers)
    assert code["quantize@gptq-w4g64"] == ["quantize"] and code["evaluate_base"] == ["evaluate"]
    assert declared["quantize@gptq-w4g64"] == ["base.trust_remote_code", "variants.gptq-w4g64"]
    assert declared["quantize@fp8-dynamic"] == ["base.trust_remote_code", "variants.fp8-dynamic"]
    assert declared["fetch"] == ["base"] and declared["calibrate"] == ["calibration"]
    assert declared["sensitivity"] == ["sensitivity"]
    assert declared["gate@auto-4b5"] == ["eval.gate", "variants.auto-4b5.method"]
    assert declared["publish@int8-w8a8"] == ["publish"]


def test_card_and_publish_stages_name_the_missing_input(project):
    import subprocess

    for script, message in (("card", "error: card@fp8-dynamic: build/base/fetch.json is missing (run `dvc repro "
                                     "evaluate@fp8-dynamic` first)"),
                            ("publish", "[publish] fp8-dynamic: skipped (publish.enabled is false)")):
        result = subprocess.run([str(VENV_BIN / "quantbuild"), "stage", script, "fp8-dynamic"], cwd=project,
                                capture_output=True, text=True)
        assert message in result.stderr, result.stderr
    assert json.loads((project / "build/publish/fp8-dynamic.json").read_text()) == {
        "published": False, "variant": "fp8-dynamic", "reason": "publish.enabled is false in params.yaml"}


def test_dvc_yaml_declares_every_variant_and_artifact():
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    artifact_paths = {a["path"] for a in pipeline["artifacts"].values()}
    assert "build/base/model" in artifact_paths
    for name in params["variants"]:
        assert f"build/variants/{name}/model" in artifact_paths
    assert list(pipeline["stages"]) == ["fetch", "calibrate", "sensitivity", "inputs", "quantize", "evaluate_base",
                                        "evaluate", "gate", "select", "card", "publish"]
    assert pipeline["stages"]["quantize"]["do"]["params"] == [{".quantbuild/code.yaml": ["quantize"]},
                                                              "variants.${key}", "base.trust_remote_code"]
    assert pipeline["stages"]["publish"]["do"]["outs"][0]["build/publish/${key}.json"]["persist"] is True  # no run-cache
