"""dvc.yaml declares exactly the code each stage runs: every stage's command is `quantbuild stage NAME`, it
declares its own code identity (`.quantbuild/code.yaml: [NAME]`, the sha256 of the quantbuild modules it
can execute) and the lock files of the environment it runs in. The identity covers the transitive closure
of the entry module's imports (lazy ones included); it is checked here against the modules Python loads
and named lazy and registry cases, and the committed code file must be what the current code computes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from .conftest import REPO_ROOT

DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
ENV_FILES = {"build": {"envs/locks/build-cpu.txt", "envs/locks/build-cuda.txt"},
             "serve": {"envs/locks/serve-cpu.txt", "envs/locks/serve-cuda.txt"}}


def _stages():
    for name, stage in DVC["stages"].items():
        body = stage.get("do", stage)
        yield name, body


@pytest.mark.parametrize("name,stage", list(_stages()), ids=[n for n, _ in _stages()])
def test_stage_declares_its_code_and_environment(name, stage):
    from quantbuild._codeid import STAGES

    found = re.match(r"^quantbuild stage (\w+)(?: (\$\{key\}|base))?$", stage["cmd"])
    assert found, f"{name}: cmd must be `quantbuild stage NAME [VARIANT]`: {stage['cmd']}"
    module = found.group(1)
    assert module in STAGES and name.split("_")[0] == module, name
    code_params = [p for p in stage["params"] if isinstance(p, dict) and ".quantbuild/code.yaml" in p]
    assert code_params == [{".quantbuild/code.yaml": [module]}], f"{name}: declare its own code identity only"
    declared = {d for d in stage["deps"] if isinstance(d, str)}
    env = STAGES[module].env
    assert ENV_FILES[env] <= declared, f"{name}: the environment's files are dependencies: add {ENV_FILES[env] - declared}"
    other_envs = set().union(*(v for k, v in ENV_FILES.items() if k != env))
    assert not declared & other_envs, f"{name}: runs in {env} but declares {declared & other_envs}"
    assert not [d for d in declared if d.startswith(("src/", "stages/"))], f"{name}: code is covered by its identity"


@pytest.mark.parametrize("stage", ["fetch", "calibrate", "sensitivity", "inputs", "quantize", "evaluate", "gate",
                                   "select", "card", "publish"])
def test_code_identity_covers_every_module_the_stage_loads(stage):
    """Checked against Python itself: every quantbuild module that importing the stage's entry module loads
    (its eager imports, in a fresh interpreter) is inside the identity's closure."""
    import subprocess
    import sys

    from quantbuild._codeid import stage_files

    code = (f"import sys, quantbuild.stages.{stage}; "
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('quantbuild') and m.__file__))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=REPO_ROOT).stdout.split()
    package = REPO_ROOT / "src" / "quantbuild"
    eager = {str(Path(f).resolve().relative_to(package.resolve())) for f in loaded}
    assert eager <= {str(p) for p in stage_files(stage)}


def test_code_identity_follows_lazy_imports_and_registry_targets():
    from quantbuild._codeid import stage_files

    quantize = {str(p) for p in stage_files("quantize")}
    # registry targets ("quantbuild.quantize._llmcompressor:run") and imports inside functions count too
    assert {"quantize/_llmcompressor.py", "quantize/_gptqmodel.py", "quantize/_autoawq.py", "quantize/_auto.py",
            "quantize/_run.py", "_formats.py", "stages/quantize.py", "_stage.py", "_codeid.py"} <= quantize
    gate = {str(p) for p in stage_files("gate")}
    assert "_gate.py" in gate and not {p for p in gate if p.startswith(("quantize/", "evaluate/"))}


def test_committed_code_identities_are_the_current_code():
    from quantbuild._codeid import CODE_FILE, render_code_file

    assert (REPO_ROOT / CODE_FILE).read_text() == render_code_file(), \
        "run `make setup` (it rewrites .quantbuild/code.yaml), then dvc repro"


def test_editing_one_module_changes_only_the_stages_that_import_it(monkeypatch, tmp_path):
    import shutil

    from quantbuild import _codeid

    before = {s: _codeid.stage_id(s) for s in _codeid.STAGES}
    copy = tmp_path / "quantbuild"
    shutil.copytree(_codeid.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "_gate.py").write_text((copy / "_gate.py").read_text() + "\n# changed\n")
    monkeypatch.setattr(_codeid, "PACKAGE", copy)
    after = {s: _codeid.stage_id(s) for s in _codeid.STAGES}
    changed = {s for s in before if before[s] != after[s]}
    importers = {s for s in _codeid.STAGES if Path("_gate.py") in _codeid.stage_files(s)}
    assert changed == importers and "gate" in changed and "fetch" not in changed


def test_no_stage_imports_the_hub_server():
    from quantbuild._codeid import STAGES, stage_files

    for name in STAGES:
        assert not [p for p in stage_files(name) if "hubserver" in str(p)], f"{name} imports the Hub server"


def test_every_variant_reaches_artifacts_and_plots():
    from quantbuild._dvcfile import missing_variant_entries

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert missing_variant_entries(DVC, list(params["variants"]), "smollm2-135m-instruct") == []


def test_check_names_what_to_add_for_a_new_variant(tmp_path):
    from quantbuild._dvcfile import missing_variant_entries

    lines = missing_variant_entries(DVC, ["gptq-w4g64", "brand-new"], "smollm2-135m-instruct")
    assert any("artifacts" in l and "smollm2-135m-instruct-brand-new" in l for l in lines), lines
    assert any("plots" in l and "build/eval/brand-new/plots/throughput.json" in l for l in lines), lines
