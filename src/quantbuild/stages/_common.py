"""What every stage entry shares: the params file, the build layout and a variant lookup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import Params, check_against_model, load_params, model_source_kind
from ..errors import ConfigError

from .._layout import (  # noqa: F401  (the stage modules name their paths from here)
    BASE_MODEL_DIR, BUILD, CALIBRATION_DIR, CARDS_DIR, DEFAULT_PARAMS, EVAL_DIR, FETCH_RECORD, GATE_DIR, INPUTS_DIR,
    PUBLISH_DIR, SELECTION_DIR, SENSITIVITY_DIR, VARIANTS_DIR)


def _model_config_for_checks(params: Params, model_dir: str | Path | None) -> dict[str, Any] | None:
    """The base model's config.json when it is at hand without downloading anything."""
    candidates = [Path(model_dir)] if model_dir else []
    if model_source_kind(params.base.source) == "folder":
        candidates.append(Path(params.base.source.removeprefix("file://")))
    for folder in candidates:
        if (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text())
    return None


def checked_params(params_path: str | Path = DEFAULT_PARAMS, model_dir: str | Path | None = BASE_MODEL_DIR) -> Params:
    """params.yaml validated; with the base model's config at hand, shapes checked against it too."""
    params = load_params(params_path)
    config = _model_config_for_checks(params, model_dir)
    if config is not None:
        problems = check_against_model(params, config)
        if problems:
            raise ConfigError(problems)
    return params


def variant_params(params_path: str | Path, name: str) -> Params:
    params = load_params(params_path)
    if name not in params.variants:
        raise ConfigError([f"variants.{name}: no such variant in params.yaml (variants: {', '.join(params.variants)})"])
    return params


def one_argument(argv: list[str] | None, usage: str) -> str:
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"error: usage: {usage}", file=sys.stderr)
        raise SystemExit(2)
    return args[0]
