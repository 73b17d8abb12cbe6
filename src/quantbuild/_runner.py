"""`quantbuild stage` (what dvc.yaml's commands call) and `quantbuild setup`: run a stage's entry module with
the interpreter of its environment, and create those environments from the project's locks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ._codeid import CODE_FILE, FORMER_ENV_NAMES, PACKAGE, STAGES, recorded_id, stage_id, write_code_file
from .config import VARIANT_NAME_RE
from .errors import ConfigError, EnvironmentSetupError


def env_python(env: str, root: Path | None = None) -> Path:
    """$QUANTBUILD_ENV_<ROLE>/bin/python when that variable (or its former name's) is set, else
    .venvs/<role>/bin/python."""
    var = "QUANTBUILD_ENV_" + env.upper()
    former = "QUANTBUILD_ENV_" + FORMER_ENV_NAMES.get(env, env).upper()
    kept = os.environ.get(var) or os.environ.get(former)
    venv = Path(kept) if kept else (root or Path.cwd()) / ".venvs" / env
    python = venv / "bin" / "python"
    if not os.access(python, os.X_OK):
        raise EnvironmentSetupError(f"environment '{env}' not found at {venv}: run `quantbuild setup` (or set {var})")
    return python


def exec_stage(name: str, variant: str | None) -> None:
    """Replace this process with the stage's entry module in its environment (after the checks below)."""
    if name not in STAGES:
        raise ConfigError([f"stage: unknown stage {name!r}; choose one of {', '.join(STAGES)}"])
    stage = STAGES[name]
    if stage.takes_variant and not variant:
        raise ConfigError([f"stage {name}: needs a variant name (quantbuild stage {name} VARIANT)"])
    if not stage.takes_variant and variant:
        raise ConfigError([f"stage {name}: takes no variant (quantbuild stage {name})"])
    if variant and variant != "base" and not VARIANT_NAME_RE.match(variant):
        raise ConfigError([f"stage {name}: {variant!r} is not a variant name (lower-case letters, digits, . _ -)"])
    recorded, actual = recorded_id(Path.cwd(), name), stage_id(name)
    if recorded != actual:
        what = "has no entry for it" if recorded is None else "records other code"
        raise EnvironmentSetupError(f"stage {name}: {CODE_FILE} {what} than the installed quantbuild runs; "
                                    "run `quantbuild setup` (it records each stage's code), then dvc repro")
    # A release assembled from per-variant jobs (.ci/release with QUANTBUILD_RELEASE_ASSEMBLE=1) restores what
    # those jobs built from the DVC run-cache and may run only the cheap stages it names; any other stage that
    # would run here means its job did not finish, and is refused instead of computed on the final runner.
    only = os.environ.get("QUANTBUILD_ONLY_STAGES")
    if only and name not in only.split(","):
        print(f"error: stage '{name}' would run here, but QUANTBUILD_ONLY_STAGES allows only {only}: its outputs "
              "are not in the run-cache (did its job fail?)", file=sys.stderr)
        sys.exit(3)
    python = env_python(stage.env)
    os.environ["PYTHONUNBUFFERED"] = "1"
    if not sys.stderr.isatty():
        # A CI log, not a terminal: libraries' progress bars would write a redraw per step (177 KB in 16 min
        # measured). Our own progress prints one line per layer or per 10 % instead.
        os.environ.update(TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    sys.stdout.flush()
    os.execv(str(python), [str(python), "-m", stage.module, *([variant] if variant else [])])


def run_setup(envs: list[str]) -> None:
    """Run the project's envs/setup (written by `quantbuild init`) for ENVS (default: all), telling it where the
    installed quantbuild is so that environments outside a quantbuild checkout import this very code."""
    script = Path("envs/setup")
    if not script.is_file():
        raise EnvironmentSetupError("setup: envs/setup is missing here; run it from the project's root "
                                    "(or `quantbuild init` to scaffold one)")
    env = {**os.environ, "QUANTBUILD_PACKAGE_DIR": str(PACKAGE)}
    result = subprocess.run([str(script), *envs], env=env)
    if result.returncode:
        sys.exit(result.returncode)
    changed = write_code_file(Path.cwd())
    print(f"[setup] {CODE_FILE}: {'updated' if changed else 'up to date'} (each stage's code identity)")
