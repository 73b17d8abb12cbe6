"""DVC stage `publish@<variant>`: the release on the Hub at HF_ENDPOINT; a receipt when skipped or refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._stage import run_stage
from ._common import DEFAULT_PARAMS, PUBLISH_DIR, one_argument, variant_params


def run(name: str, params_path: str | Path = DEFAULT_PARAMS, out_path: str | Path | None = None,
        root: str | Path = ".", dry_run: bool = False) -> dict[str, Any]:
    from .._publish import publish_variant

    params = variant_params(params_path, name)
    return publish_variant(params, name, Path(out_path or PUBLISH_DIR / f"{name}.json"), Path(root), dry_run=dry_run)


def main(argv: list[str] | None = None) -> None:
    name = one_argument(argv, "python -m quantbuild.stages.publish VARIANT")
    run_stage(f"publish@{name}", lambda: run(name))


if __name__ == "__main__":
    main()
