"""DVC stage `select`: every gate record -> build/selection/ (Pareto frontier, recommended variant)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._stage import run_stage
from ..config import load_params
from ._common import DEFAULT_PARAMS, GATE_DIR, SELECTION_DIR


def run(params_path: str | Path = DEFAULT_PARAMS, gate_root: str | Path = GATE_DIR,
        out_dir: str | Path = SELECTION_DIR) -> dict[str, Any]:
    from .._select import select

    params = load_params(params_path)
    return select(list(params.variants), Path(gate_root), Path(out_dir))


def main() -> None:
    run_stage("select", run)


if __name__ == "__main__":
    main()
