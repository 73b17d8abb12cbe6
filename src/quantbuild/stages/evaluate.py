"""DVC stages `evaluate_base` and `evaluate@<variant>`: eval.* -> build/eval/<model>/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._stage import run_stage
from ..config import load_params
from ..errors import ConfigError
from ._common import BASE_MODEL_DIR, CALIBRATION_DIR, DEFAULT_PARAMS, EVAL_DIR, VARIANTS_DIR, one_argument


def run(name: str, params_path: str | Path = DEFAULT_PARAMS, heldout: str | Path = CALIBRATION_DIR / "heldout.jsonl",
        eval_root: str | Path = EVAL_DIR) -> dict[str, Any]:
    """Evaluate the baseline (name 'base') or one variant into build/eval/<name>/."""
    from ..evaluate._run import evaluate_model

    params = load_params(params_path)
    root = Path(eval_root)
    if name != "base" and name not in params.variants:
        raise ConfigError([f"variants.{name}: no such variant in params.yaml (variants: {', '.join(params.variants)})"])
    model_dir = BASE_MODEL_DIR if name == "base" else VARIANTS_DIR / name / "model"
    out = root / name
    return evaluate_model(params.eval, name, model_dir, Path(heldout), out / "results", out / "metrics.json",
                          out / "plots", base_metrics=root / "base" / "metrics.json",
                          reference=root / "base" / "results" / "reference.json", base_dir=BASE_MODEL_DIR,
                          trust_remote_code=params.base.trust_remote_code)


def main(argv: list[str] | None = None) -> None:
    name = one_argument(argv, "python -m quantbuild.stages.evaluate base|VARIANT")
    run_stage(f"evaluate@{name}", lambda: run(name))


if __name__ == "__main__":  # vLLM starts its engine with spawn: the guard is required
    main()
