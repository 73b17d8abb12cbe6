"""DVC stage `quantize@<variant>`: variants.<variant> + base model + build/inputs/<variant>/ (its calibration
samples, and for method auto the sensitivity record) -> build/variants/<variant>/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._stage import run_stage
from ._common import BASE_MODEL_DIR, DEFAULT_PARAMS, INPUTS_DIR, VARIANTS_DIR, checked_params, one_argument


def run(name: str, params_path: str | Path = DEFAULT_PARAMS, base_dir: str | Path = BASE_MODEL_DIR,
        inputs_dir: str | Path | None = None, out_dir: str | Path | None = None) -> dict[str, Any]:
    from ..quantize._run import quantize_variant

    params = checked_params(params_path, base_dir)
    out = Path(out_dir) if out_dir else VARIANTS_DIR / name
    inputs = Path(inputs_dir) if inputs_dir else INPUTS_DIR / name
    calib_path, sensitivity_path = inputs / "calibration.jsonl", inputs / "sensitivity.json"
    return quantize_variant(params, name, base_dir, calib_path, out / "model", out / "quantize.json",
                            sensitivity_path=sensitivity_path)


def main(argv: list[str] | None = None) -> None:
    name = one_argument(argv, "python -m quantbuild.stages.quantize VARIANT")
    run_stage(f"quantize@{name}", lambda: run(name))


if __name__ == "__main__":
    main()
