"""The `inputs` stage: each variant's own view of the shared inputs, so that a variant's quantize stage
depends on exactly what it reads. A calibrated variant gets the first `n_samples` rows of the calibration
set (what it would load anyway); method auto also gets the sensitivity record; a data-free variant (FP8
dynamic) gets neither, so a new calibration set or sensitivity run never re-runs it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ._io import write_json
from ._methods import needs_calibration, needs_sensitivity, resolve_settings
from ._progress import log
from .config import Params
from .errors import EnvironmentSetupError

STAGE = "inputs"


def write_variant_inputs(params: Params, calib_path: Path, sensitivity_path: Path, out_dir: Path) -> dict[str, Any]:
    """build/inputs/<variant>/{calibration.jsonl, sensitivity.json, inputs.json} for every variant."""
    rows: list[str] | None = None
    summary: dict[str, Any] = {}
    staging = out_dir.with_name(f".{out_dir.name}.part")  # never a half-written folder
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, variant in params.variants.items():
        folder = staging / name
        folder.mkdir()
        settings = resolve_settings(variant)
        # inputs.json names what the variant reads, never a digest of what it does not (that would tie
        # a data-free variant to the calibration set again).
        record: dict[str, Any] = {"variant": name}
        if needs_calibration(variant.method, settings):
            if rows is None:
                if not calib_path.is_file():
                    raise EnvironmentSetupError(f"inputs: {calib_path} is missing (run dvc repro calibrate first)")
                rows = [line for line in calib_path.read_text().splitlines() if line.strip()]
            chosen = rows[: variant.n_samples] if variant.n_samples else rows
            (folder / "calibration.jsonl").write_text("".join(f"{line}\n" for line in chosen))
            record["calibration"] = {"samples": len(chosen), "of": len(rows)}
        else:
            record["calibration"] = "none (data-free method)"
        if needs_sensitivity(variant.method):
            if not sensitivity_path.is_file():
                raise EnvironmentSetupError(f"inputs: {sensitivity_path} is missing (run dvc repro sensitivity first)")
            shutil.copyfile(sensitivity_path, folder / "sensitivity.json")
            record["sensitivity"] = "sensitivity.json"
        else:
            record["sensitivity"] = "not used"
        write_json(folder / "inputs.json", record)
        summary[name] = record
        what = (f"{record['calibration']['samples']} calibration samples" if isinstance(record["calibration"], dict)
                else "no calibration (data-free)")
        log(STAGE, f"{name}: {what}{', sensitivity' if needs_sensitivity(variant.method) else ''}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.replace(out_dir)
    return summary

