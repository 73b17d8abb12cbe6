"""The public functions behind every stage and CLI command (the CLI only parses arguments).

Each stage's function lives in its own module, quantbuild.stages.<stage>; this façade re-exports them
lazily, so importing quantbuild.api loads no stage's dependencies.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .config import Params, load_params
from ._codeid import STAGES
from .stages._common import BASE_MODEL_DIR, DEFAULT_PARAMS, checked_params

_STAGES = tuple(STAGES)  # the façade exports every stage's function


def check(params_path: str | Path = DEFAULT_PARAMS, model_dir: str | Path | None = BASE_MODEL_DIR) -> Params:
    """Validate params.yaml; with the base model's config at hand, also check shapes against it."""
    return checked_params(params_path, model_dir)


def release(version: str, params_path: str | Path = DEFAULT_PARAMS, root: str | Path = ".",
            variants: list[str] | None = None, commit: bool = True) -> list[dict[str, Any]]:
    """GTO registry tags `<artifact>@VERSION` for the variants' dvc.yaml artifacts (gate passed only)."""
    from ._release import release as run

    params = load_params(params_path)
    return run(params, version, Path(root), variants=variants, commit=commit)


def __getattr__(name: str):
    if name in _STAGES:
        return importlib.import_module(f"quantbuild.stages.{name}").run
    raise AttributeError(f"module 'quantbuild.api' has no attribute {name!r}")


__all__ = ["check", "release", *_STAGES]
