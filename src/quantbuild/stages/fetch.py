"""DVC stage `fetch`: base.* -> build/base/model (safetensors) and build/base/fetch.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._stage import run_stage
from ..config import load_params
from ._common import BASE_MODEL_DIR, DEFAULT_PARAMS, FETCH_RECORD


def run(params_path: str | Path = DEFAULT_PARAMS, out_dir: str | Path = BASE_MODEL_DIR,
        record_path: str | Path = FETCH_RECORD) -> dict[str, Any]:
    from .._fetch import fetch_model

    return fetch_model(load_params(params_path).base, out_dir, record_path)


def main() -> None:
    run_stage("fetch", run)


if __name__ == "__main__":
    main()
