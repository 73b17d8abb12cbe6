"""DVC stage `quantize@<variant>`: variants.<variant> + base model + calibration -> build/variants/<variant>/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._stage import run_stage
from ._common import (BASE_MODEL_DIR, CALIBRATION_DIR, DEFAULT_PARAMS, SENSITIVITY_DIR, VARIANTS_DIR, checked_params,
                      one_argument)


def run(name: str, params_path: str | Path = DEFAULT_PARAMS, base_dir: str | Path = BASE_MODEL_DIR,
        calib_path: str | Path = CALIBRATION_DIR / "calibration.jsonl", out_dir: str | Path | None = None,
        sensitivity_path: str | Path = SENSITIVITY_DIR / "sensitivity.json") -> dict[str, Any]:
    from ..quantize._run import quantize_variant

    params = checked_params(params_path, base_dir)
    out = Path(out_dir) if out_dir else VARIANTS_DIR / name
    return quantize_variant(params, name, base_dir, calib_path, out / "model", out / "quantize.json",
                            sensitivity_path=sensitivity_path)


def main(argv: list[str] | None = None) -> None:
    name = one_argument(argv, "python -m quantbuild.stages.quantize VARIANT")
    run_stage(f"quantize@{name}", lambda: run(name))


if __name__ == "__main__":
    main()
