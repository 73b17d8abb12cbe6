"""DVC stage `card@<variant>`: build/cards/<variant>/README.md from the variant's records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._stage import run_stage
from ._common import CARDS_DIR, DEFAULT_PARAMS, one_argument, variant_params


def run(name: str, params_path: str | Path = DEFAULT_PARAMS, out_path: str | Path | None = None,
        root: str | Path = ".") -> dict[str, Any]:
    from .._card import write_card

    params = variant_params(params_path, name)
    return write_card(params, name, Path(out_path or CARDS_DIR / name / "README.md"), Path(root))


def main(argv: list[str] | None = None) -> None:
    name = one_argument(argv, "python -m quantbuild.stages.card VARIANT")
    run_stage(f"card@{name}", lambda: run(name))


if __name__ == "__main__":
    main()
