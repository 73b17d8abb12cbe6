"""DVC stage `inputs`: variants + calibration set + sensitivity record -> build/inputs/<variant>/, what each
variant's quantize stage reads (so a data-free variant depends on neither)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._stage import run_stage
from ._common import CALIBRATION_DIR, DEFAULT_PARAMS, INPUTS_DIR, SENSITIVITY_DIR, checked_params


def run(params_path: str | Path = DEFAULT_PARAMS, calib_path: str | Path = CALIBRATION_DIR / "calibration.jsonl",
        sensitivity_path: str | Path = SENSITIVITY_DIR / "sensitivity.json",
        out_dir: str | Path = INPUTS_DIR) -> dict[str, Any]:
    from .._inputs import write_variant_inputs

    params = checked_params(params_path, None)
    return write_variant_inputs(params, Path(calib_path), Path(sensitivity_path), Path(out_dir))


def main() -> None:
    run_stage("inputs", run)


if __name__ == "__main__":
    main()
