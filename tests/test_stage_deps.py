"""dvc.yaml declares exactly the code each stage runs: the project modules its entry module imports (the
transitive closure of every import statement, lazy ones included), the stage runner and the files of the
environment it runs in. A module a stage imports but does not declare, or declares but does not import,
fails here; so do variants that params.yaml has and dvc.yaml's artifacts or plots lack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ._imports import REPO_ROOT, closure

DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
ENV_FILES = {"quantize": {"envs/locks/quantize-cpu.txt", "envs/locks/quantize-cuda.txt"},
             "evaluate": {"envs/locks/evaluate-cpu.txt", "envs/locks/evaluate-cuda.txt"}}


def _stages():
    for name, stage in DVC["stages"].items():
        body = stage.get("do", stage)
        yield name, body


@pytest.mark.parametrize("name,stage", list(_stages()), ids=[n for n, _ in _stages()])
def test_stage_declares_exactly_its_code(name, stage):
    cmd = stage["cmd"]
    found = re.match(r"^stages/run (\w+) -m (quantbuild\.stages\.\w+)\b", cmd)
    assert found, f"{name}: cmd must be `stages/run ENV -m quantbuild.stages.<stage>`: {cmd}"
    env, module = found.groups()
    entry = REPO_ROOT / "src" / Path(*module.split(".")).with_suffix(".py")
    code = {str(p) for p in closure(entry)}
    declared = {d for d in stage["deps"] if isinstance(d, str)}
    declared_code = {d for d in declared if d.startswith("src/")}
    covered = set()
    for path in code:
        hits = [d for d in declared_code if path == d or path.startswith(d.rstrip("/") + "/")]
        assert hits, f"{name}: dvc.yaml does not declare {path}, which the stage imports"
        covered |= set(hits)
    assert declared_code <= covered, f"{name}: dvc.yaml declares code the stage never imports: " \
                                     f"{sorted(declared_code - covered)}"
    for folder in (d for d in declared_code if (REPO_ROOT / d).is_dir()):
        files = {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / folder).rglob("*.py")}
        assert files <= code, f"{name}: declares {folder}, but the stage does not import {sorted(files - code)}"
    assert ENV_FILES[env] <= declared, f"{name}: the environment's files are dependencies: add {ENV_FILES[env] - declared}"
    assert "stages/run" in declared, f"{name}: stages/run (the runner) is a dependency"
    other_envs = set().union(*(v for k, v in ENV_FILES.items() if k != env))
    assert not declared & other_envs, f"{name}: runs in {env} but declares {declared & other_envs}"


def test_no_stage_imports_the_hub_server():
    for name, stage in _stages():
        module = re.search(r"-m (quantbuild\.stages\.\w+)", stage["cmd"]).group(1)
        code = closure(REPO_ROOT / "src" / Path(*module.split(".")).with_suffix(".py"))
        assert not [p for p in code if "hubserver" in str(p)], f"{name} imports the Hub server (a test/ops tool)"


def test_every_variant_reaches_artifacts_and_plots():
    from quantbuild._dvcfile import missing_variant_entries

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert missing_variant_entries(DVC, list(params["variants"]), "smollm2-135m-instruct") == []


def test_check_names_what_to_add_for_a_new_variant(tmp_path):
    from quantbuild._dvcfile import missing_variant_entries

    lines = missing_variant_entries(DVC, ["gptq-w4g64", "brand-new"], "smollm2-135m-instruct")
    assert any("artifacts" in l and "smollm2-135m-instruct-brand-new" in l for l in lines), lines
    assert any("plots" in l and "build/eval/brand-new/plots/throughput.json" in l for l in lines), lines
