"""DVC stage `gate@<variant>`: the two metrics files + eval.gate -> build/gate/<variant>/ (no model loads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._stage import run_stage
from ._common import DEFAULT_PARAMS, EVAL_DIR, GATE_DIR, VARIANTS_DIR, one_argument, variant_params


def run(name: str, params_path: str | Path = DEFAULT_PARAMS, eval_root: str | Path = EVAL_DIR,
        out_root: str | Path = GATE_DIR, variants_root: str | Path = VARIANTS_DIR) -> dict[str, Any]:
    from .._gate import run_gate

    params = variant_params(params_path, name)
    return run_gate(params, name, Path(eval_root), Path(out_root) / name, Path(variants_root) / name / "quantize.json")


def main(argv: list[str] | None = None) -> None:
    name = one_argument(argv, "python -m quantbuild.stages.gate VARIANT")
    run_stage(f"gate@{name}", lambda: run(name))


if __name__ == "__main__":
    main()
