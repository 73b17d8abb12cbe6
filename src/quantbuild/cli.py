"""The `quantbuild` command: a thin click layer over quantbuild.api (no logic lives here)."""

from __future__ import annotations

import sys

import click

from . import __version__
from ._stage import report
from .errors import QuantbuildError


class _Group(click.Group):
    """Turns QuantbuildError into `error: ...` lines and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except QuantbuildError as exc:
            sys.exit(report(exc))


params_option = click.option("--params", "params_path", default="params.yaml", show_default=True,
                             type=click.Path(dir_okay=False), help="The params file.")


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="quantbuild")
def main() -> None:
    """Quantize a Hugging Face causal LM into evaluated, published releases (a DVC pipeline)."""


@main.command()
@params_option
@click.option("--model-dir", default="build/base/model", show_default=True,
              help="A fetched base model whose config.json enables the shape checks.")
def check(params_path: str, model_dir: str) -> None:
    """Validate params.yaml without running anything heavy."""
    from . import api

    params = api.check(params_path, model_dir)
    click.echo(f"{params_path}: ok ({len(params.variants)} variant(s): {', '.join(params.variants) or 'none'})")


@main.command()
@params_option
@click.option("--out", "out_dir", default="build/base/model", show_default=True)
@click.option("--record", default="build/base/fetch.json", show_default=True)
def fetch(params_path: str, out_dir: str, record: str) -> None:
    """Fetch the base model (the `fetch` stage)."""
    from . import api

    api.fetch(params_path, out_dir, record)


@main.command()
@params_option
@click.option("--model-dir", default="build/base/model", show_default=True)
@click.option("--out", "out_dir", default="build/calibration", show_default=True)
def calibrate(params_path: str, model_dir: str, out_dir: str) -> None:
    """Build calibration and held-out sets (the `calibrate` stage)."""
    from . import api

    api.calibrate(params_path, model_dir, out_dir)


@main.group()
def data() -> None:
    """Built-in data that needs no Hub."""


@data.command("fetch-text")
def fetch_text() -> None:
    """Download the built-in English texts (gensim's test data, from PyPI) once."""
    from ._textdata import fetch_gensim_texts

    click.echo(f"built-in texts in {fetch_gensim_texts()}")


if __name__ == "__main__":  # pragma: no cover
    main()
