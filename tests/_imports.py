"""Which project files a stage entry reads: the transitive closure of its quantbuild imports (every import
statement, including the lazy ones inside functions) plus what the lazy backend registry names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src"


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    here = _module_name(path) if path.is_relative_to(SRC) else ""
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
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
            for alias in node.names:  # `from . import x` may name a submodule
                if _module_file(f"{mod}.{alias.name}"):
                    found.add(f"{mod}.{alias.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            hit = re.match(r"^(quantbuild(?:\.\w+)+):\w+$", node.value)  # registry targets "pkg.mod:func"
            if hit:
                found.add(hit.group(1))
    return found


def closure(entry: Path) -> set[Path]:
    """Project files (relative to the repo root) the entry script can execute."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                f = _module_file(".".join(parts[:i]))
                if f and f not in seen:
                    todo.append(f)
    return {p.relative_to(REPO_ROOT) for p in seen}
