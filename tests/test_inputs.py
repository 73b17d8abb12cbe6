"""The inputs stage gives each variant exactly what its quantize stage reads: a data-free variant gets
neither the calibration set nor the sensitivity record, so changing them never re-runs it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from quantbuild._inputs import write_variant_inputs
from quantbuild.config import parse_params

from .conftest import REPO_ROOT

DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())


def demo_params():
    return parse_params(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))


def write_calibration(path: Path, n: int, offset: int) -> Path:
    path.write_text("".join(json.dumps({"input_ids": [offset + i] * 4}) + "\n" for i in range(n)))
    return path


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_each_variant_gets_what_it_reads(tmp_path):
    params = demo_params()
    calib = write_calibration(tmp_path / "calibration.jsonl", 128, 0)
    sens = tmp_path / "sensitivity.json"
    sens.write_text('{"scores": 1}')
    write_variant_inputs(params, calib, sens, tmp_path / "inputs")
    for name, variant in params.variants.items():
        folder = tmp_path / "inputs" / name
        record = json.loads((folder / "inputs.json").read_text())
        if variant.method == "fp8":
            assert sorted(p.name for p in folder.iterdir()) == ["inputs.json"]
            assert record["calibration"] == "none (data-free method)" and record["sensitivity"] == "not used"
            continue
        rows = (folder / "calibration.jsonl").read_text().splitlines()
        assert rows == calib.read_text().splitlines()[: variant.n_samples]  # what load_samples would take
        assert record["calibration"] == {"samples": variant.n_samples, "of": 128}
        assert (folder / "sensitivity.json").is_file() == (variant.method == "auto")


def test_a_new_calibration_set_leaves_data_free_inputs_byte_identical(tmp_path):
    params = demo_params()
    sens = tmp_path / "sensitivity.json"
    sens.write_text('{"scores": 1}')
    write_variant_inputs(params, write_calibration(tmp_path / "a.jsonl", 128, 0), sens, tmp_path / "a")
    sens.write_text('{"scores": 2}')  # the sensitivity stage re-ran too
    write_variant_inputs(params, write_calibration(tmp_path / "b.jsonl", 128, 1000), sens, tmp_path / "b")
    for name, variant in params.variants.items():
        same = folder_bytes(tmp_path / "a" / name) == folder_bytes(tmp_path / "b" / name)
        assert same == (variant.method == "fp8"), name


def test_quantize_stages_depend_on_their_own_inputs_only():
    quantize = DVC["stages"]["quantize"]["do"]
    deps = set(quantize["deps"])
    assert "build/inputs/${key}" in deps
    assert not {"build/calibration/calibration.jsonl", "build/sensitivity/sensitivity.json"} & deps
    inputs = DVC["stages"]["inputs"]
    assert {"build/calibration/calibration.jsonl", "build/sensitivity/sensitivity.json"} <= set(inputs["deps"])
    assert inputs["params"] == [{".quantbuild/code.yaml": ["inputs"]}, "variants"] and inputs["outs"] == ["build/inputs"]
