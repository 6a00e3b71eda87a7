"""The ``robench`` command line (typer). User mistakes print one line and exit with code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

import robench
from robench.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Adversarial-robustness benchmarking: attacks x defenses, tidy leaderboards.")


def _fail(err: UserError) -> None:
    typer.echo(f"robench: error: {err}", err=True)
    raise typer.Exit(code=2)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"robench {robench.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                                is_eager=True, help="Print the version.")] = False
          ) -> None:
    """robench: adversarial-robustness benchmarking harness."""


@app.command()
def run(
    suite: Annotated[Path, typer.Argument(help="Suite YAML file.")],
    data_dir: Annotated[Optional[str], typer.Option(
        help="Dataset root (holds MNIST/raw/...); default: suite data.root, "
             "$ROBENCH_DATA_DIR, else a user cache folder (downloads there).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Results folder (default results/<name>).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")] = None,
    eval_limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate on the first N test images.")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=0, help="Override train.epochs.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Override the suite seed.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the model cache.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Recompute everything (ignore cache and existing rows).")] = False,
) -> None:
    """Run a suite: train, defend, attack, and write results.csv + leaderboard.

    Example: robench run suites/fgsm_lenet.yaml --data-dir ../shared/data
    """
    from robench.leaderboard import to_markdown
    from robench.runner import RunOptions, run_suite

    if device is not None and device not in ("auto", "cpu", "cuda"):
        _fail(UserError(f"unknown device {device!r}; use auto, cpu or cuda", where="--device"))
    opts = RunOptions(data_dir=data_dir, out=out, device=device, eval_limit=eval_limit,
                      epochs=epochs, seed=seed, quiet=quiet, use_cache=not no_cache, force=force)
    try:
        out_dir, board = run_suite(suite, opts)
    except UserError as err:
        _fail(err)
    if not quiet:
        typer.echo(to_markdown(board))
        typer.echo(f"results: {out_dir}")


@app.command("list")
def list_plugins() -> None:
    """List every registered plugin (built-in and installed through entry points).

    Example: robench list
    """
    from robench.plugins import all_registries
    from robench.registry import describe

    for kind, registry in all_registries():
        typer.echo(f"{kind}:")
        for name, obj in registry.items():
            typer.echo(f"  {name:<22} {describe(obj)}")


@app.command()
def leaderboard(
    results_csv: Annotated[Path, typer.Argument(help="A results.csv written by robench run.")],
    out: Annotated[Optional[Path], typer.Option(help="Folder for leaderboard.md/.csv "
                                                "(default: next to the CSV).")] = None,
) -> None:
    """Print the leaderboard of a results.csv and write leaderboard.md + leaderboard.csv.

    Example: robench leaderboard results/fgsm_lenet/results.csv
    """
    from robench.leaderboard import to_markdown, write_leaderboard
    from robench.results import read_results

    try:
        frame = read_results(results_csv)
        board = write_leaderboard(frame, out or results_csv.parent,
                                  title=str(frame["suite"].iloc[0]))
    except UserError as err:
        _fail(err)
    typer.echo(to_markdown(board))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("robench: interrupted; run the same command again to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
