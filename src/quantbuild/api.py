"""Pure functions behind every stage and CLI command. The CLI and stages/ only parse arguments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import Params, check_against_model, load_params, model_source_kind
from .errors import ConfigError

DEFAULT_PARAMS = "params.yaml"
BASE_MODEL_DIR = "build/base/model"


def _model_config_for_checks(params: Params, model_dir: str | Path | None) -> dict[str, Any] | None:
    """The base model's config.json when it is at hand without downloading anything."""
    candidates = [Path(model_dir)] if model_dir else []
    if model_source_kind(params.base.source) == "folder":
        candidates.append(Path(params.base.source.removeprefix("file://")))
    for folder in candidates:
        if (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text())
    return None


def check(params_path: str | Path = DEFAULT_PARAMS, model_dir: str | Path | None = BASE_MODEL_DIR) -> Params:
    """Validate params.yaml; with the base model's config at hand, also check shapes against it."""
    params = load_params(params_path)
    config = _model_config_for_checks(params, model_dir)
    if config is not None:
        problems = check_against_model(params, config)
        if problems:
            raise ConfigError(problems)
    return params


def fetch(params_path: str | Path = DEFAULT_PARAMS, out_dir: str | Path = BASE_MODEL_DIR,
          record_path: str | Path = "build/base/fetch.json") -> dict[str, Any]:
    from ._fetch import fetch_model

    params = load_params(params_path)
    return fetch_model(params.base, out_dir, record_path)


def calibrate(params_path: str | Path = DEFAULT_PARAMS, model_dir: str | Path = BASE_MODEL_DIR,
              out_dir: str | Path = "build/calibration") -> dict[str, Any]:
    from ._calibrate import calibrate as build

    params = check(params_path, model_dir)
    out = Path(out_dir)
    return build(params.calibration, model_dir, out / "calibration.jsonl", out / "heldout.jsonl", out / "stats.json")


def quantize(name: str, params_path: str | Path = DEFAULT_PARAMS, base_dir: str | Path = BASE_MODEL_DIR,
             calib_path: str | Path = "build/calibration/calibration.jsonl",
             out_dir: str | Path | None = None) -> dict[str, Any]:
    """Quantize one variant into build/variants/<name>/{model, quantize.json}."""
    from .quantize._run import quantize_variant

    params = check(params_path, base_dir)
    out = Path(out_dir) if out_dir else Path("build/variants") / name
    return quantize_variant(params, name, base_dir, calib_path, out / "model", out / "quantize.json")


def evaluate(name: str, params_path: str | Path = DEFAULT_PARAMS, heldout: str | Path = "build/calibration/heldout.jsonl",
             eval_root: str | Path = "build/eval") -> dict[str, Any]:
    """Evaluate the baseline (name 'base') or one variant into build/eval/<name>/."""
    from .evaluate._run import evaluate_model

    params = load_params(params_path)
    root = Path(eval_root)
    if name != "base" and name not in params.variants:
        raise ConfigError([f"variants.{name}: no such variant in params.yaml (variants: {', '.join(params.variants)})"])
    model_dir = Path(BASE_MODEL_DIR) if name == "base" else Path("build/variants") / name / "model"
    out = root / name
    return evaluate_model(params.eval, name, model_dir, Path(heldout), out / "results", out / "metrics.json",
                          out / "plots", base_metrics=root / "base" / "metrics.json",
                          reference=root / "base" / "results" / "reference.json")


def card(name: str, params_path: str | Path = DEFAULT_PARAMS, out_path: str | Path | None = None,
         root: str | Path = ".") -> dict[str, Any]:
    """Render and validate build/cards/<name>/README.md from the variant's records."""
    from ._card import write_card

    params = _variant_params(params_path, name)
    return write_card(params, name, Path(out_path or f"build/cards/{name}/README.md"), Path(root))


def publish(name: str, params_path: str | Path = DEFAULT_PARAMS, out_path: str | Path | None = None,
            root: str | Path = ".", dry_run: bool = False) -> dict[str, Any]:
    """Publish one variant's release (model, card, eval results) to the Hub at HF_ENDPOINT and tag it."""
    from ._publish import publish_variant

    params = _variant_params(params_path, name)
    return publish_variant(params, name, Path(out_path or f"build/publish/{name}.json"), Path(root), dry_run=dry_run)


def release(version: str, params_path: str | Path = DEFAULT_PARAMS, root: str | Path = ".",
            variants: list[str] | None = None, commit: bool = True) -> list[dict[str, Any]]:
    """GTO registry tags `<artifact>@VERSION` for the variants' dvc.yaml artifacts (gate passed only)."""
    from ._release import release as run

    params = load_params(params_path)
    return run(params, version, Path(root), variants=variants, commit=commit)


def _variant_params(params_path: str | Path, name: str) -> Params:
    params = load_params(params_path)
    if name not in params.variants:
        raise ConfigError([f"variants.{name}: no such variant in params.yaml (variants: {', '.join(params.variants)})"])
    return params
