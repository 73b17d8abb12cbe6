"""DVC stage `sensitivity`: sensitivity.* + base model + calibration -> build/sensitivity/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._stage import run_stage
from ..errors import EnvironmentSetupError
from ._common import BASE_MODEL_DIR, CALIBRATION_DIR, DEFAULT_PARAMS, SENSITIVITY_DIR, checked_params


def run(params_path: str | Path = DEFAULT_PARAMS, base_dir: str | Path = BASE_MODEL_DIR,
        calib_path: str | Path = CALIBRATION_DIR / "calibration.jsonl",
        out_dir: str | Path = SENSITIVITY_DIR) -> dict[str, Any]:
    """Score every decoder module at every candidate format."""
    from .._sensitivity import run_sensitivity

    params = checked_params(params_path, base_dir)
    for path, hint in ((Path(base_dir) / "config.json", "dvc repro fetch"), (Path(calib_path), "dvc repro calibrate")):
        if not path.is_file():
            raise EnvironmentSetupError(f"sensitivity: {path} is missing (run {hint} first)")
    out = Path(out_dir)
    return run_sensitivity(params.sensitivity, Path(base_dir), Path(calib_path), out / "sensitivity.json",
                           out / "plots", trust_remote_code=params.base.trust_remote_code)


def main() -> None:
    run_stage("sensitivity", run)


if __name__ == "__main__":
    main()
