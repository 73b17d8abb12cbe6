"""DVC stage `calibrate`: calibration.* + the base tokenizer -> build/calibration/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._stage import run_stage
from ._common import BASE_MODEL_DIR, CALIBRATION_DIR, DEFAULT_PARAMS, checked_params


def run(params_path: str | Path = DEFAULT_PARAMS, model_dir: str | Path = BASE_MODEL_DIR,
        out_dir: str | Path = CALIBRATION_DIR) -> dict[str, Any]:
    from .._calibrate import calibrate

    params = checked_params(params_path, model_dir)
    out = Path(out_dir)
    return calibrate(params.calibration, model_dir, out / "calibration.jsonl", out / "heldout.jsonl", out / "stats.json",
                     trust_remote_code=params.base.trust_remote_code)


def main() -> None:
    run_stage("calibrate", run)


if __name__ == "__main__":
    main()
