"""The pipeline's stages, declared once, and each stage's code identity.

A stage's identity is the sha256 of the quantbuild modules it can execute: the transitive closure of its
entry module's imports (every import statement, the lazy ones inside functions too, and the backend
registry's "package.module:function" targets). `quantbuild setup` writes them to `.quantbuild/code.yaml`;
every stage in dvc.yaml declares its own key there as a DVC param, so upgrading quantbuild re-runs exactly
the stages whose code changed, and `quantbuild stage` refuses to run a stage whose recorded identity is not
the code about to run (the file is stale: run `quantbuild setup`).
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

CODE_FILE = Path(".quantbuild") / "code.yaml"
PACKAGE = Path(__file__).resolve().parent


# The stage environments, by role (.venvs/<role>, or $QUANTBUILD_ENV_<ROLE>). Two, because llm-compressor and
# vLLM's CPU build pin different compressed-tensors releases (envs/README.md).
ENVIRONMENTS = {
    "build": "torch, transformers and the quantizers: every stage but evaluate, the CLI, dvc and the tests",
    "serve": "vLLM and lm-eval: the evaluate stage, in the engine the releases are served with",
}
# Their names before they were named by role; $QUANTBUILD_ENV_QUANTIZE / _EVALUATE still count.
FORMER_ENV_NAMES = {"build": "quantize", "serve": "evaluate"}


@dataclass(frozen=True)
class Stage:
    name: str
    env: str            # the environment (a role of ENVIRONMENTS) it runs in
    takes_variant: bool  # `quantbuild stage NAME VARIANT` (a foreach stage) or `quantbuild stage NAME`

    @property
    def module(self) -> str:
        return f"quantbuild.stages.{self.name}"


# dvc.yaml's stages, in pipeline order. evaluate also runs as `evaluate_base` (`quantbuild stage evaluate base`).
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("fetch", "build", False),
    Stage("calibrate", "build", False),
    Stage("sensitivity", "build", False),
    Stage("inputs", "build", False),
    Stage("quantize", "build", True),
    Stage("evaluate", "serve", True),
    Stage("gate", "build", True),
    Stage("select", "build", False),
    Stage("card", "build", True),
    Stage("publish", "build", True),
)}


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "quantbuild":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _module_name(path: Path) -> str:
    parts = ["quantbuild", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("quantbuild")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("quantbuild"):
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names if _module_file(f"{mod}.{a.name}")}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            hit = re.match(r"^(quantbuild(?:\.\w+)+):\w+$", node.value)
            if hit:
                found.add(hit.group(1))
    return found


def stage_files(stage: str) -> list[Path]:
    """The package files (relative to the package) that the stage's entry module can execute."""
    entry = _module_file(STAGES[stage].module)
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            parts = name.split(".")
            todo += [_module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
    return sorted(p.relative_to(PACKAGE) for p in seen)


def stage_id(stage: str) -> str:
    digest = hashlib.sha256()
    for rel in stage_files(stage):
        digest.update(f"{rel.as_posix()}\0".encode())
        digest.update(hashlib.sha256((PACKAGE / rel).read_bytes()).digest())
    return digest.hexdigest()[:20]


def render_code_file() -> str:
    from . import __version__

    lines = ["# Each stage's code identity (sha256 of the quantbuild modules it runs), written by `quantbuild setup`",
             "# from the installed quantbuild. dvc.yaml declares every stage's key as a param: upgrading quantbuild",
             "# re-runs exactly the stages whose code changed. Commit this file with dvc.lock.",
             f"quantbuild_version: {__version__}   # informative; no stage declares it"]
    lines += [f"{name}: {stage_id(name)}" for name in STAGES]
    return "\n".join(lines) + "\n"


def write_code_file(project: Path) -> bool:
    """Write .quantbuild/code.yaml for the running quantbuild; True when it changed."""
    path = project / CODE_FILE
    text = render_code_file()
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def recorded_id(project: Path, stage: str) -> str | None:
    path = project / CODE_FILE
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == stage:
            return value.split("#")[0].strip() or None
    return None


if __name__ == "__main__":  # envs/setup's last step: python -m quantbuild._codeid (in the project's root)
    changed = write_code_file(Path.cwd())
    print(f"[setup] {CODE_FILE}: {'updated' if changed else 'up to date'} (quantbuild's code per stage)")
