"""The build layout, in one place: every stage's inputs and outputs, the release tools and the reports name
their paths from these (relative to the project's root; dvc.yaml's template spells the same paths)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_PARAMS = "params.yaml"
BUILD = Path("build")
BASE_MODEL_DIR = BUILD / "base" / "model"
FETCH_RECORD = BUILD / "base" / "fetch.json"
CALIBRATION_DIR = BUILD / "calibration"
HELDOUT_FILE = CALIBRATION_DIR / "heldout.jsonl"
SENSITIVITY_DIR = BUILD / "sensitivity"
INPUTS_DIR = BUILD / "inputs"
VARIANTS_DIR = BUILD / "variants"
EVAL_DIR = BUILD / "eval"
GATE_DIR = BUILD / "gate"
SELECTION_DIR = BUILD / "selection"
CARDS_DIR = BUILD / "cards"
PUBLISH_DIR = BUILD / "publish"


def variant_model(name: str) -> Path:
    return VARIANTS_DIR / name / "model"


def gate_record(name: str) -> Path:
    return GATE_DIR / name / "gate.json"


def eval_metrics(name: str) -> Path:
    return EVAL_DIR / name / "metrics.json"


def publish_receipt(name: str) -> Path:
    return PUBLISH_DIR / f"{name}.json"
